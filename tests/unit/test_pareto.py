"""Multi-objective sweeps without a cluster: the Pareto front and its knee, `--pick`, the searchers that
optimise several metrics at once, the refusals, and the front's picture."""

import math
import random

import pytest
from ray import tune

from candle_ray.cli import _objectives
from candle_ray.errors import UsageError
from candle_ray.report import pareto_plot, write_report
from candle_ray.search import make_searcher, validate
from candle_ray.summary import BestEpoch, dominates, knee, pareto_front, picked_row
from candle_ray.sweep import _mark_front, front_lines
from tests.unit.test_report import fake_trials, with_best

MIN2 = ("min", "min")


def brute_front(points, modes):
    return [p for i, p in enumerate(points)
            if not any(dominates(q, p, modes) or (q == p and j < i) for j, q in enumerate(points) if j != i)]


def test_dominance_respects_each_objectives_direction():
    assert dominates((1, 5), (2, 5), MIN2) and not dominates((1, 5), (1, 5), MIN2)
    assert not dominates((1, 6), (2, 5), MIN2)
    assert dominates((1, 0.9), (1, 0.8), ("min", "max"))


@pytest.mark.parametrize("modes", [MIN2, ("min", "max"), ("max", "min", "max")])
def test_the_front_is_every_point_nothing_beats(modes):
    rng = random.Random(len(modes))
    points = [tuple(rng.choice(range(12)) for _ in modes) for _ in range(300)]  # ties included
    front = pareto_front(points, lambda p: p, modes)
    assert front == brute_front(points, modes)
    assert all(not dominates(q, p, modes) for p in front for q in points)


def test_items_without_finite_values_are_left_off():
    items = [(1.0, 2.0), (float("nan"), 0.0), None, (2.0, 1.0)]
    assert pareto_front(items, lambda p: p, MIN2) == [(1.0, 2.0), (2.0, 1.0)]


def test_the_knee_is_the_balanced_member():
    front = [(0.30, 900_000), (0.31, 120_000), (0.40, 100_000), (0.90, 10_000)]
    assert knee(front, MIN2) == 1  # 3% worse loss for 7.5x fewer parameters
    assert knee([(0.5, 0.9), (0.4, 0.7)], ("min", "max")) == 0  # the ideal is at neither; ties: the first
    assert knee([(1.0, 1.0)], MIN2) == 0


def rows():
    values = [(0.30, 900_000), (0.35, 950_000), (0.31, 120_000), (0.90, 10_000), (0.40, 100_000)]
    made = [{"trial_id": f"t{i}", "status": "completed", "val_loss": v, "n_params": p} for i, (v, p) in enumerate(values)]
    made.append({"trial_id": "bad", "status": "failed", "val_loss": 0.1, "n_params": 1})
    return made


def test_a_sweeps_rows_are_marked_and_picked():
    table = sorted(rows(), key=lambda r: r["val_loss"])
    front = _mark_front(table, (("val_loss", "min"), ("n_params", "min")))
    assert [r["trial_id"] for r in front] == ["t0", "t2", "t4", "t3"]  # best first; the failed trial is not on it
    assert [r["trial_id"] for r in table if r["knee"]] == ["t2"]
    as_csv = [{k: str(v) for k, v in r.items()} for r in table]  # results.csv holds text
    assert picked_row(as_csv, "knee", "s")["trial_id"] == "t2"
    assert picked_row(as_csv, "1", "s")["trial_id"] == "t0" and picked_row(as_csv, "4", "s")["trial_id"] == "t3"
    with pytest.raises(UsageError, match="give knee or a front member's place, 1 to 4"):
        picked_row(as_csv, "5", "s")
    with pytest.raises(UsageError, match="has one metric: use --top K"):
        picked_row([{"trial_id": "t", "val_loss": "1"}], "knee", "s")
    lines = front_lines(front, (("val_loss", "min"), ("n_params", "min")), "s", len(table))
    assert lines[0].startswith("Pareto front over val_loss (min), n_params (min): 4 of 6 trials")
    assert lines[2] == "  2. trial t2: val_loss 0.31, n_params 1.2e+05 (knee)"
    picking = front_lines(front, (("val_loss", "min"),), "s", 6, "exp.py", " --storage /data/sweeps")[-1]
    assert picking.endswith("candle-ray predict s --pick knee --storage /data/sweeps ..., "
                            "candle-ray ensemble exp.py --from-sweep s --pick knee --storage /data/sweeps")
    assert _mark_front(table, (("val_loss", "min"),)) == []


def test_objectives_from_the_command_line():
    assert _objectives((), ()) == (None, None, ())
    assert _objectives(("val_auroc",), ("max",)) == ("val_auroc", "max", ())
    assert _objectives(("val_loss", "n_params"), ("min", "min")) == ("val_loss", "min", (("n_params", "min"),))
    # no --mode: each its natural direction, which the sweep resolves (sweep.default_mode)
    assert _objectives(("val_r2", "n_params"), ()) == ("val_r2", None, (("n_params", None),))
    with pytest.raises(UsageError, match="2 --metric take a --mode each, in the same order, or none"):
        _objectives(("val_loss", "n_params"), ("min",))
    with pytest.raises(UsageError, match="each objective once"):
        _objectives(("val_loss", "val_loss"), ("min", "min"))


SPACE = {"learning_rate": tune.loguniform(1e-4, 1e-1), "dense": tune.choice([[8], [64], [512, 128]])}


@pytest.mark.parametrize("scheduler, searcher, says", [("pbt", "random", "PBT clones"),
                                                       ("fifo", "cmaes", "cmaes optimises one metric")])
def test_searchers_and_schedulers_of_one_metric_refuse_several(scheduler, searcher, says):
    with pytest.raises(UsageError, match=says):
        validate(searcher, scheduler, {"learning_rate": tune.loguniform(1e-4, 1e-1)}, objectives=2)


def sizes(config):
    return sum(a * b for a, b in zip([100, *config["dense"]], [*config["dense"], 2]))


@pytest.mark.parametrize("name", ["optuna", "gp", "ga", "bohb"])
def test_each_learning_searcher_optimises_both_objectives(name):
    """Loss falls with model size and sits at its floor at lr 1e-2: the study is two-objective, and after 24
    trials the searcher has found points along the whole trade-off, not only the most accurate."""
    searcher = make_searcher(name, "val_loss", "min", 0, max_concurrent=1, also=[("n_params", "min")],
                             options={"population": 6, "crossover_prob": 0.5, "mutation_prob": None})
    searcher.set_search_properties(None, None, dict(SPACE))
    seen = []
    for i in range(24):
        config = searcher.suggest(f"t{i}")
        n = sizes(config)
        loss = 1 / math.log10(n) + (math.log10(config["learning_rate"]) + 2) ** 2
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": loss, "best_n_params": n})
        seen.append((loss, n))
    assert len(searcher.searcher._ot_study.directions) == 2
    front = pareto_front(seen, lambda p: p, MIN2)
    assert len({n for _, n in front}) >= 2, front


def test_n_params_and_epoch_time_go_with_the_best_epoch():
    follow = BestEpoch("val_loss", "min")
    results = list(follow([{"epoch": 1, "val_loss": 0.5, "n_params": 10, "epoch_time_s": 2.0, "lr": 0.1},
                           {"epoch": 2, "val_loss": 0.7, "n_params": 10, "epoch_time_s": 1.0, "lr": 0.1}]))
    assert results[-1]["best_epoch_time_s"] == 2.0 and results[-1]["best_n_params"] == 10
    assert "best_lr" not in results[-1]


def two_objective_trials():
    trials = fake_trials()
    for i, t in enumerate(trials):
        t["history"]["n_params"] = [(e, float(10 ** (3 + i % 4))) for e, _ in t["history"]["val_loss"]]
    return with_best(trials)


def test_the_report_draws_the_front(tmp_path):
    front = pareto_plot(two_objective_trials(), (("val_loss", "min"), ("n_params", "min")), tmp_path / "p.png")
    assert front and (tmp_path / "p.png").stat().st_size > 10_000
    assert all(t["status"] != "failed" for t in front)
    three = two_objective_trials()
    for t in three:
        t["history"]["epoch_time_s"] = [(e, 1.0 + len(t["trial_id"]) / e) for e, _ in t["history"]["val_loss"]]
    files = write_report(with_best(three), sweep="s", metric="val_loss", mode="min", space_keys=["learning_rate"], out=tmp_path,
                         also=[["n_params", "min"], ["epoch_time_s", "min"]])
    assert "pareto_front.png" in {f.name for f in files}


def test_the_report_draws_the_front_results_csv_marks(tmp_path):
    """Two trials of equal values: results.csv's front holds the one its ranking put first (sweep._mark_front);
    the report, which reads trials in trial-id order, drew the other."""
    def trial(trial_id, loss, size, front, knee):
        return {"trial_id": trial_id, "status": "completed", "history": {}, "front": front, "knee": knee,
                "best": {"val_loss": loss, "n_params": size}}

    trials = [trial("a", 0.3, 706, False, False), trial("b", 0.3, 706, True, False), trial("c", 0.2, 5000, True, True)]
    front = pareto_plot(trials, (("val_loss", "min"), ("n_params", "min")), tmp_path / "p.png")
    assert [t["trial_id"] for t in front] == ["c", "b"]
    unmarked = [{k: v for k, v in t.items() if k not in ("front", "knee")} for t in trials]
    assert [t["trial_id"] for t in pareto_plot(unmarked, (("val_loss", "min"), ("n_params", "min")),
                                               tmp_path / "q.png")] == ["c", "a"]  # computed: the first stands


def test_an_ensemble_from_a_front_member(tmp_path):
    from candle_ray.ensemble import members_from_sweep
    from tests.unit.test_warm_start import write_sweep

    table = sorted(rows(), key=lambda r: r["val_loss"])
    _mark_front(table, (("val_loss", "min"), ("n_params", "min")))
    for r in table:
        r["config.dense"] = "[8]" if r["n_params"] < 200_000 else "[512, 128]"
        r["config.learning_rate"] = r["val_loss"] / 100
    write_sweep(tmp_path, "mo", table, keys=("dense", "learning_rate"))
    members, _ = members_from_sweep(str(tmp_path), "mo", 5, 2, 10, "e.py", pick="knee")
    assert members == [{"dense": [8], "learning_rate": 0.0031, "rng_seed": 10},
                       {"dense": [8], "learning_rate": 0.0031, "rng_seed": 11}]
    members, _ = members_from_sweep(str(tmp_path), "mo", 5, 1, 0, "e.py", pick="1")
    assert members == [{"dense": [512, 128], "learning_rate": 0.003, "rng_seed": 0}]
