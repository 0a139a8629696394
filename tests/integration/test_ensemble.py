"""Ensembles on the real local Ray cluster: seed replicas and a sweep's best configurations, pooled with
uncertainty on the parent MLflow run; `predict` from the ensemble's run id; cross-validation and a learning
curve of a sweep's best configuration."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from candle_ray.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

TINY = ROOT / "tests" / "support" / "tiny_nt3.py"


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def assert_conformal_near_nominal(metrics, alpha=0.1):
    """The ensemble's split-conformal check (calibrate on half the validation rows, measure on the other
    half) covers 1 - alpha up to sampling error: 3 standard errors of the measured half, plus the
    1/(n_cal + 1) that split conformal may over-cover by. Smoke splits are small, so this is loose here;
    tests/unit/test_ensemble_conformal.py checks the same path on 1,000 rows within 0.05."""
    rows = int(metrics["ensemble_val_rows"])
    n_cal, n_test = rows // 2, rows - rows // 2
    tolerance = 3 * (alpha * (1 - alpha) / n_test) ** 0.5 + 1 / (n_cal + 1)
    assert abs(metrics["conformal_val_coverage"] - (1 - alpha)) <= tolerance, (metrics["conformal_val_coverage"], rows)


def runs_of(name):
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny_nt3")
    runs = client.search_runs([exp.experiment_id], f"tags.`candle_ray.sweep` = '{name}'", max_results=100)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parent, children


def test_seed_ensemble_logs_uncertainty_and_predicts(ray_cluster, workdir):
    r = cli("ensemble", TINY, "--smoke", "--members", 3, "--name", "ens3", "--set", "epochs=4",
            "--set", "learning_rate=0.05")
    assert r.exit_code == 0, r.output
    assert "3 members: 3 completed" in r.output and "ensemble of 3 and the linear baseline (share 0.5) on" in r.output
    assert "; the 3 networks alone: accuracy" in r.output
    assert r.output.count("vs linear baseline") == 1  # the pooled ensemble meets the baseline, not its best member
    (parent,), children = runs_of("ens3")
    assert len(children) == 3 and parent.data.tags["candle_ray.kind"] == "ensemble"
    assert sorted(int(c.data.params["rng_seed"]) for c in children) == [7102, 7103, 7104]
    m = parent.data.metrics
    assert m["ensemble_members"] == 3 and 0 <= m["ensemble_val_ece"] <= 1 and m["ensemble_val_accuracy"] > 0.5
    assert "baseline_val_accuracy" in m
    assert_conformal_near_nominal(m)
    assert m["conformal_val_set_size"] >= 1
    _listed("ens3", f"pooled val_accuracy {m['ensemble_val_accuracy']:.4g}")
    client = MlflowClient()
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "uq")}
    assert {"uq/reliability.png", "uq/val_predictions.tsv"} <= files
    assert "baseline/best.json" in {f.path for f in client.list_artifacts(parent.info.run_id, "baseline")}
    model_members = {f.path for f in client.list_artifacts(parent.info.run_id, "model/artifacts")}
    assert model_members == {f"model/artifacts/member-{k}" for k in range(4)}  # the MLflow model pools it too

    # predict with the ensemble's run id: one column per member, and the baseline's, at half the weight
    smoke_files = sorted((workdir / "cache" / "synthetic").rglob("*.csv"))
    data = next(p for p in smoke_files if "test" in p.name)
    out = workdir / "ens.tsv"
    r = cli("predict", parent.info.run_id, "--data", data, "--out", out, "--member-columns")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out, sep="\t")
    assert [c for c in table if c.startswith("member_") or c == "baseline"] == ["member_0", "member_1", "member_2",
                                                                                  "baseline"]
    assert np.allclose(table.filter(like="p_").sum(axis=1), 1, atol=1e-5)
    r = cli("predict", parent.info.run_id, "--data", data, "--out", workdir / "nets.tsv", "--member-columns",
            "--no-baseline")
    assert r.exit_code == 0 and "(3 member(s))" in r.output, r.output
    nets = pd.read_csv(workdir / "nets.tsv", sep="\t")
    assert "baseline" not in nets and not np.allclose(nets.filter(like="p_"), table.filter(like="p_"))
    # NT3 validates on its test file, so the networks' score on these rows is the parent's members_val_accuracy
    labels = pd.read_csv(data, header=None, usecols=[0])[0].astype(int).astype(str)
    assert m["members_val_accuracy"] == pytest.approx((nets["prediction"].astype(str) == labels).mean())
    r = cli("ensemble", TINY, "--smoke", "--members", 1, "--name", "bad", "--baseline-share", 1)
    assert r.exit_code == 2 and "--baseline-share" in r.output


def test_from_sweep_top_configurations(ray_cluster, workdir):
    """A two-objective sweep (val_loss, then epoch time: it ranks, checkpoints and picks by val_loss as any
    sweep, and marks its Pareto front); its best configurations as an ensemble; predict by its name, with
    --top K or a front member (--pick)."""
    r = cli("tune", TINY, "--smoke", "--num-samples", 3, "--scheduler", "fifo", "--name", "src", "--set", "epochs=2",
            "--metric", "val_loss", "--metric", "epoch_time_s")  # no --mode: each goes its own way (min, min)
    assert r.exit_code == 0, r.output
    results = pd.read_csv(workdir / "candle-ray-sweeps" / "src" / "results.csv")
    best_two = results.sort_values("val_loss")["config.learning_rate"].head(2).tolist()
    front = results[results["pareto"] == 1]
    assert "Pareto front over val_loss (min), epoch_time_s (min): " in r.output, r.output
    assert results["knee"].sum() == 1 and 1 <= len(front) <= 3 and front["trial_id"].iloc[0] == results["trial_id"].iloc[0]
    assert (workdir / "candle-ray-sweeps" / "src" / "report" / "pareto_front.png").exists()
    values = results[["val_loss", "epoch_time_s"]].to_numpy()  # the front: every trial none beats, no other
    beaten = [any((values[j] <= values[i]).all() and (values[j] < values[i]).any() for j in range(len(values)))
              for i in range(len(values))]
    assert set(front["trial_id"]) == set(results["trial_id"][[not b for b in beaten]])

    r = cli("ensemble", TINY, "--from-sweep", "src", "--top", 4, "--name", "bad")
    assert r.exit_code == 2 and "--top 4 but sweep 'src' has only 3 finished trial(s)" in r.output
    r = cli("ensemble", TINY, "--from-sweep", "nope", "--name", "bad")
    assert r.exit_code == 2 and "--from-sweep 'nope' does not exist" in r.output

    r = cli("ensemble", TINY, "--from-sweep", "src", "--top", 2, "--name", "top2")
    assert r.exit_code == 0, r.output
    assert "best member val_loss " in r.output and "best trial" not in r.output, r.output  # members, not rivals
    _, children = runs_of("top2")
    assert sorted(float(c.data.params["learning_rate"]) for c in children) == pytest.approx(sorted(best_two))
    assert all(c.data.params["epochs"] == "2" for c in children)  # the sweep's --set came along
    record = json.loads((workdir / "candle-ray-sweeps" / "top2" / "sweep.json").read_text())
    assert record["kind"] == "ensemble" and record["smoke"] is True
    _trained_from_the_sweep(results)


    # predict SWEEP: the sweep's best trial, by name or by its parent run id; --top K pools its K best
    (parent,), children = runs_of("src")
    best_run = next(c.info.run_id for c in children if c.data.tags["candle_ray.trial_id"] == results.sort_values(
        "val_loss")["trial_id"].iloc[0])
    data = next(p for p in sorted((workdir / "cache" / "synthetic").rglob("*.csv")) if "test" in p.name)
    tables = {}
    knee_run = next(c.info.run_id for c in children
                    if c.data.tags["candle_ray.trial_id"] == results[results["knee"] == 1]["trial_id"].iloc[0])
    assert parent.data.tags["candle_ray.knee_trial"] == results[results["knee"] == 1]["trial_id"].iloc[0]
    assert parent.data.metrics["pareto_front_size"] == len(front)
    for model, extra in (("src", ()), (parent.info.run_id, ()), (best_run, ()), ("src", ("--top", 2)),
                         ("src", ("--pick", "1")), ("src", ("--pick", "knee")), (knee_run, ())):
        out = workdir / f"pred-{len(tables)}.tsv"
        r = cli("predict", model, "--data", data, "--out", out, "--member-columns", *extra)
        assert r.exit_code == 0, r.output
        tables[(model, *extra)] = pd.read_csv(out, sep="\t")
    assert tables[("src",)].equals(tables[(best_run,)]) and tables[(parent.info.run_id,)].equals(tables[(best_run,)])
    assert tables[("src", "--pick", "1")].equals(tables[("src",)])  # the front's first: the best by val_loss
    assert tables[("src", "--pick", "knee")].equals(tables[(knee_run,)])
    assert "member_0" in tables[("src",)] and "member_1" not in tables[("src",)]
    pooled = tables[("src", "--top", 2)]
    assert {"member_0", "member_1"} <= set(pooled) and "member_2" not in pooled
    assert pooled["member_0"].equals(tables[("src",)]["member_0"])  # best first
    r = cli("predict", "src", "--data", data, "--out", workdir / "x.tsv", "--top", 4)
    assert r.exit_code == 2 and "--top 4 but sweep 'src' has only 3 finished trial(s)" in r.output
    r = cli("predict", "top2", "--data", data, "--out", workdir / "x.tsv", "--top", 1)
    assert r.exit_code == 2 and "is a ensemble" not in r.output and "is an ensemble" in r.output
    r = cli("predict", "src", "--data", data, "--out", workdir / "x.tsv", "--pick", len(front) + 1)
    assert r.exit_code == 2 and f"give knee or a front member's place, 1 to {len(front)}" in r.output, r.output
    r = cli("predict", "top2", "--data", data, "--out", workdir / "x.tsv", "--pick", "knee")
    assert r.exit_code == 2 and "--pick knee picks among a sweep's trials" in r.output, r.output
    r = cli("predict", "nope", "--data", data, "--out", workdir / "x.tsv")
    assert r.exit_code == 2 and "'nope' is not a checkpoint path" in r.output and "sweeps there: src, top2" in r.output
    _learning_curve_of_the_best(best_two[0], data)


def test_cross_validation_stratified(ray_cluster, workdir):
    r = cli("cv", TINY, "--smoke", "--folds", 3, "--name", "cv3", "--set", "epochs=2")  # stratified: a classifier
    assert r.exit_code == 0, r.output
    assert "3 folds: 3 completed" in r.output and "cross-validation over 3 folds: val_loss" in r.output
    assert not [line for line in r.output.splitlines() if line.startswith("best ")]  # its result: the folds' mean
    (parent,), children = runs_of("cv3")
    assert sorted(int(c.data.params["cv_fold"]) for c in children) == [0, 1, 2]
    m = parent.data.metrics
    # Each fold's model is its best checkpoint: the fold's best epoch (best_val_loss on its run) counts.
    folds = [c.data.metrics["best_val_loss"] for c in children]
    assert all(f <= c.data.metrics["val_loss"] for f, c in zip(folds, children))
    assert m["cv_mean_val_loss"] == pytest.approx(np.mean(folds)) and m["cv_std_val_loss"] == pytest.approx(np.std(folds, ddof=1))
    # One epoch for every fold, the best of their mean curve: the estimate set against the linear baseline.
    client = MlflowClient()
    curves = np.array([[p.value for p in sorted(client.get_metric_history(c.info.run_id, "val_loss"), key=lambda p: p.step)]
                       for c in children])
    epoch = int(np.argmin(curves.mean(axis=0))) + 1
    assert m["cv_epoch"] == epoch and m["cv_epoch_mean_val_loss"] == pytest.approx(curves[:, epoch - 1].mean())
    assert m["cv_epoch_mean_val_loss"] >= m["cv_mean_val_loss"] - 1e-9  # each fold's own best can only flatter
    assert f"at one epoch for every fold, epoch {epoch} " in r.output
    assert f"cross-validated model at epoch {epoch} val_loss" in r.output
    assert parent.data.tags["candle_ray.kind"] == "cv"
    _final_model_of_the_cv(r.output, epoch)
    _listed("cv3", f"val_loss {m['cv_epoch_mean_val_loss']:.4g}, ep {epoch}")  # what `sweeps` shows of it


def _listed(name: str, outcome: str):
    """`candle-ray sweeps` shows a cv's one-epoch estimate and an ensemble's pooled score (its sweep.json)."""
    r = cli("sweeps")
    assert r.exit_code == 0, r.output
    [line] = [line for line in r.output.splitlines() if line.startswith(f"{name} ")]
    assert outcome in line, line


def _epochs(n: int) -> str:
    return f"{n} epoch" + "s" * (n != 1)


def _final_model_of_the_cv(output: str, epoch: int):
    """The cv names the final model's command, and `train --from-sweep CV --all-rows` trains it: the cv's
    configuration (its --set), all train+val rows, the cv's one epoch. Without --all-rows a cv is refused."""
    assert f"final model: candle-ray train {TINY} --from-sweep cv3 --all-rows (all train+val rows, {_epochs(epoch)})" \
        in output, output
    r = cli("train", TINY, "--from-sweep", "cv3", "--all-rows", "--run-name", "cv3-final")
    assert r.exit_code == 0, r.output
    assert "configuration of cv cv3: the experiment's, with --set epochs=2" in r.output, r.output
    assert f"--all-rows: {_epochs(epoch)}, its one epoch for every fold" in r.output
    assert f"trained {_epochs(epoch)} on all train+val rows" in r.output
    r = cli("train", TINY, "--from-sweep", "cv3")
    assert r.exit_code == 2 and "or add --all-rows: a final model on all train+val rows" in r.output, r.output


def test_cross_validation_leave_drugs_out(ray_cluster, workdir):
    p1b3 = ROOT / "experiments" / "p1b3.py"
    r = cli("cv", p1b3, "--smoke", "--folds", 2, "--group-by", "drug_name", "--name", "bad")
    assert r.exit_code == 2 and "--group-by 'drug_name' is not a column" in r.output and "NSC" in r.output
    r = cli("cv", p1b3, "--smoke", "--folds", 2, "--group-by", "NSC", "--name", "lodo", "--set", "epochs=1")
    assert r.exit_code == 0, r.output
    _, children = runs_of_experiment("p1b3", "lodo")
    assert len(children) == 2 and all("val_r2" in c.data.metrics for c in children)


def _trained_from_the_sweep(results):
    """`train --from-sweep`: a front member's configuration (its searched keys, the sweep's --set), this
    command's --set over both."""
    r = cli("train", TINY, "--from-sweep", "src", "--pick", "knee", "--set", "dropout=0.125", "--run-name", "from-src")
    assert r.exit_code == 0, r.output
    knee = results[results["knee"] == 1].iloc[0]
    said = r.output.split("configuration of sweep src's front member knee: ")[1].splitlines()[0]
    assert f"learning_rate={knee['config.learning_rate']}" in said, said
    [run] = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("tiny_nt3").experiment_id],
                                       "tags.mlflow.runName = 'from-src'")
    params = run.data.params
    assert float(params["learning_rate"]) == pytest.approx(knee["config.learning_rate"])
    assert params["epochs"] == "2" and params["dropout"] == "0.125", params
    # --all-rows: the best trial's configuration for its best epoch, on train+val with no validation
    best_epoch = int(results.iloc[0]["best_epoch"])  # results.csv is ranked, best first
    r = cli("train", TINY, "--from-sweep", "src", "--all-rows", "--run-name", "final", "--register", "tiny-final")
    assert r.exit_code == 0, r.output
    assert f"--all-rows: {_epochs(best_epoch)}, that trial's best epoch" in r.output, r.output
    assert "no validation rows for reduce_lr to follow: reduce_lr=False" in r.output  # NT3's plateau schedule
    assert "train+val rows (--all-rows: no validation)" in r.output and f"trained {_epochs(best_epoch)} on all" in r.output
    [run] = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("tiny_nt3").experiment_id],
                                       "tags.mlflow.runName = 'final'")
    assert run.data.params["all_rows"] == "True" and run.data.params["epochs"] == str(best_epoch)
    assert "loss" in run.data.metrics and not [k for k in run.data.metrics if k.startswith("val_")], run.data.metrics
    assert "registered: models:/tiny-final@best" in r.output  # the final model, in the Model Registry
    assert MlflowClient().get_model_version_by_alias("tiny-final", "best").run_id == run.info.run_id
    r = cli("train", TINY, "--from-sweep", "top2")
    assert r.exit_code == 2 and "is an ensemble, whose trials share one configuration" in r.output, r.output


def runs_of_experiment(experiment, name):
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`candle_ray.sweep` = '{name}'", max_results=100)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def test_tune_with_cv_refuses_ddp_trials(workdir):
    """--cv trains every fold inside the trial, one worker each: DDP trials are refused before Ray starts.
    (test_full_spaces runs `tune --cv 2` of every experiment end to end and checks NT3's folds in MLflow.)"""
    r = cli("tune", TINY, "--smoke", "--cv", 2, "--workers-per-trial", 2, "--name", "bad")
    assert r.exit_code == 2 and "--cv trains the folds inside each trial" in r.output


def test_heteroscedastic_ensemble_splits_uncertainty(ray_cluster, workdir):
    p1b3 = ROOT / "experiments" / "p1b3.py"
    r = cli("ensemble", p1b3, "--smoke", "--members", 2, "--name", "het2", "--set", "loss=het", "--set", "epochs=3",
            "--set", "learning_rate=0.01")  # the smoke lr of 0.05 makes the het loss diverge
    assert r.exit_code == 0, r.output
    (parent,), children = runs_of_experiment("p1b3", "het2")
    m = parent.data.metrics
    assert "(the linear baseline is not pooled: its head is not the networks')" in r.output
    assert "ensemble_baseline_share" not in m and "members_val_r2" not in m
    assert m["ensemble_val_aleatoric_std"] > 0 and m["ensemble_val_epistemic_std"] > 0
    assert 0 <= m["ensemble_val_coverage_90"] <= 1 and m["ensemble_val_interval_width"] > 0
    assert_conformal_near_nominal(m)
    files = {f.path for f in MlflowClient().list_artifacts(parent.info.run_id, "uq")}
    assert {"uq/coverage.png", "uq/error_vs_sigma.png", "uq/val_predictions.tsv"} <= files



def _learning_curve_of_the_best(learning_rate: float, data):
    """`candle-ray lc --from-sweep src`: the sweep's best configuration, two seeds per size, each on its share of
    the training rows; the curve (each size's mean at the best epoch of its seeds' mean curve, the training rows
    as MLflow's step), the linear baseline's on the same rows, the picture on the parent run; predict LC pools
    the seeds on all the rows."""
    r = cli("lc", TINY, "--from-sweep", "src", "--sizes", "0.25,0.5,1", "--replicas", 2, "--name", "lc3")
    assert r.exit_code == 0, r.output
    assert "6 runs: 6 completed" in r.output
    assert "learning curve: val_loss at each size's best epoch of its seeds' mean curve" in r.output
    assert not [line for line in r.output.splitlines() if line.startswith("best ")]  # its result: the curve
    (parent,), children = runs_of("lc3")
    assert [float(c.data.params["learning_rate"]) for c in children] == pytest.approx([learning_rate] * 6)
    assert all(c.data.params["epochs"] == "2" for c in children)  # the sweep's --set came along
    rows, client = 96, MlflowClient()  # tiny_nt3's smoke training rows
    expected = {}
    for share in (0.25, 0.5, 1.0):
        curves = np.array([[m.value for m in sorted(client.get_metric_history(c.info.run_id, "val_loss"),
                                                    key=lambda m: m.step)]
                           for c in children if float(c.data.params["train_fraction"]) == share])
        mean = curves.mean(axis=0)
        expected[round(share * rows)] = pytest.approx(mean[int(np.argmin(mean))])  # one epoch for both seeds
    history = client.get_metric_history(parent.info.run_id, "lc_val_loss")
    assert {m.step: m.value for m in history} == expected
    linear = client.get_metric_history(parent.info.run_id, "lc_baseline_val_loss")  # on the same rows
    assert sorted(m.step for m in linear) == [24, 48, 96] and "linear baseline: " in r.output
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "lc")] == ["lc/learning_curve.png"]
    assert parent.data.tags["candle_ray.kind"] == "lc"
    # predict LC: its two seeds on all the rows, whichever run scored best (a smaller share may, by chance)
    r = cli("predict", "lc3", "--data", data, "--out", data.parent / "lc-pred.tsv")
    assert r.exit_code == 0 and "(2 member(s))" in r.output, r.output
    r = cli("lc", TINY, "--smoke", "--sizes", "0,0.5", "--name", "bad")
    assert r.exit_code == 2 and "each share of the training rows must be in (0, 1]" in r.output, r.output
