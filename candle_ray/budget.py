"""`tune --time-budget`: a sweep ends at a deadline its driver sets, through Tune's ordinary paths.

Tune's own time_budget_s (any Stopper.stop_all) ends the running trials behind everyone's back:
TuneController._stop_experiment_if_needed calls _schedule_trial_stop, not stop_trial, so neither the
searcher (its concurrency slots, Optuna's study) nor the callbacks (the trials' MLflow runs) hear that
they ended, and a resumed sweep's searcher waits forever for slots that never free. Here, once the
deadline has passed, the searcher proposes no more trials (it reports itself finished) and each running
trial is stopped at its next result by the per-trial stopper, as a scheduler stops one; Tune then ends
the sweep as it ends any. Tune pickles the searcher and the stopper into the sweep's state and a
restored Tuner brings those back, so they hold only the sweep's name: the deadline belongs to this
driver process, set by each command (a resumed sweep runs under its own --time-budget, or none).
"""

from __future__ import annotations

import time

from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.stopper import Stopper

# This driver process's deadlines (time.monotonic()) by sweep name, and the sweeps that reached theirs.
_DEADLINES: dict[str, float] = {}
_REACHED: set[str] = set()


def start(name: str, deadline: float | None) -> None:
    """Sweep `name` runs until `deadline` (None: no limit)."""
    _REACHED.discard(name)
    if deadline is None:
        _DEADLINES.pop(name, None)
    else:
        _DEADLINES[name] = deadline


def end(name: str) -> bool:
    """Forget the sweep's deadline; whether the sweep reached it."""
    _DEADLINES.pop(name, None)
    reached = name in _REACHED
    _REACHED.discard(name)
    return reached


def passed(name: str | None) -> bool:
    deadline = _DEADLINES.get(name)
    if deadline is None or time.monotonic() < deadline:
        return False
    _REACHED.add(name)
    return True


def left(name: str) -> str | None:
    """What the live view says of the sweep's deadline, or None without one."""
    deadline = _DEADLINES.get(name)
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    return f"{text(remaining)} of the time budget left" if remaining > 0 else "time budget reached"


def text(seconds: float) -> str:
    """90 -> "1m30s", 7200 -> "2h": a duration as a --time-budget is written."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or f"{seconds:g}s"


class TrialStopper(Stopper):
    """Stops each trial at its first result after the sweep's deadline (the end of its current epoch)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, trial_id, result) -> bool:
        return passed(self.name)

    def stop_all(self) -> bool:
        return False


class LimiterUntilDeadline(ConcurrencyLimiter):
    """A model-based searcher's concurrency limit that, after the sweep's deadline, proposes no more."""

    def __init__(self, searcher, max_concurrent: int, name: str):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.budget = name

    def suggest(self, trial_id: str):
        return Searcher.FINISHED if passed(self.budget) else super().suggest(trial_id)


class VariantsUntilDeadline(BasicVariantGenerator):
    """Random and grid search that, after the sweep's deadline, proposes no more."""

    def __init__(self, name: str, **options):
        super().__init__(**options)
        self.budget = name

    def next_trial(self):
        if passed(self.budget):
            self.set_finished()
            return None
        return super().next_trial()
