"""The one "best trial" rule: trials are ranked by their best epoch, everywhere (no Ray, no MLflow)."""

import csv
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest

from candle_ray import summary
from candle_ray.ensemble import top_configs
from candle_ray.job import Workers
from candle_ray.report import _best
from tests.unit.test_report import with_best
from candle_ray.sweep import summarize
from candle_ray.search import Sweep, grace_period_rule


def stream(values, metric="val_loss", mode="min", extra=None):
    results = [{"epoch": e, metric: v, "val_accuracy": 1 - v, **(extra or {})} for e, v in enumerate(values, 1)]
    return list(summary.BestEpoch(metric, mode)(results))


def test_best_epoch_rides_along_with_every_result():
    out = stream([0.9, 0.5, 0.7, 0.5, 0.8])
    assert [r["best_epoch"] for r in out] == [1, 2, 2, 2, 2]  # a tie keeps the earlier epoch (the checkpoint's)
    assert out[-1]["best_val_loss"] == 0.5 and out[-1]["best_val_accuracy"] == 0.5
    assert out[-1]["val_loss"] == 0.8  # the epoch's own value is untouched
    assert summary.best_metrics(out[-1]) == {"val_loss": 0.5, "val_accuracy": 0.5}
    nan_first = stream([math.nan, 0.4])
    assert math.isnan(nan_first[0]["best_val_loss"]) and nan_first[1]["best_val_loss"] == 0.4
    up = stream([0.1, 0.3, 0.2], metric="val_auroc", mode="max")
    assert up[-1]["best_epoch"] == 2 and up[-1]["best_val_auroc"] == 0.3


def fake_trial(trial_id, values, status="TERMINATED", epochs=None, **config):
    last = stream(values)[-1]
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last,
                           config={"epochs": epochs or len(values), **config})


def fake_sweep(metric="val_loss", mode="min"):
    return Sweep(name="s", searcher="random", scheduler="asha", num_samples=3, workers=Workers(1, 1), cpus_per_worker=1,
                 gpus_per_worker=0, max_concurrent=1, seed=0, metric=metric, mode=mode, max_failures=0, max_epochs=5)


def test_summary_results_and_top_k_agree_with_the_checkpoints(tmp_path):
    # "late" ends better than "early" ends, but "early"'s best epoch (its checkpoint) is the best model.
    trials = [fake_trial("late", [0.8, 0.6, 0.45, 0.44, 0.43], learning_rate=0.1),
              fake_trial("early", [0.5, 0.2, 0.9], epochs=5, learning_rate=0.01),  # stopped early by ASHA
              fake_trial("failed", [0.1], status="ERROR", learning_rate=9.0)]
    progress = SimpleNamespace(trials=trials, epoch_seconds={})
    result = summarize(fake_sweep(), progress)
    best = result["best"]
    assert (best["trial_id"], best["value"], best["epoch"], best["epochs_run"]) == ("early", 0.2, 2, 3)
    assert best["metrics"]["val_accuracy"] == pytest.approx(0.8)
    rows = result["rows"]
    assert [r["trial_id"] for r in rows] == ["failed", "early", "late"]  # ranked by value (failed included)
    early = rows[1]
    assert early["val_loss"] == 0.2 and early["last_val_loss"] == 0.9 and early["best_epoch"] == 2
    assert early["val_accuracy"] == pytest.approx(0.8) and early["status"] == "stopped early"
    # --from-sweep --top K reads results.csv: the same order, failed trials left out
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    picked = top_configs(list(csv.DictReader(open(path))), "val_loss", "min", 2, "s")
    assert [c["learning_rate"] for c in picked] == [0.01, 0.1]


def test_an_ended_trials_tune_statistics_are_dropped_and_the_summary_is_unchanged():
    from ray.tune.experiment import Trial

    from candle_ray.callbacks import ForgetEndedTrialStatistics

    trials = []
    for trial_id, values, status in (("late", [0.8, 0.6, 0.45], "TERMINATED"), ("early", [0.5, 0.2, 0.9], "TERMINATED"),
                                     ("failed", [0.1], "ERROR")):
        trial = Trial("__fake", stub=True, trial_id=trial_id, config={"epochs": 3})
        for result in stream(values):
            trial.update_last_result(summary.packed(result, ("val_loss",)))
        trial.set_status(status)
        trials.append(trial)
    progress = SimpleNamespace(trials=trials, epoch_seconds={})
    before, snapshot = summarize(fake_sweep(), progress), len(trials[0].run_metadata.get_json_state())
    forget = ForgetEndedTrialStatistics()
    forget.on_trial_complete(0, trials, trials[0])
    forget.on_trial_complete(0, trials, trials[1])
    forget.on_trial_error(0, trials, trials[2])
    assert all(t.metric_analysis == {} and t.metric_n_steps == {} for t in trials)
    assert len(trials[0].run_metadata.get_json_state()) < snapshot / 2  # the experiment state's share shrinks
    assert summarize(fake_sweep(), progress) == before and before["best"]["trial_id"] == "early"


def test_report_picks_the_same_trial_as_the_summary():
    def history(values):
        return {"val_loss": list(enumerate(values, 1))}

    trials = [{"trial_id": "late", "status": "completed", "history": history([0.8, 0.6, 0.45, 0.44, 0.43])},
              {"trial_id": "early", "status": "stopped early", "history": history([0.5, 0.2, 0.9])},
              {"trial_id": "tie", "status": "completed", "history": history([0.3, 0.2])}]
    assert _best(with_best(trials), "val_loss", "min")["trial_id"] == "early"  # the first of a tie, as summarize
    # 0.9 is the best epoch when higher is better
    assert _best(with_best(trials, mode="max"), "val_loss", "max")["trial_id"] == "early"


def test_equal_accuracies_are_ranked_by_val_loss_everywhere(tmp_path):
    """Ranked by val_accuracy on a few val rows, epochs and trials tie often: the lower val_loss wins the tie
    (the epoch the checkpoint keeps, the trial the sweep, results.csv, --top K and the report pick), and with
    no val_loss the earlier one stays."""
    def acc_stream(pairs):
        results = [{"epoch": e, "val_accuracy": a, "val_loss": v} for e, (a, v) in enumerate(pairs, 1)]
        return list(summary.BestEpoch("val_accuracy", "max")(results))

    epochs = acc_stream([(0.8, 0.9), (0.94, 0.6), (0.94, 0.3), (0.94, 0.4), (0.88, 0.2)])
    assert epochs[-1]["best_epoch"] == 3 and epochs[-1]["best_val_loss"] == 0.3
    history = {"val_accuracy": [(e, a) for e, a in enumerate([0.8, 0.94, 0.94, 0.94], 1)],
               "val_loss": [(e, v) for e, v in enumerate([0.9, 0.6, 0.3, 0.4], 1)]}
    assert summary.history_best(history, "val_accuracy", "max") == (3, 0.94)
    assert summary.history_best({"val_accuracy": history["val_accuracy"]}, "val_accuracy", "max") == (2, 0.94)
    assert summary.improves(0.94, 0.94, "max", tie=0.2, best_tie=0.3)
    assert not summary.improves(0.94, 0.94, "max", tie=0.3, best_tie=0.3) and not summary.improves(0.94, 0.94, "max")
    assert not summary.improves(0.3, 0.3, "min", tie=None, best_tie=0.1)  # val_loss itself: no tie-break

    def trial(trial_id, pairs):
        return SimpleNamespace(trial_id=trial_id, status="TERMINATED", last_result=summary.packed(
            acc_stream(pairs)[-1], ("val_accuracy",)), config={"epochs": len(pairs), "trial": trial_id})

    trials = [trial("a", [(0.94, 0.5)]), trial("b", [(0.94, 0.2)]), trial("c", [(0.9, 0.1)]), trial("d", [(0.94, 0.3)])]
    result = summarize(fake_sweep("val_accuracy", "max"), SimpleNamespace(trials=trials, epoch_seconds={}))
    assert result["best"]["trial_id"] == "b" and [r["trial_id"] for r in result["rows"]] == ["b", "d", "a", "c"]
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in result["rows"] for k in r}))
        writer.writeheader()
        writer.writerows(result["rows"])
    assert [c["trial"] for c in top_configs(list(csv.DictReader(open(path))), "val_accuracy", "max", 2, "s")] == ["b", "d"]
    reported = [{"trial_id": t, "status": "completed", "best": {"val_accuracy": 0.94, "val_loss": v}, "history": {}}
                for t, v in (("a", 0.5), ("b", 0.2))]
    assert _best(reported, "val_accuracy", "max")["trial_id"] == "b"


def test_the_live_view_names_no_best_fold_or_member():
    from candle_ray.callbacks import ProgressCallback

    trials = [fake_trial("a", [0.5, 0.3]), fake_trial("b", [0.4, 0.6]), fake_trial("c", [0.1], status="ERROR")]
    assert ProgressCallback("val_loss", "min", 2, print)._best_text(trials) == "best val_loss 0.3 (a, epoch 2)"
    assert ProgressCallback("val_loss", "min", 2, print, noun="fold")._best_text(trials) == \
        "val_loss of the folds 0.3 to 0.4"
    assert ProgressCallback("val_loss", "min", 2, print, noun="member")._best_text([]) == "val_loss of the members -"


@pytest.mark.parametrize("epochs,grace", [(1, 1), (3, 1), (8, 1), (9, 2), (20, 3), (60, 8), (100, 13)])
def test_grace_period_grows_with_the_epoch_budget(epochs, grace):
    assert grace_period_rule(epochs) == grace
    assert fake_sweep().grace == grace_period_rule(5)
    sweep = replace(fake_sweep(), max_epochs=epochs, grace_period=4)
    assert sweep.grace == 4  # --grace-period overrides the rule
    # a trial that may warm up (5 epochs from base_lr) is judged at its first epoch at the full rate, at the latest
    assert grace_period_rule(epochs, warm_up=True) == min(epochs, max(grace, 6))
    assert replace(fake_sweep(), max_epochs=epochs, warm_up=True).grace == min(epochs, max(grace, 6))


def test_schedulers_follow_the_grace_period_and_the_best_epoch():
    from candle_ray.search import make_scheduler
    from candle_ray.trial import HYPERBAND_TIME

    asha = make_scheduler("asha", "val_loss", "min", max_epochs=60, space={}, seed=0, grace=8)
    assert [m for m, _ in asha._brackets[0]._rungs] == [24, 8] and asha._metric == "best_val_loss"
    median = make_scheduler("median", "val_loss", "min", max_epochs=60, space={}, seed=0, grace=8)
    assert median._grace_period == 8
    hyperband = make_scheduler("hyperband", "val_loss", "min", max_epochs=60, space={}, seed=0, grace=8)
    # Hyperband counts time in grace periods: its smallest bracket decides after one grace period or more.
    assert hyperband._time_attr == HYPERBAND_TIME and hyperband._max_t_attr == 8
    smallest = min(r for s in range(hyperband._s_max_1) if (r := hyperband._get_r0(s)) > 0)
    assert smallest >= 1
    pbt = make_scheduler("pbt", "val_loss", "min", max_epochs=60, space={"learning_rate": [0.1]}, seed=0)
    assert pbt._metric == "val_loss"  # PBT compares the weights trials have now


def test_comparison_with_the_linear_baseline():
    lines = summary.comparison("best trial", {"val_loss": 0.6, "val_accuracy": 0.8}, "val_loss", "min",
                               {"val_loss": 0.5, "val_accuracy": 0.85}, "classification", "; or pool them")
    assert lines[0] == "best trial val_loss 0.6 vs linear baseline 0.5, val_accuracy 0.8 vs linear baseline 0.85"
    assert lines[1].startswith("warning: best trial is worse than a linear baseline") and "val_accuracy" in lines[1]
    assert lines[1].endswith("or more epochs; or pool them")
    fine = summary.comparison("best trial", {"val_loss": 0.4, "val_r2": 0.3}, "val_loss", "min", {"val_r2": 0.2},
                              "regression")
    assert len(fine) == 1
    below_mean = summary.comparison("best trial", {"val_loss": 4.0, "val_r2": -1.6}, "val_loss", "min", {}, "regression")
    assert "worse than predicting the training mean" in below_mean[-1]


def test_packed_results_keep_what_tune_follows_and_lose_nothing():
    """Tune tracks statistics of every numeric key of a result (memory and saved state per trial): a trial
    hands it the epoch, the objective and the best epoch's values; the rest travels packed, whole."""
    import json

    epoch = {"epoch": 3, "val_loss": 0.4, "loss": 0.3, "val_accuracy": 0.8, "system/cpu_utilization_percentage": 50.0,
             "samples_per_s": 900.0, "n_params": 1234, "best_epoch": 2, "best_val_loss": 0.35, "best_n_params": 1234}
    sent = summary.packed(epoch, ("val_loss",))
    numbers = {k for k, v in sent.items() if isinstance(v, (int, float))}
    assert numbers == {"epoch", "val_loss", "best_epoch", "best_val_loss"}
    two = summary.packed(epoch, ("val_loss", "n_params"))  # a 2-objective sweep's searcher follows both
    assert {k for k, v in two.items() if isinstance(v, (int, float))} == numbers | {"n_params", "best_n_params"}
    assert summary.unpacked(sent) == epoch
    resumed = json.loads(json.dumps(sent))  # a resumed sweep reads results back from Tune's JSON state
    assert summary.unpacked(resumed) == epoch
    assert summary.best_metrics(sent) == {"val_loss": 0.35, "n_params": 1234}
    assert summary.trial_value(sent, "val_loss") == 0.35
    assert summary.unpacked(None) == {} and summary.unpacked({"epoch": 1}) == {"epoch": 1}


def test_members_from_a_sweep_keep_its_ranking_and_share_one_loss(tmp_path):
    """A sweep that searched the loss and ranked by val_r2: its members keep the best val_r2 epoch, and best
    trials with different losses (outputs that do not pool) are refused before any trains."""
    from candle_ray.ensemble import member_ranking, members_from_sweep
    from candle_ray.errors import UsageError
    from tests.unit.test_warm_start import write_sweep

    trials = [{"trial_id": f"t{i}", "status": "completed", "val_r2": r2, "config.loss": loss,
               "config.learning_rate": lr} for i, (r2, loss, lr) in
              enumerate([(0.27, "qtl", 0.005), (0.24, "mse", 0.007), (0.26, "qtl", 0.002)])]
    write_sweep(tmp_path, "lossy", trials, metric="val_r2", mode="max", keys=("loss", "learning_rate"))
    members, record = members_from_sweep(str(tmp_path), "lossy", 2, 1, 0, "e.py")
    assert [m["learning_rate"] for m in members] == [0.005, 0.002] and member_ranking(record) == ("val_r2", "max")
    with pytest.raises(UsageError, match=r"3 best trials of sweep 'lossy' use different losses \(qtl, qtl, mse\), "
                                         r"whose outputs do not pool; take --top 2"):
        members_from_sweep(str(tmp_path), "lossy", 3, 1, 0, "e.py")
    assert member_ranking({"sweep": {"metric": "n_params", "mode": "min"}}) == (None, None)  # a cost: the experiment's
    plain = [dict(t, **{"config.loss": loss}) for t, loss in zip(trials, ("mse", "mae", "mse"))]
    write_sweep(tmp_path, "plain", plain, metric="val_r2", mode="max", keys=("loss", "learning_rate"))
    assert len(members_from_sweep(str(tmp_path), "plain", 3, 1, 0, "e.py")[0]) == 3  # mse and mae outputs pool


def test_a_cvs_common_epoch_is_the_best_of_the_folds_mean_curve():
    # each fold's own best (epochs 1 and 3) would average 1.0; one epoch for both: epoch 2, mean 1.5
    folds = [{"val_loss": {1: 1.0, 2: 1.5, 3: 2.5}}, {"val_loss": {1: 2.5, 2: 1.5, 3: 1.0, 4: 0.1}}]
    assert summary.common_epoch(folds, "val_loss", "min") == 2  # epoch 4: not every fold reached it
    folds[0]["val_loss"][2] = math.nan  # a fold's non-finite epoch is no candidate
    assert summary.common_epoch(folds, "val_loss", "min") in (1, 3)
    assert summary.common_epoch([{"val_accuracy": {1: 0.5, 2: 0.75}}], "val_accuracy", "max") == 2
    assert summary.common_epoch([], "val_loss", "min") is None
    assert summary.mean_curve(folds, "val_loss") == {1: 1.75, 3: 1.75}  # the report draws it


def test_the_remedy_for_losing_to_the_baseline_follows_where_the_best_epoch_fell():
    def warning(epochs):
        lines = summary.comparison("best trial", {"val_loss": 1.5}, "val_loss", "min", {"val_loss": 1.0},
                                   "classification", epochs=epochs)
        return lines[1]

    assert "its best epoch was 1 of 40: try a lower learning_rate or more weight_decay" in warning((1, 40))  # overfits
    assert "its best epoch was its last: try more epochs" in warning((40, 40))  # still learning
    assert warning((30, 40)).endswith("try a wider search (more samples, weight_decay, smaller dense layers) or more epochs")
    assert warning(None) == warning((30, 40))


def test_a_lost_worker_is_one_line_and_a_bug_keeps_its_traceback(tmp_path):
    import logging

    import cloudpickle
    from ray.exceptions import ActorUnavailableError

    from candle_ray.callbacks import ProgressCallback, _LostWorkerTraceback

    lines = []
    progress = ProgressCallback("val_loss", "min", 10, lines.append)
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    assert sum(isinstance(f, _LostWorkerTraceback) for f in tune_log.filters) == 1  # once, however many sweeps
    ProgressCallback("val_loss", "min", 10, lines.append)
    assert sum(isinstance(f, _LostWorkerTraceback) for f in tune_log.filters) == 1

    def record(exc):
        return tune_log.makeRecord(tune_log.name, logging.ERROR, __file__, 1, "Trial task failed for trial %s",
                                   ("t1",), (type(exc), exc, None))

    lost = ActorUnavailableError("The actor is unavailable: Connection reset by peer", b"\0" * 16)
    assert not _LostWorkerTraceback().filter(record(lost))  # the live view's line says it
    assert _LostWorkerTraceback().filter(record(ValueError("a bug in the trial")))  # its traceback shows where
    # As Tune's Trial.handle_error writes a lost actor's error: its message alone, and the exception pickled
    error, pickled = tmp_path / "error.txt", tmp_path / "error.pkl"
    error.write_text(f"Failure # 1 (occurred at 2026-12-07_12-00-00)\n{lost}\n")
    pickled.write_bytes(cloudpickle.dumps(lost))
    trial = SimpleNamespace(trial_id="t1", last_result={"epoch": 3}, error_file=str(error), num_failures=1,
                            max_failures=1, pickled_error_file=str(pickled))
    progress.on_trial_recover(0, [], trial)
    assert lines == [f"  trial t1 failed after 3 epochs (ActorUnavailableError: {str(lost)[:177]}); retrying from its "
                     "last checkpoint (failure 1 of 1 allowed by --max-failures)"]
    error.write_text("Traceback ...\nray.exceptions.RayTaskError(ValueError): ...\nValueError: a bug\n")
    progress.on_trial_recover(0, [], trial)  # a line that names its type keeps it
    assert "(ValueError: a bug); retrying" in lines[-1]
