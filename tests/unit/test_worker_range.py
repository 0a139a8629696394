"""`--workers` / `--workers-per-trial`: one Workers type (N or an elastic MIN-MAX) with clear refusals, and
the one planner (candle_ray.runtime) that sizes train jobs and counts the trials of a sweep."""

import json

import click
import pytest
from click.testing import CliRunner

from candle_ray.cli import WorkersType, main
from candle_ray.errors import UsageError
from candle_ray.job import Job, Workers, as_job
from candle_ray.runtime import Plan, plan, trials_at_once, worker_slots
from tests.conftest import ROOT

NT3 = str(ROOT / "experiments" / "nt3.py")


@pytest.mark.parametrize("value, expected", [
    ("1", Workers(1, 1)), ("4", Workers(4, 4)), ("1-4", Workers(1, 4)), ("2-2", Workers(2, 2)),
    (" 2-3 ", Workers(2, 3)), (3, Workers(3, 3)), ((1, 4), Workers(1, 4)), (Workers(2, 5), Workers(2, 5))])
def test_workers_parse(value, expected):
    assert Workers.parse(value) == expected


@pytest.mark.parametrize("value, message", [
    ("0", "0 workers: need at least 1"), (0, "0 workers: need at least 1"),
    ("0-4", "0-4: the minimum must be at least 1 worker"),
    ("4-1", r"4-1: the minimum \(4\) is larger than the maximum \(1\)"), ((3, 2), "larger than the maximum"),
    ("many", "'many' is neither a worker count"), ("1-", "neither a worker count"), ("-3", "neither a worker count"),
    ("1-2-3", "neither a worker count"), ("1.5", "neither a worker count"), (True, "neither a worker count")])
def test_workers_parse_refuses(value, message):
    with pytest.raises(UsageError, match=message):
        Workers.parse(value)


def test_workers_are_validated_however_made():
    with pytest.raises(UsageError, match="whole number"):
        Workers(1.5, 2)
    with pytest.raises(UsageError, match="at least 1"):
        Workers(0, 0)


def test_workers_print_as_the_cli_spells_them():
    assert (str(Workers(4, 4)), str(Workers(1, 4)), f"{Workers(2, 3)} x") == ("4", "1-4", "2-3 x")
    assert Workers(1, 4).elastic and not Workers(4, 4).elastic


def test_jobs_take_plain_worker_counts():
    """Scripts and tests write a job's fields as plain values; the job holds Workers either way."""
    fields = dict(config={}, model="nt3", task="classification", model_shape={}, entry="/e", metric="val_loss",
                  mode="min")
    assert as_job({**fields, "workers": 2}).workers == Workers(2, 2)
    assert Job(**fields, workers="1-4").workers == Workers(1, 4)
    assert Job(**fields).workers == Workers(1, 1)
    with pytest.raises(UsageError, match="at least 1"):
        as_job({**fields, "workers": 0})


def test_click_type_returns_workers_and_fails_in_click_terms():
    assert WorkersType().convert("1-4", None, None) == Workers(1, 4)
    assert WorkersType().convert(1, None, None) == Workers(1, 1)  # click's default
    with pytest.raises(click.BadParameter, match="neither a worker count"):
        WorkersType().convert("many", None, None)


@pytest.mark.parametrize("command, option", [("train", "--workers"), ("tune", "--workers-per-trial")])
def test_bad_range_is_a_usage_error(command, option):
    r = CliRunner().invoke(main, [command, NT3, option, "3-1"])
    assert r.exit_code == 2 and "larger than the maximum" in r.output


def test_elastic_cv_is_refused_before_anything_starts():
    r = CliRunner().invoke(main, ["tune", NT3, "--workers-per-trial", "1-2", "--cv", "3"])
    assert r.exit_code == 2 and "elastic --workers-per-trial cannot be combined" in r.output


# ------------------------------------------------------------------------------ the planner


def test_elastic_plan():
    elastic = plan({"CPU": 2.0}, Workers(1, 4))
    assert elastic.elastic and elastic.num_workers == (1, 4) and elastic.cpus_per_worker == 1.0
    assert elastic.describe() == "1-4 (elastic)" and elastic.threads == 1
    assert plan({"CPU": 16.0}, Workers(2, 4)).cpus_per_worker == 4.0  # whole CPUs, sized for the maximum
    assert plan({"CPU": 3.0}, Workers(1, 8)).cpus_per_worker == 1.0  # at least one CPU each
    fixed = plan({"CPU": 2.0}, Workers(2, 2))
    assert not fixed.elastic and fixed.num_workers == 2 and fixed.describe() == "2"
    with pytest.raises(UsageError, match="the minimum of 3 workers x 1 CPUs does not fit the cluster's 2 CPUs"):
        plan({"CPU": 2.0}, Workers(3, 4))
    with pytest.raises(UsageError, match=r"2 GPU workers \(the minimum\) asked for but the cluster has 1 GPU"):
        plan({"CPU": 8.0, "GPU": 1.0}, Workers(2, 4))
    gpu = plan({"CPU": 8.0, "GPU": 2.0}, Workers(1, 2))
    assert gpu.use_gpu and gpu.cpus_per_worker == 4.0 and gpu.bundle == {"CPU": 4.0, "GPU": 1}


def test_worker_slots():
    assert worker_slots(8, 2, 1.0, 1) == 2  # the GPUs limit
    assert worker_slots(8, 0, 3.0, 0) == 2  # the CPUs limit; GPUs not asked for
    assert worker_slots(None, 4, 64, 1) == 4  # CPUs not declared: only the GPUs count
    assert worker_slots(None, 0, 1.0, 0) == 0  # nothing declared that a worker asks for
    assert worker_slots(2.0, 0, 0.1, 0) == 20  # no float shortfall (2 / 0.1 = 19.999...)


def test_trials_at_once_counts_trials_at_their_minimum():
    assert trials_at_once({"CPU": 2.0}, Plan.sized(Workers(1, 4), 1.0, 0), None) == 2
    assert trials_at_once({"CPU": 8.0}, Plan.sized(Workers(2, 2), 1.0, 0), None) == 4
    assert trials_at_once({"CPU": 8.0}, Plan.sized(Workers(2, 2), 1.0, 0), 3) == 3  # --max-concurrent caps
    assert trials_at_once({"CPU": 64.0, "GPU": 4.0}, Plan.sized(Workers(2, 2), 1.0, 1), None) == 2  # GPUs limit
    assert trials_at_once({"CPU": 7.0}, Plan.sized(Workers(3, 3), 1.5, 0), None) == 1  # 4 x 1.5-CPU workers fit
    with pytest.raises(UsageError, match=r"one trial needs 3 x 1 CPU but the cluster has 2 CPU / 0 GPU; "
                                         r"lower --workers-per-trial or --cpus-per-worker"):
        trials_at_once({"CPU": 2.0}, Plan.sized(Workers(3, 6), 1.0, 0), None)


def test_a_worker_never_spans_nodes():
    """Two 1-CPU nodes hold 2 CPUs but no 2-CPU worker: one worker gets the largest node's CPUs, and a
    worker larger than any node, or more workers than the nodes hold, is refused before Ray waits on it."""
    two = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert plan({"CPU": 2.0}, Workers(1, 1), nodes=two).cpus_per_worker == 1.0
    assert plan({"CPU": 2.0}, Workers(1, 1)).cpus_per_worker == 2.0  # one node of 2 CPUs
    assert plan({"CPU": 6.0}, Workers(1, 3), nodes=[{"CPU": 4.0}, {"CPU": 2.0}]).cpus_per_worker == 2.0
    with pytest.raises(UsageError, match=r"1 workers of 1.5 CPU do not fit on the cluster's 2 node\(s\): at most 0"):
        plan({"CPU": 2.0}, Workers(1, 1), cpus_per_worker=1.5, nodes=two)
    with pytest.raises(UsageError, match="at most 1 do"):
        plan({"CPU": 3.0, "GPU": 2.0}, Workers(2, 2), nodes=[{"CPU": 2.0, "GPU": 2.0}, {"CPU": 1.0}],
             cpus_per_worker=1.5)
    trial = Plan.sized(Workers(1, 1), 1.5, 0)
    assert trials_at_once({"CPU": 4.0}, trial, None, nodes=[{"CPU": 3.0}, {"CPU": 1.0}]) == 2
    assert trials_at_once({"CPU": 4.0}, trial, None) == 2
    with pytest.raises(UsageError, match="one trial needs"):
        trials_at_once({"CPU": 2.0}, trial, None, nodes=two)


def test_autoscaling_clusters_are_sized_by_the_request():
    """`ray up` clusters start small: with --autoscale the nodes up now do not cap (or refuse) the sweep."""
    head_only = {"CPU": 2.0}
    gpu_trial, cpu_trial = Plan.sized(Workers(1, 1), 1.0, 1), Plan.sized(Workers(1, 1), 1.0, 0)
    with pytest.raises(UsageError, match=r"one trial needs 1 x 1 CPU \+ 1 GPU but the cluster has 2 CPU / 0 GPU"):
        trials_at_once(head_only, gpu_trial, 8)  # one GPU per worker, none up
    assert trials_at_once(head_only, gpu_trial, 8, autoscale=True) == 8
    assert trials_at_once(head_only, cpu_trial, 3) == 2  # a fixed cluster: what fits
    with pytest.raises(UsageError, match="--autoscale needs --max-concurrent"):
        trials_at_once(head_only, gpu_trial, None, autoscale=True)


# ------------------------------------------------------------------------------ sweep.json


def _sweep(workers: Workers):
    from candle_ray.search import Sweep

    return Sweep(name="s", searcher="random", scheduler="fifo", num_samples=2, workers=workers, cpus_per_worker=1.0,
                 gpus_per_worker=0, max_concurrent=1, seed=0, metric="val_loss", mode="min", max_failures=1,
                 max_epochs=3)


@pytest.mark.parametrize("workers, recorded", [(Workers(1, 4), (1, 4)), (Workers(2, 2), (2, 0))])
def test_sweep_record_keeps_its_keys_and_survives_a_resume(workers, recorded):
    from candle_ray.search import Sweep

    sweep = _sweep(workers)
    record = json.loads(json.dumps(sweep.record()))
    assert (record["workers_per_trial"], record["max_workers_per_trial"]) == recorded and "workers" not in record
    assert all(type(record[k]) is int for k in ("workers_per_trial", "max_workers_per_trial"))
    assert Sweep.from_record(record) == sweep


def test_sweep_records_from_before_elastic_trials_resume():
    from candle_ray.search import Sweep

    record = {k: v for k, v in _sweep(Workers(2, 2)).record().items() if k != "max_workers_per_trial"}
    assert Sweep.from_record(record).workers == Workers(2, 2)
    with pytest.raises(UsageError, match="at least 1"):
        Sweep.from_record({**record, "workers_per_trial": 0})


def test_a_sweeps_trial_plan():
    trial = _sweep(Workers(1, 4)).trial_plan
    assert trial.elastic and trial.bundle == {"CPU": 1.0} and trial.threads == 1
