"""What sets the optimizer's learning rate during training: CANDLE's three schedules, pure Python.

- `ReduceLROnPlateau` (`reduce_lr`, on by default): Keras' rule, written out (see the class).
- Warm-up (`warmup_lr`, CANDLE's Uno, Combo and P1B1): the first 5 epochs go in equal steps from `base_lr` (the
  optimizer's Keras default unless set) to `learning_rate`. CANDLE's LearningRateScheduler sets the rate
  at the start of each epoch it numbers 0..5; here those are epochs 1..6.
- Cyclic learning rate (`clr_flag`, CANDLE's clr_keras_utils.CyclicLR): after every optimizer step the rate
  moves along a triangle between `clr_base_lr` and `clr_max_lr`, `clr_step_size` steps each way (CANDLE
  fixes 2,000), its height kept (`clr_mode` trng1), halved each cycle (trng2) or shrunk by `clr_gamma` per
  step (exp). It owns the rate: CANDLE refuses it together with warm-up and turns ReduceLROnPlateau off.

The epoch and step counters come from the training loop and the checkpoint, so a resumed or cloned trial
continues its schedule where it was.
"""

from __future__ import annotations

import math

from candle_ray.errors import UsageError

# The learning rate each optimizer starts from in tf.keras; CANDLE's `learning_rate=None` and warm-up's start.
KERAS_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "rmsprop": 0.001, "adagrad": 0.001, "adadelta": 0.001,
                        "adamax": 0.001, "nadam": 0.001}
WARMUP_EPOCHS = 5
CLR_MODES = ("trng1", "trng2", "exp")
# clr_keras_utils.clr_callback's defaults, for a key the config leaves out; step size as its CyclicLR fixes it.
CLR_DEFAULTS = {"clr_mode": "trng1", "clr_base_lr": 1e-4, "clr_max_lr": 1e-3, "clr_gamma": 0.999994,
                "clr_step_size": 2000}
# Keys only one schedule reads, with the flag that switches it on.
SWITCHED_BY = {"base_lr": "warmup_lr", **{key: "clr_flag" for key in CLR_DEFAULTS}}


def check_searched_schedules(space, config: dict) -> None:
    """Refuse a search that can draw the cyclic rate and warm-up together (every such trial would fail on
    check_schedule_keys), and one over learning_rate while the cyclic rate sets the rate in every trial."""
    can_be_on = {flag: flag in space or bool(config.get(flag)) for flag in ("clr_flag", "warmup_lr")}
    if all(can_be_on.values()) and ("clr_flag" in space or "warmup_lr" in space):
        raise UsageError("the search can draw clr_flag and warmup_lr both on, which CANDLE refuses (the cyclic rate "
                         "owns the learning rate); search one of them with the other off")
    if config.get("clr_flag") and "clr_flag" not in space and "learning_rate" in space:
        raise UsageError("the search space varies learning_rate, which the cyclic rate (clr_flag on in every trial) "
                         "overrides after every step; search clr_base_lr and clr_max_lr instead")


def warmup_start(config: dict) -> float:
    """Where warm-up starts: `base_lr`, or the optimizer's Keras default (CANDLE: args.base_lr or optimizer.lr)."""
    return float(config.get("base_lr") or KERAS_LEARNING_RATES[config["optimizer"]])


def check_schedule_keys(config: dict) -> None:
    """The rules between schedule keys (each key's own range is checked with the others' rules)."""
    if config.get("clr_flag") and config.get("warmup_lr"):
        raise UsageError("clr_flag and warmup_lr cannot both be on (CANDLE refuses the pair: the cyclic rate "
                         "owns the learning rate); set one of them to false")
    if config.get("clr_flag"):
        low, high = (float(config.get(k, CLR_DEFAULTS[k])) for k in ("clr_base_lr", "clr_max_lr"))
        if low > high:
            raise UsageError(f"clr_base_lr={low:g} is above clr_max_lr={high:g}: the cyclic rate runs from the "
                             f"first up to the second; swap them")


class ReduceLROnPlateau:
    """Keras' ReduceLROnPlateau (CANDLE: monitor val_loss, factor 0.1, patience 10, min_delta 1e-4).

    Keras reduces when `wait >= patience` (PyTorch's scheduler waits one epoch longer), so it is
    written out here to keep CANDLE's schedule; its state goes into checkpoints.
    """

    def __init__(self, optimizer, *, mode="min", factor=0.1, patience=10, min_delta=1e-4, cooldown=0, min_lr=0.0):
        self.optimizer, self.mode, self.factor = optimizer, mode, factor
        self.patience, self.min_delta, self.cooldown, self.min_lr = patience, min_delta, cooldown, min_lr
        self.best, self.wait, self.cooldown_counter = (math.inf if mode == "min" else -math.inf), 0, 0

    def _improved(self, value: float) -> bool:
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def step(self, value: float) -> None:
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                for group in self.optimizer.param_groups:
                    group["lr"] = max(group["lr"] * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]


def cyclic_rate(steps: int, mode: str, low: float, high: float, gamma: float, step_size: float) -> float:
    """CANDLE's CyclicLR.clr() after `steps` optimizer steps (triangle of `step_size` steps up, then down)."""
    cycle = math.floor(1 + steps / (2 * step_size))
    x = abs(steps / step_size - 2 * cycle + 1)
    scale = {"trng1": 1.0, "trng2": 1 / 2.0 ** (cycle - 1), "exp": gamma ** steps}[mode]
    return low + (high - low) * max(0.0, 1 - x) * scale


class RateSchedule:
    """The learning rate over a run: warm-up or the cyclic rate, and ReduceLROnPlateau (module docstring).

    The loop calls `begin_epoch` before each epoch, `after_step` after each optimizer step (None when no
    schedule moves the rate within an epoch) and `end_epoch` with the monitored metric.
    """

    def __init__(self, optimizer, config: dict, plateau: ReduceLROnPlateau):
        check_schedule_keys(config)  # a trial's sampled config too: a UsageError, never retried
        self.optimizer, self.plateau, self.steps = optimizer, plateau, 0
        self.warmup = (warmup_start(config), float(config["learning_rate"])) if config.get("warmup_lr") else None
        self.cyclic = None
        if config.get("clr_flag"):
            keys = {k: config.get(k, default) for k, default in CLR_DEFAULTS.items()}
            self.cyclic = (str(keys["clr_mode"]), float(keys["clr_base_lr"]), float(keys["clr_max_lr"]),
                           float(keys["clr_gamma"]), float(keys["clr_step_size"]))
        self.reduce_on_plateau = bool(config.get("reduce_lr", True)) and self.cyclic is None
        self.after_step = self._cycle if self.cyclic else None

    def _set(self, rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def begin_epoch(self, epoch: int) -> None:
        if self.cyclic:
            self._set(cyclic_rate(self.steps, *self.cyclic))  # a resumed run goes on from its step count
        elif self.warmup and epoch - 1 <= WARMUP_EPOCHS:
            (start, target), done = self.warmup, epoch - 1
            self._set((start * (WARMUP_EPOCHS - done) + target * done) / WARMUP_EPOCHS)

    def _cycle(self) -> None:
        self.steps += 1
        self._set(cyclic_rate(self.steps, *self.cyclic))

    def end_epoch(self, value: float) -> None:
        if self.reduce_on_plateau and math.isfinite(value):
            self.plateau.step(value)

    def state_dict(self) -> dict:
        return {**self.plateau.state_dict(), "clr_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state)
        self.steps = int(state.get("clr_steps", 0))  # checkpoints before the cyclic rate have no count
