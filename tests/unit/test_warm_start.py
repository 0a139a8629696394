"""`tune --warm-start` (earlier sweeps' finished trials as a searcher's evaluated points) and growing a
finished sweep (`--resume --num-samples M`: Tune's saved trial budget raised), on the driver, no cluster."""

import csv
import json
import math

import pytest
from ray import tune

from candle_ray import warm_start
from candle_ray.errors import UsageError
from candle_ray.search import _raise_budget, make_searcher
from candle_ray.storage import Storage
from tests.unit.test_samplers import SPACE, loss, search

FULL = {**SPACE, "dense": tune.choice([[64], [512, 128]]), "epochs": 3}  # a list-valued choice, a constant


def write_sweep(root, name, rows, *, metric="val_loss", mode="min", keys=tuple(FULL), smoke=True, exp="e.py"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({
        "experiment_file": exp, "space_keys": list(keys), "smoke": smoke,
        "sweep": {"metric": metric, "mode": mode, "num_samples": len(rows)}}))
    columns = sorted({k for row in rows for k in row})
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def row(status="completed", value=0.5, lr=1e-3, dropout=0.3, batch=32, dense="[512, 128]"):
    return {"trial_id": "t", "status": status, "val_loss": value, "config.learning_rate": lr,
            "config.dropout": dropout, "config.batch_size": batch, "config.dense": dense, "config.epochs": 3}


def load(root, names, space=FULL, **kw):
    settings = {"metric": "val_loss", "mode": "min", "smoke": True, **kw}
    notes = []
    warm = warm_start.load(Storage.parse(str(root)), names, "e.py", space, settings["metric"], settings["mode"],
                           settings["smoke"], notes.append)
    return warm, notes


def test_finished_trials_become_points_with_their_space_values(tmp_path):
    write_sweep(tmp_path, "a", [row(value=0.4), row("stopped early", 0.9, dense="[64]"), row("failed", ""),
                                row("running", 0.2)])
    write_sweep(tmp_path, "b", [row(value=0.3, lr=0.5), row(value=0.35, batch=48), row(value=0.6, lr=0.01)])
    warm, notes = load(tmp_path, ["a", "b"])
    assert warm.values == [0.4, 0.9, 0.6] and warm.outside == 2  # lr 0.5 and batch 48 lie outside the space
    assert warm.points[0] == {"learning_rate": 1e-3, "dropout": 0.3, "batch_size": 32, "dense": [512, 128]}
    assert warm.points[1]["dense"] == [64] and "epochs" not in warm.points[0]  # a constant is no coordinate
    assert "3 finished trials of a, b" in warm.line("optuna") and "2 outside this space" in warm.line("optuna")
    assert notes == []


@pytest.mark.parametrize("change, says", [
    ({"keys": ("learning_rate", "dropout")}, "searched dropout, learning_rate, this sweep searches"),
    ({"metric": "val_accuracy", "mode": "max"}, "--metric val_accuracy --mode max"),
    ({"smoke": False}, "trained on the real data"),
])
def test_a_sweep_that_says_nothing_about_this_one_is_refused(tmp_path, change, says):
    write_sweep(tmp_path, "a", [row()], **change)
    with pytest.raises(UsageError, match=says):
        load(tmp_path, ["a"])


def test_missing_or_unfinished_sweeps_are_refused_in_one_line(tmp_path):
    write_sweep(tmp_path, "a", [row()])
    with pytest.raises(UsageError, match="'nope': no such sweep; sweeps in .*: a"):
        load(tmp_path, ["nope"])
    (tmp_path / "a" / "results.csv").unlink()
    with pytest.raises(UsageError, match="no results.csv yet"):
        load(tmp_path, ["a"])
    write_sweep(tmp_path, "b", [row(lr=0.5)])
    with pytest.raises(UsageError, match=r"no finished trial fits this search space \(1 lie outside it\)"):
        load(tmp_path, ["b"])


def test_another_experiment_file_is_noted(tmp_path):
    write_sweep(tmp_path, "a", [row()], exp="other.py")
    assert "searched other.py" in load(tmp_path, ["a"])[1][0]


@pytest.mark.parametrize("searcher", ["random", "grid", "cmaes", "ga"])
def test_searchers_that_cannot_use_points_refuse(searcher):
    with pytest.raises(UsageError, match=f"--search {searcher} .*; use --search optuna, gp, bohb"):
        warm_start.check_searcher(searcher, resume=False)
    with pytest.raises(UsageError, match="drop --warm-start"):
        warm_start.check_searcher("optuna", resume=True)


@pytest.mark.parametrize("name", warm_start.SEARCHERS)
def test_a_warm_started_searcher_starts_near_the_known_optimum(name):
    """20 evaluated points of the bowl in test_samplers: the first 5 proposals land lower than a cold
    searcher's first 5 (which are random draws)."""
    earlier = search("optuna", 1, 20)
    warm = warm_start.WarmStart(("a",), [c for c, _ in earlier], [v for _, v in earlier], 0)
    searcher = make_searcher(name, "val_loss", "min", 0, max_concurrent=1, warm=warm)
    searcher.set_search_properties("best_val_loss", "min", dict(SPACE))
    warm_values = []
    for i in range(5):
        config = searcher.suggest(f"t{i}")
        warm_values.append(loss(config))
        searcher.on_trial_complete(f"t{i}", {"best_val_loss": warm_values[-1]})
    cold = search(name, 0, 5)
    cold_values = [v for _, v in cold]
    assert sum(warm_values) < sum(cold_values), (warm_values, cold_values)
    assert loss(cold[0][0]) != warm_values[0]  # the same seed's first proposal differs: the points reached it
    assert min(warm_values) < 0.5, warm_values


def test_a_searchers_budget_grows_and_never_shrinks():
    state = {"counter": 4, "total_samples": 4, "finished": False, "experiment": None}
    assert _raise_budget(state, 7) == 3 and state["total_samples"] == 7
    assert _raise_budget(state, 5) == 0 and state["total_samples"] == 7


def test_a_searcher_that_ran_out_of_time_proposes_its_remaining_trials_on_resume():
    """A sweep stopped by --time-budget leaves its searcher finished with trials left; a resume undoes that."""
    from ray.tune.search import BasicVariantGenerator

    state = {"counter": 3, "total_samples": 5, "finished": True, "experiment": None}
    assert _raise_budget(state, 5) == 0 and state["finished"] is False
    done = {"counter": 5, "total_samples": 5, "finished": True, "experiment": None}
    assert _raise_budget(done, 5) == 0 and done["finished"] is True
    generator = BasicVariantGenerator(random_state=0)
    generator.add_configurations({"e": {"run": _trainable, "num_samples": 5, "config": {"b": tune.uniform(0, 1)}}})
    first = [generator.next_trial() for _ in range(2)]
    generator.set_finished()
    state = generator.get_state()
    assert _raise_budget(state, 5) == 0
    generator.set_state(state)
    rest = [generator.next_trial() for _ in range(4)]
    assert rest[-1] is None and len({t.trial_id for t in first + rest[:3]}) == 5


def _trainable(config):
    pass


def test_a_variant_generators_budget_grows_by_whole_grids():
    """random and grid keep their budget as samples of the spec: a grid sample is every combination."""
    from ray.tune.search import BasicVariantGenerator

    generator = BasicVariantGenerator(random_state=0)
    generator.add_configurations({"e": {"run": _trainable, "num_samples": 2,
                                        "config": {"a": tune.grid_search([1, 2, 3]), "b": tune.uniform(0, 1)}}})
    first = [generator.next_trial() for _ in range(7)]
    assert first[-1] is None and generator.is_finished()
    state = generator.get_state()
    assert _raise_budget(state, 3) == 3
    generator.set_state(state)
    more = [generator.next_trial() for _ in range(4)]
    assert more[-1] is None and [t.config["a"] for t in more[:3]] == [1, 2, 3]
    assert {t.trial_id for t in more[:3]}.isdisjoint(t.trial_id for t in first[:6])
    assert all(not math.isclose(t.config["b"], u.config["b"]) for t in more[:3] for u in first[:6])  # fresh draws
