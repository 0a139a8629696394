"""Sweeps on the real local Ray cluster: ASHA with a real `mlflow server`, PBT weight transfer,
a failing trial among good ones, a resume after Ctrl-C of the driver, Hyperband pauses,
Optuna TPE with median stopping."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import pytest
from click.testing import CliRunner

from candle_ray import checkpoint
from candle_ray.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

TINY = ROOT / "tests" / "support" / "tiny_nt3.py"


def tune(*args):
    return CliRunner().invoke(main, ["tune", *map(str, args)], catch_exceptions=False)


def rest(server, path, body=None):
    url = f"{server}/api/2.0/mlflow/{path}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def test_asha_sweep_nests_trials_under_parent(ray_cluster, workdir, mlflow_server):
    """An ASHA sweep logged to an MLflow server: one parent, one child per trial, ranked by each trial's best
    epoch. Trials hand Tune a checkpoint only every --checkpoint-every seconds (here: at their end); each
    child still gets the checkpoint of its best epoch, also when ASHA stopped it between two hand-overs."""
    r = tune(TINY, "--smoke", "--num-samples", 4, "--scheduler", "asha", "--name", "asha4", "--set", "epochs=9",
             "--checkpoint-every", 1000, "--tracking-uri", mlflow_server)
    assert r.exit_code == 0, r.output
    assert "4 trials:" in r.output and "best val_loss" in r.output
    exp = rest(mlflow_server, "experiments/get-by-name?experiment_name=tiny_nt3")["experiment"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = lambda run: {t["key"]: t["value"] for t in run["data"].get("tags", [])}  # noqa: E731
    parents = [run for run in runs if tags(run).get("candle_ray.sweep") == "asha4" and "mlflow.parentRunId" not in tags(run)]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    children = [run for run in runs if tags(run).get("mlflow.parentRunId") == parents[0]["info"]["run_id"]]
    assert len(children) == 4
    assert len({tags(c)["candle_ray.trial_id"] for c in children}) == 4
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert "learning_rate" in params and params["model_name"] == "nt3"
        history = rest(mlflow_server, f"metrics/get-history?run_id={child['info']['run_id']}&metric_key=val_loss")["metrics"]
        steps = [m["step"] for m in history]
        assert steps and sorted(steps) == list(range(1, len(steps) + 1))  # each epoch once
    statuses = [tags(c)["candle_ray.trial_status"] for c in children]
    assert "stopped early" in statuses  # ASHA cut some trials
    # The linear baseline was fitted on the same split before the first trial and sits on the parent;
    # the best trial is ranked by its best epoch, the same in results.csv and best_config.json.
    parent_metrics = {m["key"]: m["value"] for m in parents[0]["data"]["metrics"]}
    assert {"baseline_val_loss", "baseline_val_accuracy", "baseline_val_auroc"} <= set(parent_metrics)
    assert 0 < parent_metrics["baseline_val_loss"] < 5 and 0 <= parent_metrics["baseline_val_accuracy"] <= 1
    assert "linear baseline (logistic regression" in r.output and "vs linear baseline" in r.output
    results = {row["trial_id"]: row for row in csv.DictReader(open(Path("candle-ray-sweeps/asha4/results.csv")))}
    worth = {}
    for child in children:
        history = rest(mlflow_server, f"metrics/get-history?run_id={child['info']['run_id']}&metric_key=val_loss")["metrics"]
        best = min(history, key=lambda m: (m["value"], m["step"]))
        row = results[tags(child)["candle_ray.trial_id"]]
        assert float(row["val_loss"]) == pytest.approx(best["value"]) and int(row["best_epoch"]) == best["step"]
        assert float(row["last_val_loss"]) == pytest.approx(max(history, key=lambda m: m["step"])["value"])
        assert tags(child)["candle_ray.best_epoch"] == str(best["step"])
        # its own folder, once it ended: the best epoch's weights alone (checkpoint.slim)
        folder = Path("candle-ray-sweeps/asha4/trials") / tags(child)["candle_ray.trial_id"] / "checkpoints"
        assert [p.name for p in folder.glob("*.pt")] == [f"epoch-{best['step']:04d}.pt"]
        assert "optimizer" not in checkpoint.load(folder, "last")
        best_json = f"runs:/{child['info']['run_id']}/model/artifacts/member-0/best.json"  # its weights: its model
        local = mlflow.artifacts.download_artifacts(artifact_uri=best_json,
                                                    dst_path=str(workdir / child["info"]["run_id"]), tracking_uri=mlflow_server)
        assert json.loads(Path(local).read_text())["epoch"] == best["step"]
        worth[tags(child)["candle_ray.trial_id"]] = best["value"]
    chosen = json.loads(Path("candle-ray-sweeps/asha4/best_config.json").read_text())
    assert chosen["trial_id"] == min(worth, key=worth.get) and chosen["value"] == pytest.approx(min(worth.values()))
    assert parent_metrics["best_val_loss"] == pytest.approx(min(worth.values()))
    assert f"(trial {chosen['trial_id']}, epoch {chosen['epoch']} of" in r.output
    best_child = next(c for c in children if tags(c)["candle_ray.trial_id"] == chosen["trial_id"])
    assert f"best trial's MLflow run {best_child['info']['run_id']}" in r.output
    assert "predict with: candle-ray predict asha4 --data ROWS.csv" in r.output
    files = {f["path"] for f in rest(mlflow_server, f"artifacts/list?run_id={parents[0]['info']['run_id']}")["files"]}
    assert {"results.csv", "best_config.json", "report"} <= files
    pictures = {f["path"] for f in rest(mlflow_server, f"artifacts/list?run_id={parents[0]['info']['run_id']}"
                                                       f"&path=report")["files"]}
    assert {"report/learning_curves.png", "report/parallel_coordinates.png", "report/report.html"} <= pictures
    # every trial, stopped early or not, holds its weights as an MLflow model that predicts (no checkpoints/
    # copy beside it); the best one's is the sweep's model, not logged again
    assert f"MLflow model: runs:/{best_child['info']['run_id']}/model" in r.output
    stopped = next(c for c in children if tags(c)["candle_ray.trial_status"] == "stopped early")
    for child in children:
        listed = rest(mlflow_server, f"artifacts/list?run_id={child['info']['run_id']}&path=model")["files"]
        assert "model/MLmodel" in {f["path"] for f in listed}, child["info"]["run_id"]
        stored = rest(mlflow_server, f"artifacts/list?run_id={child['info']['run_id']}")["files"]
        assert "checkpoints" not in {f["path"] for f in stored}, stored
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{stopped['info']['run_id']}/model",
                                                dst_path=str(workdir / "stopped"), tracking_uri=mlflow_server)
    model = mlflow.pyfunc.load_model(local)
    predicted = model.predict(model.metadata.load_input_example(local))
    assert len(predicted) >= 1 and {"prediction", "probability"} <= set(predicted.columns), predicted.columns


def test_pbt_clones_weights_between_trials(ray_cluster, workdir):
    # NT3's smoke space (optimizer, dropout, learning rate) spreads the scores; 4 trials run at once (0.5 CPU
    # each) for 18 epochs, so that their epochs overlap and PBT has a population to rank. (PBT ranks only
    # unfinished trials: with 12 epochs of 0.1 s, a loaded suite run once saw every trial finish alone.)
    # --keep-checkpoints 1: a PBT sweep keeps every donor's weights while it runs and drops the rest at its end.
    r = tune(ROOT / "experiments" / "nt3.py", "--smoke", "--num-samples", 4, "--scheduler", "pbt",
             "--set", "epochs=18", "--cpus-per-worker", 0.5, "--seed", 1, "--name", "pbt", "--keep-checkpoints", 1)
    assert r.exit_code == 0, r.output
    assert "4 completed, 0 failed" in r.output  # no clone found its donor's checkpoint gone
    trials = workdir / "candle-ray-sweeps" / "pbt" / "trials"
    [kept] = [d for d in trials.iterdir() if any((d / "checkpoints").glob("*.pt"))]
    # Once every trial has ended, nothing clones: the kept trial's best epoch alone, without the optimizer's
    # state, and no trial's copies in Tune's folders
    assert len(list((kept / "checkpoints").glob("*.pt"))) == 1
    assert "optimizer" not in checkpoint.load(kept / "checkpoints", "best")
    assert not list((workdir / "candle-ray-sweeps" / "pbt").glob("*/checkpoint_*"))
    restores = [json.loads(line) | {"trial": path.parent.name}
                for path in (workdir / "candle-ray-sweeps" / "pbt" / "trials").glob("*/restores.jsonl")
                for line in path.read_text().splitlines()]
    cloned = [r for r in restores if r["from_trial"] != r["trial"]]
    assert cloned, restores  # a trial continued from another trial's checkpoint...
    assert all(r["epoch"] >= 1 for r in cloned)  # ...holding weights trained for some epochs


def test_failing_trial_is_recorded_and_search_goes_on(ray_cluster, workdir, tmp_path):
    exp = tmp_path / "nan_lr.py"
    exp.write_text(textwrap.dedent(f"""
        import importlib.util
        from dataclasses import replace
        from ray import tune
        spec = importlib.util.spec_from_file_location("tiny", {str(TINY)!r})
        tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)
        experiment = replace(tiny.experiment, name="nan_lr",
                             search_space={{"learning_rate": tune.choice([0.01, 1e12])}})
    """))
    r = tune(exp, "--smoke", "--search", "grid", "--scheduler", "fifo", "--max-failures", 0, "--name", "nan")
    assert r.exit_code == 0, r.output  # one trial succeeded
    assert "1 completed, 1 failed" in r.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nan_lr").experiment_id])
    failed = [run for run in runs if run.info.status == "FAILED"]
    assert len(failed) == 1 and "non-finite loss" in failed[0].data.tags["candle_ray.error"]
    assert float(failed[0].data.params["learning_rate"]) == 1e12


def test_resume_after_ctrl_c(ray_cluster, workdir):
    """Ctrl-C of the sweep driver mid-trial, then `--resume` (test_faults.py kills the driver with kill -9
    on two nodes)."""
    import ray
    from mlflow.tracking import MlflowClient

    # A checkpoint handed to Tune every epoch: the trial's `last.json` then says how far it got (at the default
    # pace it names the epochs handed over; test_faults.py's kill -9 resumes a sweep at a 2 s pace).
    args = ["tune", str(TINY), "--smoke", "--num-samples", "3", "--max-concurrent", "1", "--scheduler", "fifo",
            "--set", "epochs=25", "--set", "batch_size=4", "--checkpoint-every", "0", "--name", "killed"]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([str(Path(sys.executable).parent / "candle-ray"), *args], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    deadline, killed_mid_trial = time.monotonic() + 240, False
    sweep_file = workdir / "candle-ray-sweeps" / "killed" / "sweep.json"
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
        if not sweep_file.exists():  # the driver has not set up its MLflow store yet: don't race it
            continue
        try:
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("tiny_nt3")
            runs = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''") if exp else []
        except Exception:
            continue
        finished = [r for r in runs if r.info.status == "FINISHED"]
        # Mid-trial by the trial's own files: MLflow's view lags the trials (its calls queue behind each finished
        # trial's model), and a trial it still shows RUNNING may have ended already.
        running = [r for r in runs if r.info.status == "RUNNING" and 3 <= _epoch_reached(r) <= 20]
        if finished and running:
            os.killpg(driver.pid, signal.SIGINT)  # as the terminal signals the process group
            killed_mid_trial = True
            break
    output = driver.communicate(timeout=120)[0].decode()
    assert killed_mid_trial, output[-3000:]
    # A graceful stop says how to go on, and leaves nothing RUNNING.
    assert driver.returncode == 1 and "--resume --name killed" in output, output[-3000:]
    assert not MlflowClient(uri).search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    before = {r.info.run_id: len(MlflowClient(uri).get_metric_history(r.info.run_id, "loss"))
              for r in MlflowClient(uri).search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")}

    r = CliRunner().invoke(main, args + ["--resume"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "3 trials: 3 completed" in r.output
    client = MlflowClient(uri)
    runs = client.search_runs([exp.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)  # none left RUNNING
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, 26)), steps  # every epoch exactly once
        if child.info.run_id in before:  # finished before the kill: not rerun
            assert len(steps) == before[child.info.run_id] == 25
    restores = [json.loads(line) for p in (workdir / "candle-ray-sweeps" / "killed" / "trials").glob("*/restores.jsonl")
                for line in p.read_text().splitlines()]
    assert any(r["epoch"] and r["epoch"] >= 1 for r in restores)  # the cut trial continued from its checkpoint


def _epoch_reached(run) -> int:
    """The newest epoch whose checkpoint a trial has written (its `checkpoints/last.json`), 0 before its first."""
    last = Path(run.data.tags.get("candle_ray.run_dir", "")) / "checkpoints" / "last.json"
    try:
        return int(json.loads(last.read_text())["epoch"])
    except (OSError, ValueError, KeyError):  # not written yet, or being renamed into place
        return 0


def test_hyperband_pauses_and_resumes_trials_from_their_newest_epoch(ray_cluster, workdir):
    """Hyperband pauses trials at its milestones (every trial exists from the start, so its brackets
    fill); a resumed trial continues from the epoch it reached: its checkpoint is handed over each
    epoch whatever --checkpoint-every says, and MLflow gets every epoch once."""
    from mlflow.tracking import MlflowClient

    r = tune(TINY, "--smoke", "--num-samples", 9, "--scheduler", "hyperband", "--name", "hb", "--set", "epochs=6",
             "--grace-period", 1, "--checkpoint-every", 1000, "--no-baseline")
    assert r.exit_code == 0, r.output
    assert "9 trials:" in r.output and "stopped early" in r.output
    restores = [json.loads(line) for path in Path("candle-ray-sweeps/hb/trials").glob("*/restores.jsonl")
                for line in path.read_text().splitlines()]
    assert restores, "hyperband paused no trial"
    for restore in restores:  # resumed from its own newest epoch: the milestone (2 epochs) it paused at
        assert restore["epoch"] == 2 and restore["from_trial"] in r.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny_nt3")
    children = client.search_runs([exp.experiment_id], "tags.`candle_ray.sweep` = 'hb' and tags.`candle_ray.trial_id` != ''")
    assert len(children) == 9
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, len(steps) + 1))


def test_optuna_search_with_median_stopping(ray_cluster, workdir):
    """TPE proposes every trial (list-valued choices included) and the median rule follows each trial's
    best epoch; the record and results.csv agree on what ran. The finished sweep then grows by two trials
    (`--resume --num-samples 7`), and a GP sweep is warm-started from it (`--warm-start`). Throughout, only
    the 2 best finished trials keep their weights (`--keep-checkpoints 2`), as plain checkpoints
    (`--no-model-per-trial`) but for the best trial's, which the sweep's model holds."""
    r = tune(TINY, "--smoke", "--num-samples", 5, "--search", "optuna", "--scheduler", "median", "--name", "tpe",
             "--set", "epochs=4", "--grace-period", 1, "--seed", 5, "--no-baseline", "--keep-checkpoints", 2,
             "--no-model-per-trial")
    assert r.exit_code == 0, r.output
    assert "5 trials:" in r.output and "0 failed" in r.output
    record = json.loads(Path("candle-ray-sweeps/tpe/sweep.json").read_text())
    assert (record["sweep"]["searcher"], record["sweep"]["scheduler"]) == ("optuna", "median")
    with open("candle-ray-sweeps/tpe/results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(row["status"] in ("completed", "stopped early") for row in rows)
    rates = [float(row["config.learning_rate"]) for row in rows]
    assert len(set(rates)) == 5 and all(1e-3 <= lr <= 1e-1 for lr in rates)
    assert_two_best_keep_weights(rows, workdir)

    # Grown to 7 trials: the 5 stay as they were, 2 more under the same MLflow parent, one child each.
    r = tune(TINY, "--name", "tpe", "--resume", "--num-samples", 7)
    assert r.exit_code == 0, r.output
    assert "growing sweep tpe from 5 to 7 trials" in r.output and "7 trials:" in r.output, r.output
    assert json.loads(Path("candle-ray-sweeps/tpe/sweep.json").read_text())["sweep"]["num_samples"] == 7
    with open("candle-ray-sweeps/tpe/results.csv") as f:
        grown = {row["trial_id"]: row for row in csv.DictReader(f)}
    assert len(grown) == 7 and all(grown[row["trial_id"]]["epochs"] == row["epochs"] for row in rows)
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny_nt3").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == record["parent_run_id"]
    assert sorted(run.data.tags["candle_ray.trial_id"] for run in runs if run not in parents) == sorted(grown)
    assert_two_best_keep_weights(list(grown.values()), workdir)
    data = next(p for p in sorted((workdir / "cache" / "synthetic").rglob("*.csv")) if "test" in p.name)
    r = CliRunner().invoke(main, ["predict", "tpe", "--data", str(data), "--out", "p.tsv", "--top", 3])
    assert r.exit_code == 2 and "kept the weights of its 2 best trials" in r.output, r.output
    r = tune(TINY, "--name", "tpe", "--resume", "--num-samples", 3)
    assert r.exit_code == 2 and "a sweep cannot shrink" in r.output, r.output

    # A new GP sweep starts from those 7 evaluated trials.
    r = tune(TINY, "--smoke", "--num-samples", 2, "--search", "gp", "--scheduler", "fifo", "--name", "warm",
             "--set", "epochs=4", "--warm-start", "tpe", "--no-baseline")
    assert r.exit_code == 0, r.output
    finished = sum(row["status"] in ("completed", "stopped early") for row in grown.values())
    assert f"warm start: {finished} finished trials of tpe given to the gp searcher" in r.output, r.output
    assert json.loads(Path("candle-ray-sweeps/warm/sweep.json").read_text())["warm_start"] == \
        {"sweeps": ["tpe"], "points": finished}


def assert_two_best_keep_weights(rows: list[dict], workdir: Path) -> None:
    """The sweep's 2 best trials (results.csv is ranked) keep their weights in the trial folder and in MLflow
    (the best as the sweep's model, not also as checkpoints); the others' are gone, and their runs say so.
    No finished trial keeps the checkpoints it handed Tune: its weights are logged."""
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    sweep = workdir / "candle-ray-sweeps" / "tpe"
    runs = {run.data.tags.get("candle_ray.trial_id"): run for run in
            client.search_runs([client.get_experiment_by_name("tiny_nt3").experiment_id], "tags.`candle_ray.sweep` = 'tpe'")}
    for place, row in enumerate(rows):
        trial, kept = row["trial_id"], place < 2
        assert (sweep / "trials" / trial / "checkpoints").exists() == kept, (place, row)
        assert not any((sweep / trial).glob("checkpoint_*")), (place, row)
        stored = {f.path for f in client.list_artifacts(runs[trial].info.run_id)}
        assert bool(stored & {"model", "checkpoints"}) == kept, (place, row, stored)
        assert place or ("model" in stored and "checkpoints" not in stored), stored
        assert runs[trial].data.tags.get("candle_ray.weights", "").startswith("dropped") == (not kept)
        assert (sweep / "trials" / trial / "ranks").exists()  # the rest of its record stays


def test_a_time_budget_ends_the_sweep_and_a_resume_runs_the_trials_it_left(ray_cluster, workdir):
    """--time-budget: past the deadline no trial starts and the running ones stop at their next epoch through
    Tune's ordinary stop, so each trial's MLflow run ends and the searcher frees its slots; the sweep ends
    as a finished one (its model logged), and `--resume` runs trials it left, under its own budget."""
    def ranked():
        with open("candle-ray-sweeps/budget/results.csv") as f:
            return list(csv.DictReader(f))

    r = tune(TINY, "--smoke", "--num-samples", 6, "--search", "optuna", "--scheduler", "fifo", "--name", "budget",
             "--set", "epochs=400", "--time-budget", "5s", "--no-baseline")
    assert r.exit_code == 0, r.output
    first = ranked()
    assert 0 < len(first) < 6 and all(row["status"] == "stopped early" for row in first), first
    assert f"time budget 5s reached: {len(first)} of 6 trials started" in r.output, r.output
    assert f"--resume --name budget runs the other {6 - len(first)}" in r.output and "MLflow model: runs:/" in r.output
    r = tune(TINY, "--name", "budget", "--resume", "--time-budget", "8s")
    assert r.exit_code == 0, r.output
    rows = ranked()
    assert len(first) < len(rows) <= 6 and {row["trial_id"] for row in first} < {row["trial_id"] for row in rows}
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny_nt3").experiment_id],
                              "tags.`candle_ray.sweep` = 'budget'")
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(runs) == len(children) + 1 and all(run.info.status == "FINISHED" for run in runs)
    parent = next(run for run in runs if run not in children)
    assert parent.data.tags["candle_ray.time_budget"] == "8s, reached", parent.data.tags
    listed = CliRunner().invoke(main, ["sweeps"])
    line = next(line for line in listed.output.splitlines() if line.startswith("budget "))
    assert line.split()[1:3] == ["sweep", "tiny_nt3"] and "optuna/fifo" in line, line
    assert f"{len(rows)}/6" in line and "finished" in line and f"val_loss {float(rows[0]['val_loss']):.4g}" in line, line
    assert sorted(run.data.tags["candle_ray.trial_id"] for run in children) == sorted(row["trial_id"] for row in rows)


def test_autoscale_runs_more_trials_than_fit_now(ray_cluster, workdir):
    """--autoscale: 3 trials at once on a 2-CPU cluster; the third waits for resources instead of being capped."""
    r = tune(TINY, "--smoke", "--num-samples", 3, "--scheduler", "fifo", "--name", "grow", "--autoscale",
             "--max-concurrent", 3, "--set", "epochs=2")
    assert r.exit_code == 0, r.output
    assert "up to 3 at once" in r.output and "3 trials: 3 completed" in r.output
    r = tune(TINY, "--smoke", "--autoscale", "--name", "grow2")
    assert r.exit_code == 2 and "--autoscale needs --max-concurrent" in r.output


def test_a_conditional_key_is_searched_only_where_its_condition_holds(ray_cluster, workdir):
    """momentum is searched in sgd trials only (TPE asks for it there); adam trials train with the default
    momentum and show none; an ensemble of the two best keeps each member's own."""
    from candle_ray.predict import load_member

    cond = ROOT / "tests" / "support" / "cond_nt3.py"
    r = tune(cond, "--smoke", "--num-samples", 4, "--search", "optuna", "--scheduler", "fifo", "--name", "cond",
             "--set", "epochs=1", "--seed", 1, "--no-baseline")
    assert r.exit_code == 0, r.output
    with open("candle-ray-sweeps/cond/results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["config.optimizer"] for row in rows} == {"adam", "sgd"}, rows
    for row in rows:
        trained = load_member(Path("candle-ray-sweeps/cond/trials") / row["trial_id"] / "checkpoints").config
        if row["config.optimizer"] == "sgd":
            assert 0.5 <= float(row["config.momentum"]) <= 0.99 and trained["momentum"] == float(row["config.momentum"])
        else:
            assert row["config.momentum"] == "" and trained["momentum"] == 0.0  # nt3's default
    r = CliRunner().invoke(main, ["ensemble", str(cond), "--from-sweep", "cond", "--top", 4, "--name", "cond-all",
                                  "--no-baseline"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with open("candle-ray-sweeps/cond-all/results.csv") as f:
        members = {(row["config.optimizer"], row["config.momentum"]) for row in csv.DictReader(f)}
    assert members == {(row["config.optimizer"], row["config.momentum"]) for row in rows}
    r = tune(cond, "--smoke", "--search", "gp", "--name", "cond-gp")
    assert r.exit_code == 2 and "--search gp searches every key in every trial, and momentum" in r.output, r.output


def test_a_200_trial_sweep_loses_no_trial(ray_cluster, workdir):
    """Every one of 200 one-epoch trials ends with exactly one MLflow child run and one results.csv row, which
    names that run; only the kept trials hold weights. (bench/scale.py measures the costs; nothing here is timed.)"""
    from mlflow.tracking import MlflowClient

    r = tune(TINY, "--smoke", "--num-samples", 200, "--scheduler", "fifo", "--set", "epochs=1", "--name", "many",
             "--no-baseline", "--keep-checkpoints", 3)
    assert r.exit_code == 0, r.output
    assert "200 trials: 200 completed, 0 failed" in r.output
    with open(workdir / "candle-ray-sweeps" / "many" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny_nt3")
    runs = client.search_runs([exp.experiment_id], "tags.`candle_ray.sweep` = 'many'", max_results=1000)
    children = {run.data.tags["candle_ray.trial_id"]: run for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert len(runs) == 201 and len(children) == 200 and len(rows) == 200
    assert {row["trial_id"]: row["run_id"] for row in rows} == {t: run.info.run_id for t, run in children.items()}
    assert all(run.info.status == "FINISHED" and "best_val_loss" in run.data.metrics for run in children.values())
    trials = workdir / "candle-ray-sweeps" / "many" / "trials"
    kept = {d.name for d in trials.iterdir() if any((d / "checkpoints").glob("*.pt"))}
    value = {row["trial_id"]: float(row["val_loss"]) for row in rows}  # results.csv ranks by the best epoch
    assert len(kept) == 3 and max(value[t] for t in kept) <= float(rows[2]["val_loss"])  # the 3 best (ties aside)
