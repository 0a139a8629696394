"""CANDLE's learning-rate warm-up and cyclic rate (candle_ray.lr_schedule), against values worked by hand from
CANDLE's own formulas (uno_baseline_keras2.warmup_scheduler, clr_keras_utils.CyclicLR.clr)."""

import pytest
import torch

from candle_ray.errors import UsageError
from candle_ray.lr_schedule import ReduceLROnPlateau, RateSchedule, cyclic_rate


def _schedule(**config):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.get("learning_rate", 0.05))
    config = {"optimizer": "sgd", "learning_rate": 0.05, **config}
    return opt, RateSchedule(opt, config, ReduceLROnPlateau(opt, patience=1))


@pytest.mark.parametrize("mode, gamma, expected", [
    # base 1, max 3, 2 steps each way: up 1 -> 3 in 2 steps, down in 2, again
    ("trng1", 1.0, [1, 2, 3, 2, 1, 2, 3, 2, 1]),
    ("trng2", 1.0, [1, 2, 3, 2, 1, 1.5, 2, 1.5, 1]),  # the second cycle's height halved
    # the height shrunk by gamma ** steps: 1 + (the triangle's height above base) x 0.5 ** s
    ("exp", 0.5, [1, 1 + 1 * 0.5, 1 + 2 * 0.25, 1 + 1 * 0.125, 1, 1 + 1 * 0.5 ** 5, 1 + 2 * 0.5 ** 6,
                  1 + 1 * 0.5 ** 7, 1]),
])
def test_cyclic_rate_follows_candles_triangle(mode, gamma, expected):
    assert [cyclic_rate(s, mode, 1.0, 3.0, gamma, 2) for s in range(9)] == pytest.approx(expected)


def test_warmup_goes_from_the_optimizers_default_to_the_learning_rate_in_five_epochs():
    opt, schedule = _schedule(warmup_lr=True)  # sgd's Keras default 0.01 -> 0.05
    rates = []
    for epoch in range(1, 9):
        schedule.begin_epoch(epoch)
        rates.append(opt.param_groups[0]["lr"])
        opt.param_groups[0]["lr"] = 0.02 if epoch == 7 else opt.param_groups[0]["lr"]  # a plateau's cut stays
    assert rates == pytest.approx([0.01, 0.018, 0.026, 0.034, 0.042, 0.05, 0.05, 0.02])
    opt, schedule = _schedule(warmup_lr=True, base_lr=0.03)
    schedule.begin_epoch(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.03)


def test_the_cyclic_rate_moves_every_step_turns_the_plateau_off_and_resumes_its_count():
    keys = dict(clr_flag=True, clr_mode="trng1", clr_base_lr=1.0, clr_max_lr=3.0, clr_step_size=2)
    opt, schedule = _schedule(**keys)
    schedule.begin_epoch(1)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        schedule.after_step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [1, 2, 3, 2]
    for value in (1.0, 2.0, 3.0):
        schedule.end_epoch(value)  # worse each time: a plateau with patience 1 would have cut the rate
    assert opt.param_groups[0]["lr"] == 2 and schedule.plateau.wait == 0
    opt2, resumed = _schedule(**keys)
    resumed.load_state_dict(schedule.state_dict())
    resumed.begin_epoch(2)
    assert opt2.param_groups[0]["lr"] == 2 and resumed.after_step is not None
    resumed.after_step()
    assert opt2.param_groups[0]["lr"] == 1
    assert _schedule()[1].after_step is None  # no cyclic rate: nothing runs per step


def test_an_older_checkpoint_without_a_step_count_loads():
    _, schedule = _schedule(clr_flag=True)
    schedule.load_state_dict({"best": 1.0, "wait": 0, "cooldown_counter": 0})
    assert schedule.steps == 0


@pytest.mark.parametrize("keys, message", [
    (dict(clr_flag=True, warmup_lr=True), "clr_flag and warmup_lr cannot both be on"),
    (dict(clr_flag=True, clr_base_lr=0.01, clr_max_lr=0.001), "clr_base_lr=0.01 is above clr_max_lr=0.001"),
])
def test_schedule_keys_that_contradict_each_other_are_refused(keys, message):
    with pytest.raises(UsageError, match=message):
        _schedule(**keys)


def test_a_search_over_a_key_whose_flag_is_off_is_refused():
    from candle_ray.experiment import check_switched_keys
    from candle_ray.lr_schedule import check_searched_schedules

    with pytest.raises(UsageError, match="varies clr_max_lr, which acts only with clr_flag on, and clr_flag is off"):
        check_switched_keys({"clr_max_lr": [0.01, 0.1], "dropout": [0.1]}, {"clr_flag": False})
    with pytest.raises(UsageError, match="varies base_lr, which acts only with warmup_lr on"):
        check_switched_keys({"base_lr": [0.01, 0.1]}, {})
    with pytest.raises(UsageError, match="varies min_abs_acc, which acts only with abstention on"):
        check_switched_keys({"min_abs_acc": [0.8, 0.9]}, {"abstention": False})
    check_switched_keys({"clr_max_lr": [0.01, 0.1]}, {"clr_flag": True})  # set on
    check_switched_keys({"base_lr": [0.01], "warmup_lr": [True, False]}, {})  # searched beside it
    with pytest.raises(UsageError, match="can draw clr_flag and warmup_lr both on"):
        check_searched_schedules({"warmup_lr": [True, False]}, {"clr_flag": True})
    check_searched_schedules({"warmup_lr": [True, False]}, {"clr_flag": False})
    with pytest.raises(UsageError, match="varies learning_rate, which the cyclic rate .* overrides"):
        check_searched_schedules({"learning_rate": [0.1, 0.01]}, {"clr_flag": True})
    check_searched_schedules({"learning_rate": [0.1, 0.01], "clr_flag": [True, False]}, {})
