"""--keep-checkpoints without a cluster: which finished trials keep their weights (the K best by the best-epoch
rule, the Pareto front's with several objectives), what a PBT sweep defers, and the files that go."""

from pathlib import Path

from candle_ray.retention import Retention, drop_files
from candle_ray.storage import Storage

LOSS = (("val_loss", "min"),)


def result(loss, **more):
    return {"best_val_loss": loss, **{f"best_{k}": v for k, v in more.items()}}


def test_the_k_best_finished_trials_keep_their_weights():
    keep = Retention(2, LOSS)
    assert keep.finished("a", result(0.5)) == []
    assert keep.finished("b", result(0.7)) == []
    assert keep.finished("c", result(0.9)) == ["c"]  # worse than the two it can never overtake
    assert keep.finished("d", result(0.4)) == ["b"]  # pushed out
    assert keep.finished("e", None, failed=True) == ["e"]  # a failed trial is never picked
    assert keep.finished("d", result(0.1)) == []  # an event seen twice (a resume) changes nothing
    assert keep.at_end() == [] and keep.dropped == {"b", "c", "e"}



def test_each_finished_trial_drops_exactly_what_falls_past_the_k_best():
    """Ties, failures and repeats in a random order: after every trial, the dropped trials are exactly the
    finished ones outside the K best (the single-objective path looks at one trial, not at all of them)."""
    import random

    rng = random.Random(1)
    keep, values = Retention(5, LOSS), {}
    for i in range(2000):
        trial = f"t{rng.randrange(1500)}"
        failed = rng.random() < 0.05
        value = round(rng.random(), 2)  # ties
        keep.finished(trial, None if failed else result(value), failed=failed)
        if trial not in values:
            values[trial] = None if failed else value
        done = sorted((v, t) for t, v in values.items() if v is not None)
        assert keep.dropped == {t for _, t in done[5:]} | {t for t, v in values.items() if v is None}, i


def test_max_mode_and_keeping_everything():
    keep = Retention(1, (("val_auroc", "max"),))
    assert keep.finished("a", {"best_val_auroc": 0.7}) == [] and keep.finished("b", {"best_val_auroc": 0.9}) == ["a"]
    # an equal value: the lower val_loss stays, as the sweep ranks them (summary.TIE_BREAK)
    assert keep.finished("c", {"best_val_auroc": 0.9, "best_val_loss": 0.2}) == ["b"]
    assert keep.finished("d", {"best_val_auroc": 0.9, "best_val_loss": 0.3}) == ["d"]
    everything = Retention(0, LOSS)
    assert all(everything.finished(t, result(i)) == [] for i, t in enumerate("abcdef")) and everything.at_end() == []


def test_pareto_front_members_are_kept_until_they_leave_the_front():
    keep = Retention(1, (("val_loss", "min"), ("n_params", "min")))
    assert keep.finished("big", result(0.3, n_params=1000)) == []
    assert keep.finished("small", result(0.5, n_params=10)) == []  # not the best, but on the front
    assert keep.finished("worse", result(0.6, n_params=20)) == ["worse"]  # dominated by small
    assert keep.finished("smaller", result(0.45, n_params=5)) == ["small"]  # small leaves the front


def test_a_pbt_sweep_drops_only_at_its_end():
    keep = Retention(1, LOSS, defer=True)
    assert keep.finished("a", result(0.5)) == [] and keep.finished("b", result(0.4)) == []
    assert keep.finished("c", None, failed=True) == []
    assert sorted(keep.at_end()) == ["a"]


def test_dropping_a_trial_deletes_its_weights_and_keeps_its_logs(tmp_path):
    sweep = tmp_path / "s"
    for folder in ("trials/t1/checkpoints", "trials/t1/fold-0/checkpoints", "t1/checkpoint_000003",
                   "t2/checkpoint_000001", "trials/t2/checkpoints"):
        (sweep / folder).mkdir(parents=True)
        (sweep / folder / "best.pt").write_bytes(b"w" * 100)
    (sweep / "trials/t1/training.log").write_text("epoch\n1\n")
    (sweep / "t1/result.json").write_text("{}")
    drop_files(Storage.parse(str(tmp_path)), "s", sweep, "t1")
    left = sorted(str(p.relative_to(sweep)) for p in sweep.rglob("*") if p.is_file())
    assert left == ["t1/result.json", "t2/checkpoint_000001/best.pt", "trials/t1/training.log",
                    "trials/t2/checkpoints/best.pt"]
    drop_files(Storage.parse(str(tmp_path)), "s", Path(sweep), "t1")  # twice: nothing left to do, no error
