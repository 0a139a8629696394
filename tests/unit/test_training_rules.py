"""Pure pieces of training: Keras' ReduceLROnPlateau, optimizers, resource planning, MLflow params."""

import pytest
import torch

from candle_ray.errors import UsageError
from candle_ray.experiment import OPTIMIZERS
from candle_ray.loop import make_optimizer
from candle_ray.lr_schedule import ReduceLROnPlateau
from candle_ray.tracking import check_uri, flatten_params
from candle_ray.job import Workers
from candle_ray.runtime import plan


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_plateau_reduces_after_patience_bad_epochs_like_keras():
    opt = _opt()
    plateau = ReduceLROnPlateau(opt, factor=0.1, patience=3, min_delta=1e-4)
    lrs = []
    for value in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        plateau.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    # epoch 1 sets best; epochs 2-4 are bad: Keras reduces at the 3rd bad epoch (wait >= patience)
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01])


def test_plateau_min_delta_is_absolute():
    opt = _opt()
    plateau = ReduceLROnPlateau(opt, factor=0.5, patience=1, min_delta=0.1)
    plateau.step(1.0)
    plateau.step(0.95)  # better, but by less than min_delta: a bad epoch
    assert opt.param_groups[0]["lr"] == 0.5


def test_plateau_state_round_trip():
    a = ReduceLROnPlateau(_opt(), patience=5)
    for v in (3.0, 2.0, 2.5):
        a.step(v)
    b = ReduceLROnPlateau(_opt(), patience=5)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"best": 2.0, "wait": 1, "cooldown_counter": 0}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_candle_optimizer_builds(name):
    opt = make_optimizer(name, [torch.nn.Parameter(torch.ones(2))], 0.01)
    assert opt.param_groups[0]["lr"] == 0.01


def test_plan_shares_cpus():
    one = plan({"CPU": 2.0}, Workers(1, 1))
    assert (one.cpus_per_worker, one.threads, one.use_gpu) == (2.0, 2, False)
    two = plan({"CPU": 2.0}, Workers(2, 2))
    assert (two.cpus_per_worker, two.threads) == (1.0, 1)
    three = plan({"CPU": 2.0}, Workers(3, 3))
    assert three.cpus_per_worker == pytest.approx(2 / 3) and three.threads == 1
    assert plan({"CPU": 7.0}, Workers(2, 2)).cpus_per_worker == 3.0  # whole CPUs once there is one each


def test_plan_gpus():
    two = plan({"CPU": 16.0, "GPU": 4.0}, Workers(2, 2))
    assert two.use_gpu and two.gpus_per_worker == 1 and two.cpus_per_worker == 8
    assert not plan({"CPU": 16.0, "GPU": 4.0}, Workers(2, 2), use_gpu=False).use_gpu
    with pytest.raises(UsageError, match=r"2 GPU workers asked for but the cluster has 1 GPU\(s\); "
                                         r"pass --workers 1 or --cpu"):
        plan({"CPU": 8.0, "GPU": 1.0}, Workers(2, 2))


def test_plan_rejects_what_cannot_fit():
    with pytest.raises(UsageError, match="2 workers x 1.5 CPUs do not fit the cluster's 2 CPUs; lower --workers"):
        plan({"CPU": 2.0}, Workers(2, 2), cpus_per_worker=1.5)
    with pytest.raises(UsageError, match="do not fit the cluster's 0 CPUs"):
        plan({}, Workers(1, 1))


def test_flat_params():
    assert flatten_params({"conv": [128, 20, 1], "lr": 0.1, "opt": {"name": "sgd"}}) == {
        "conv": "128 20 1", "lr": "0.1", "opt.name": "sgd"}


def test_file_store_uri_refused():
    with pytest.raises(UsageError, match="file store"):
        check_uri("./mlruns")
    assert check_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_mixed_precision_only_on_cuda():
    from candle_ray.loop import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("fp16", torch.device("cuda")) is torch.float16
