"""Every shipped experiment's whole search space through the sweep -> ensemble path: on the real local Ray
cluster, a `tune --cv 2` smoke sweep that searches every key (`--full-space`: list-valued `dense`/`conv`
choices and the full-size layouts a plain smoke search leaves out, on smoke data as wide as they need), each
trial two fold models; then `ensemble --from-sweep --top 2` trains the sweep's two configurations through Ray
on the sweep's full-space data, or refuses in one line for models whose outputs do not pool."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from candle_ray import checkpoint
from candle_ray.cli import main
from candle_ray.experiment import load_experiment
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))
# Ensembles pool predictions: an autoencoder has none, and is refused before training, in one line.
NOT_POOLED = {"p1b1": "trains an autoencoder"}
# Every learning searcher meets a real space here under fifo and under asha (bohb brings its own asha; random
# and grid run in most other sweep tests, and grid refuses these continuous spaces): each experiment takes the
# next pair in turn.
PAIRS = (("gp", "fifo"), ("cmaes", "asha"), ("ga", "fifo"), ("bohb", "asha"), ("optuna", "fifo"), ("gp", "asha"),
         ("cmaes", "fifo"), ("ga", "asha"), ("optuna", "asha"), ("random", "asha"))
PAIR = {name: PAIRS[i % len(PAIRS)] for i, name in enumerate(EXPERIMENTS)}
# A CANDLE config file as uno_default_model.txt writes it: a data option of the reader beside a model key set
# to None. The sweep's data, its resume and the ensemble's data all follow the file (checked on the manifest).
CANDLE_FILES = {"uno": "[Global_Params]\nval_split=0.25\nlearning_rate=None\nrng_seed=2018\n"}


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_full_space_sweep_then_ensemble_of_its_best_two(ray_cluster, workdir, name):
    path = ROOT / "experiments" / f"{name}.py"
    experiment = load_experiment(path)
    space = experiment.search_space
    one_epoch = () if "epochs" in space else ("--set", "epochs=1")  # attn and p3b1 search their epochs
    searcher, scheduler = PAIR[name]
    config_file = ()
    if name in CANDLE_FILES:
        (workdir / "candle.txt").write_text(CANDLE_FILES[name])
        config_file = ("--config-file", workdir / "candle.txt")
    r = cli("tune", path, "--smoke", "--full-space", "--cv", 2, "--num-samples", 2, "--search", searcher,
            "--scheduler", scheduler, *one_epoch, *config_file,
            "--name", f"{name}-full", "--no-baseline", "--seed", 3)
    assert r.exit_code == 0, r.output
    assert f"2 x {searcher} / {scheduler} over" in r.output, r.output
    assert "2 trials: " in r.output and " 0 failed" in r.output, r.output  # asha may stop one early
    # a joined dataset's model predicts rows of ids; P3B1's multi-task model, a report's features
    assert ("ROWS.csv: one row per combination, columns " in r.output) == (name in ("uno", "combo", "p1b3", "attn"))
    assert ("ROWS.csv: one report per row, its " in r.output) == (name == "p3b1")
    results = pd.read_csv(workdir / "candle-ray-sweeps" / f"{name}-full" / "results.csv")
    assert {f"config.{k}" for k in space} <= set(results.columns)  # every key searched, none held back
    best_epochs = dict(zip(results["trial_id"], results["best_epoch"]))
    for trial in (workdir / "candle-ray-sweeps" / f"{name}-full" / "trials").iterdir():  # 2 fold models each,
        # both kept at the trial's best epoch: the one whose mean over the folds ranked it
        kept = {checkpoint.pointer(trial / f"fold-{k}" / "checkpoints", "best")["epoch"] for k in (0, 1)}
        assert kept == {best_epochs[trial.name]}, (trial, kept)
    assert "/fold-*/checkpoints (2 fold models); predict with" in r.output, r.output
    if name == "nt3":
        _cv_logged(r.output, name)
    if config_file:  # the sweep recorded the file's text: an edit afterwards changes neither it nor its ensemble
        config_file[1].write_text(CANDLE_FILES[name].replace("val_split=0.25", "val_split=0.3"))
    _ensemble_trained(path, name, space, results, workdir)
    if config_file:
        _data_follows_the_file(workdir, name, r.output)


def _data_follows_the_file(workdir, name, output):
    assert "read with val_split=0.25 (options of reader uno)" in output and "adam's Keras default, 0.001" in output
    sweeps = workdir / "candle-ray-sweeps"
    prints = {json.loads((sweeps / s / "sweep.json").read_text())["dataset_fingerprint"] for s in (f"{name}-full",
                                                                                                   f"{name}-top2")}
    assert len(prints) == 1, prints  # the ensemble trained on the sweep's data
    manifest = next((workdir / "cache" / "datasets").glob(f"*-{prints.pop()}")) / "manifest.json"
    assert json.loads(manifest.read_text())["reader"]["options"]["val_split"] == 0.25


def _cv_logged(output: str, name: str):
    """`tune --cv 2` in MLflow: each child's metric is the mean of its folds' and its MLflow model pools both
    fold models; the best trial's is the sweep's model."""
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              f"tags.`candle_ray.sweep` = '{name}-full'", max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for child in children:
        m = child.data.metrics
        assert m["val_loss"] == pytest.approx((m["fold0_val_loss"] + m["fold1_val_loss"]) / 2)
        members = {f.path for f in client.list_artifacts(child.info.run_id, "model/artifacts")}
        assert members == {f"model/artifacts/member-{k}" for k in (0, 1)}, members
    best = output.split("MLflow model: runs:/")[1].split("/")[0]
    assert best in {child.info.run_id for child in children}


def _ensemble_trained(path, name, space, results, workdir):
    r = cli("ensemble", path, "--from-sweep", f"{name}-full", "--top", 2, "--name", f"{name}-top2", "--no-baseline")
    if name in NOT_POOLED:
        assert r.exit_code == 2 and NOT_POOLED[name] in r.output and "trials:" not in r.output, r.output
        assert not (workdir / "candle-ray-sweeps" / f"{name}-top2").exists()
        return
    assert r.exit_code == 0, r.output
    assert "2 members: 2 completed" in r.output and "ensemble of 2 on" in r.output, r.output
    record = json.loads((workdir / "candle-ray-sweeps" / f"{name}-top2" / "sweep.json").read_text())
    assert record["kind"] == "ensemble" and record["full_space"] is True  # trained on the sweep's own data
    members = pd.read_csv(workdir / "candle-ray-sweeps" / f"{name}-top2" / "results.csv")
    for key in space:  # the members are the sweep's two configurations, list values included
        assert sorted(map(str, members[f"config.{key}"])) == sorted(map(str, results[f"config.{key}"])), key

