"""Every shipped experiment's whole search space through the sweep -> ensemble path: on the real local Ray
cluster, a `tune --cv 2` smoke sweep that searches every key (`--full-space`: list-valued `dense`/`conv`
choices and the full-size layouts a plain smoke search leaves out, on smoke data as wide as they need), each
trial two fold models; then the ensemble of its best two, or its one-line refusal for models whose outputs
do not pool. NT3's ensemble trains through Ray (`ensemble --from-sweep --top 2`, on the sweep's full-space
data); for the others, the members that command would train, and the space and searcher it hands Tune, are
checked against the sweep's configurations, and the sweep's own two trials are pooled in this process
(`ensemble.evaluate`, the ensemble's evaluation): a Ray ensemble per experiment adds 3-14 s (measured: +48 s for
the seven, uno's full-size layouts 14 s of it), trainings that the sweep itself and test_ensemble already run."""

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from candle_ray import ensemble, search
from candle_ray.cli import _prepare, main
from candle_ray.data.cache import Cache
from candle_ray.experiment import load_experiment
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))
# Ensembles pool one prediction per row: these refuse before training, in one line.
NOT_POOLED = {"p1b1": "trains an autoencoder", "p3b1": "is multi-task"}
TRAINED = {"nt3"}  # its ensemble trains through Ray: full-size conv layouts on the sweep's full-space data
# Every learning searcher meets a real space here under fifo and under asha (bohb brings its own asha; random
# and grid run in most other sweep tests, and grid refuses these continuous spaces): each experiment takes the
# next pair in turn.
PAIRS = (("gp", "fifo"), ("cmaes", "asha"), ("ga", "fifo"), ("bohb", "asha"), ("optuna", "fifo"), ("gp", "asha"),
         ("cmaes", "fifo"), ("ga", "asha"), ("optuna", "asha"), ("random", "asha"))
PAIR = {name: PAIRS[i % len(PAIRS)] for i, name in enumerate(EXPERIMENTS)}


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_full_space_sweep_then_ensemble_of_its_best_two(ray_cluster, workdir, name):
    path = ROOT / "experiments" / f"{name}.py"
    experiment = load_experiment(path)
    space = experiment.search_space
    one_epoch = () if "epochs" in space else ("--set", "epochs=1")  # attn and p3b1 search their epochs
    searcher, scheduler = PAIR[name]
    r = cli("tune", path, "--smoke", "--full-space", "--cv", 2, "--num-samples", 2, "--search", searcher,
            "--scheduler", scheduler, *one_epoch,
            "--name", f"{name}-full", "--no-baseline", "--seed", 3)
    assert r.exit_code == 0, r.output
    assert f"2 x {searcher} / {scheduler} over" in r.output, r.output
    assert "2 trials: " in r.output and " 0 failed" in r.output, r.output  # asha may stop one early
    results = pd.read_csv(workdir / "candle-ray-sweeps" / f"{name}-full" / "results.csv")
    assert {f"config.{k}" for k in space} <= set(results.columns)  # every key searched, none held back
    for trial in (workdir / "candle-ray-sweeps" / f"{name}-full" / "trials").iterdir():  # 2 fold models each
        assert all((trial / f"fold-{k}" / "checkpoints" / "best.json").exists() for k in (0, 1)), trial
    if name in TRAINED:
        _cv_logged(r.output, name)

    if name in NOT_POOLED or name in TRAINED:
        _ensemble_trained(path, name, space, results, workdir)
    else:
        _ensemble_pooled_here(experiment, name, space, results, workdir)


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
    assert "2 trials: 2 completed" in r.output and "ensemble of 2 on" in r.output, r.output
    members = pd.read_csv(workdir / "candle-ray-sweeps" / f"{name}-top2" / "results.csv")
    for key in space:  # the members are the sweep's two configurations, list values included
        assert sorted(map(str, members[f"config.{key}"])) == sorted(map(str, results[f"config.{key}"])), key


def _ensemble_pooled_here(experiment, name, space, results, workdir):
    """What `ensemble --from-sweep NAME --top 2` would train, and the pooling of the sweep's two trials."""
    members, record = ensemble.members_from_sweep(str(workdir / "candle-ray-sweeps"), f"{name}-full", 2, 1, 0,
                                                  experiment.path)
    assert record["full_space"] is True  # the members would train on the sweep's full-space data
    for key in space:  # list values come back as lists, as the sweep ran them
        assert sorted(str(m[key]) for m in members) == sorted(map(str, results[f"config.{key}"])), key
    # what the ensemble hands Tune: a space of the members' values and a searcher that suggests each member whole
    tune_space, searcher = search.members_space(members), search.make_searcher("members", "val_loss", "min", 0, 2,
                                                                              points=members)
    assert set(tune_space) == set(members[0])
    assert [searcher.suggest(f"t{i}") for i in range(2)] == members and searcher.suggest("t2") == searcher.FINISHED
    entry = _prepare(experiment.full_space_smoke(), smoke=True, cache=Cache(workdir / "cache"),
                     log=lambda _: None)
    ensemble.check_poolable(entry)
    trials = sorted((workdir / "candle-ray-sweeps" / f"{name}-full" / "trials").iterdir())
    metrics, files = ensemble.evaluate([t / "fold-0" / "checkpoints" for t in trials], entry, workdir / "uq")
    assert metrics["ensemble_members"] == 2 and metrics["ensemble_val_rows"] > 0
    assert files and all(f.exists() for f in files)
