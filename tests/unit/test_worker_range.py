"""`--workers` / `--workers-per-trial`: N or an elastic MIN-MAX, with clear refusals; elastic plans."""

import pytest
from click.testing import CliRunner

from candle_ray.cli import WorkerCount, main
from candle_ray.errors import UsageError
from candle_ray.train import plan_resources, worker_range
from tests.conftest import ROOT

NT3 = str(ROOT / "experiments" / "nt3.py")


@pytest.mark.parametrize("text, expected", [("1", 1), ("4", 4), ("1-4", (1, 4)), ("2-2", 2), (" 2-3 ", (2, 3))])
def test_worker_count_parses(text, expected):
    assert WorkerCount().convert(text, None, None) == expected


@pytest.mark.parametrize("text, message", [("0", "at least 1"), ("0-4", "minimum must be at least 1"),
                                           ("4-1", "larger than the maximum"), ("many", "neither a worker count"),
                                           ("1-", "neither a worker count"), ("-3", "neither a worker count"),
                                           ("1-2-3", "neither a worker count")])
def test_worker_count_refuses(text, message):
    import click

    with pytest.raises(click.BadParameter, match=message):
        WorkerCount().convert(text, None, None)


@pytest.mark.parametrize("command, option", [("train", "--workers"), ("tune", "--workers-per-trial")])
def test_bad_range_is_a_usage_error(command, option):
    r = CliRunner().invoke(main, [command, NT3, option, "3-1"])
    assert r.exit_code == 2 and "larger than the maximum" in r.output


def test_elastic_plan():
    plan = plan_resources({"CPU": 2.0}, (1, 4))
    assert plan.elastic and plan.num_workers == (1, 4) and plan.cpus_per_worker == 1.0 and plan.describe() == "1-4 (elastic)"
    assert plan_resources({"CPU": 16.0}, (2, 4)).cpus_per_worker == 4.0  # whole CPUs, sized for the maximum
    assert not plan_resources({"CPU": 2.0}, 2).elastic
    with pytest.raises(UsageError, match="minimum of 3 workers"):
        plan_resources({"CPU": 2.0}, (3, 4))
    with pytest.raises(UsageError, match="larger than the maximum"):
        worker_range((3, 2))
    with pytest.raises(UsageError, match=">= 1"):
        worker_range((0, 2))


def test_elastic_sweep_settings_survive_a_resume_record():
    import json
    from dataclasses import asdict

    from candle_ray.search import Sweep, concurrency

    sweep = Sweep(name="s", searcher="random", scheduler="fifo", num_samples=2, workers_per_trial=(1, 4),
                  cpus_per_worker=1.0, gpus_per_worker=0, max_concurrent=1, seed=0, metric="val_loss", mode="min",
                  max_failures=1, max_epochs=3)
    assert sweep.elastic and f"{sweep.workers_per_trial}" == "1-4" and int(sweep.workers_per_trial) == 1
    again = Sweep(**json.loads(json.dumps(asdict(sweep))))
    assert again == sweep and again.elastic and again.max_workers_per_trial == 4
    assert concurrency({"CPU": 2.0}, (1, 4), 1.0, 0, None) == 2  # counted at the minimum
    with pytest.raises(UsageError):
        Sweep(**{**asdict(sweep), "workers_per_trial": 0, "max_workers_per_trial": 0})


def test_autoscaling_clusters_are_sized_by_the_request():
    from candle_ray.search import concurrency

    """`ray up` clusters start small: with --autoscale the nodes up now do not cap (or refuse) the sweep."""
    head_only = {"CPU": 2.0}
    with pytest.raises(UsageError, match="cluster has 2 CPU / 0 GPU"):
        concurrency(head_only, 1, 1.0, 1, 8)  # one GPU per worker, none up
    assert concurrency(head_only, 1, 1.0, 1, 8, autoscale=True) == 8
    assert concurrency(head_only, 1, 1.0, 0, 3) == 2  # a fixed cluster: what fits
    with pytest.raises(UsageError, match="--autoscale needs --max-concurrent"):
        concurrency(head_only, 1, 1.0, 1, None, autoscale=True)
