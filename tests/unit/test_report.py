"""Sweep pictures from plain trial data (no MLflow, no Ray)."""

import numpy as np

from candle_ray.report import importance, write_report
from candle_ray.summary import best_epoch_of


def with_best(trials, metric="val_loss", mode="min"):
    """Each trial's best-epoch metrics from its history, as a finished trial logs them (tracking.sweep_trials)."""
    for t in trials:
        t["best"] = best_epoch_of(t["history"], metric, mode)
    return trials


def fake_trials(n=16):
    rng = np.random.default_rng(0)
    trials = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        dropout = float(rng.uniform(0, 0.5))
        optimizer = ["sgd", "adam"][i % 2]
        final = 0.1 + (np.log10(lr) + 4) * 0.3  # lr decides the result; dropout and optimizer do not
        epochs = 9 if final < 0.7 else 3  # like ASHA: the worst are stopped early
        history = {"val_loss": [(e, final + 1.0 / e) for e in range(1, epochs + 1)],
                   "loss": [(e, final + 1.2 / e) for e in range(1, epochs + 1)],
                   "accuracy": [(e, 1 - final / e) for e in range(1, epochs + 1)]}
        status = "completed" if epochs == 9 else "stopped early"
        trials.append({"trial_id": f"t{i:02d}", "status": status, "history": history,
                       "params": {"learning_rate": str(lr), "dropout": str(dropout), "optimizer": optimizer,
                                  "epochs": "9"}})
    trials.append({"trial_id": "tfail", "status": "failed", "params": {"learning_rate": "1e12", "dropout": "0.1",
                   "optimizer": "sgd"}, "history": {"val_loss": [(1, float("nan"))]}})
    return with_best(trials)


def test_importance_finds_the_parameter_that_matters():
    found = importance(fake_trials(), ["learning_rate", "dropout", "optimizer"], "val_loss")
    assert list(found.scores)[0] == "learning_rate" and found.oob_r2 > 0.5 and found.trials == 16


def test_no_importance_where_the_configurations_do_not_predict_the_result(tmp_path):
    """The metric is noise: a forest still memorises it, so shuffling its own training rows would rank the keys
    (by how well it memorised each); the report shows no ranking and says why."""
    trials = fake_trials()
    noise = np.random.default_rng(1).normal(size=len(trials))
    for t, value in zip(trials, noise):
        t["history"]["val_loss"] = [(1, float(value))]
    found = importance(with_best(trials), ["learning_rate", "dropout", "optimizer"], "val_loss")
    assert found.scores == {} and found.oob_r2 <= 0 and found.trials == 17
    files = write_report(trials, sweep="s", metric="val_loss", mode="min",
                         space_keys=["learning_rate", "dropout", "optimizer"], out=tmp_path)
    assert "parameter_importance.png" not in {f.name for f in files}
    assert "do not predict best val_loss on trials the forest did not see" in (tmp_path / "report.html").read_text()


def test_write_report(tmp_path):
    trials = fake_trials()
    trials[3]["params"]["learning_rate"] = "0.0010000000000000002"
    files = write_report(trials, sweep="s", metric="val_loss", mode="min",
                         space_keys=["learning_rate", "dropout", "optimizer"], out=tmp_path)
    names = {f.name for f in files}
    assert names == {"learning_curves.png", "parameter_importance.png", "parallel_coordinates.png",
                     "best_trial.png", "report.html"}
    for f in files:
        assert f.stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    assert "learning_curves.png" in page and "best val_loss" in page and "1 failed" in page
    assert "out-of-bag R" in page  # how far to trust the importance
    assert "<td>0.001</td>" in page and "0.0010000000000000002" not in page  # float noise: 4 digits shown


def test_report_with_too_few_trials(tmp_path):
    files = write_report(fake_trials(2)[:2], sweep="s", metric="val_loss", mode="min",
                         space_keys=["learning_rate"], out=tmp_path)
    assert "parameter_importance.png" not in {f.name for f in files}  # not estimated from 2 trials
    # nor from 9 finished trials (a failed one does not count): a forest on so few ranks noise
    assert importance(fake_trials(9), ["learning_rate", "dropout"], "val_loss").scores == {}
    assert "too few trials to estimate" in (tmp_path / "report.html").read_text()


def test_parallel_axes_of_log_keys_are_log_and_labelled_with_values():
    from candle_ray.report import parallel_axis

    positions, ticks, name = parallel_axis("learning_rate", ["1e-4", "1e-3", "1e-2"], log_keys=("learning_rate",))
    assert np.allclose(positions, [0, 0.5, 1]) and ticks == [(0.0, "0.0001"), (1.0, "0.01")]
    assert name == "learning_rate\n(log)"
    positions, ticks, name = parallel_axis("weight_decay", ["0.01", "0.1", "0.05"])  # sampled uniformly: linear
    assert np.allclose(positions, [0, 1, 4 / 9]) and ticks == [(0.0, "0.01"), (1.0, "0.1")] and name == "weight_decay"
    positions, ticks, _ = parallel_axis("loss", ["qtl", "mse", "het", "mse"])
    assert list(positions) == [1.0, 0.5, 0.0, 0.5] and [t for _, t in ticks] == ["het", "mse", "qtl"]


def test_a_cvs_folds_have_no_best(tmp_path):
    """A cv's folds (an ensemble's members) are not rival configurations: no best is crowned or drawn."""
    files = write_report(fake_trials(), sweep="cv", metric="val_loss", mode="min", space_keys=["learning_rate"],
                         out=tmp_path, kind="cv")
    assert "best_trial.png" not in {f.name for f in files}
    page = (tmp_path / "report.html").read_text()
    summary = page.split("<p>")[1].split("</p>")[0]
    assert summary.startswith(f"{len(fake_trials())} folds:") and "val_loss of the folds" in summary and "(trial" not in summary
    assert "at each fold's best epoch; " in summary and " for all, the cv estimate" in summary


def test_a_cvs_curves_show_the_folds_mean_starred_where_it_is_best():
    """The mean over the folds at the epochs all of them reached, starred at the cv's one-epoch estimate."""
    from candle_ray.report import _draw_fold_mean, _plt

    folds = [{"status": "completed", "history": {"val_loss": [(1, 1.0), (2, 1.5), (3, 2.5)]}},
             {"status": "completed", "history": {"val_loss": [(1, 2.5), (2, 1.5), (3, 1.0), (4, 0.1)]}},
             {"status": "failed", "history": {"val_loss": [(1, 9.0)]}}]
    plt = _plt()
    fig, ax = plt.subplots()
    _draw_fold_mean(ax, folds, "val_loss", "min")
    mean, star = ax.lines
    assert list(mean.get_xdata()) == [1, 2, 3] and list(mean.get_ydata()) == [1.75, 1.5, 1.75]
    assert mean.get_label() == "mean of 2 folds (cv estimate val_loss 1.5 at epoch 2)"
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([2], [1.5])
    plt.close(fig)
