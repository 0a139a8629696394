"""Survival targets and the Cox proportional-hazards measures on them. Pure PyTorch and NumPy.

A survival dataset's target is one number per row, as XGBoost's `survival:cox` codes it: the follow-up
time, positive when the event (death, relapse) was seen at that time and negated when the row was censored
(alive at its last follow-up). One float column then holds both, so survival rows go through the cache,
the feeds, DDP and the folds as a regressor's do; `encode` is the one place that writes the code and
`decode` the one that reads it. Times are strictly positive (`encode` refuses 0: its sign could not say).

The model's output is a risk score, the log hazard ratio η (higher: the event comes sooner). It is fitted
by Cox's partial likelihood with Breslow's handling of tied times, and judged by Harrell's concordance
index (the share of comparable pairs whose risks are in the right order; 0.5 is chance).
"""

from __future__ import annotations

import numpy as np


def encode(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Signed times (float32): `time` where `event` is 1, -`time` where the row is censored."""
    return np.where(np.asarray(event) > 0, time, -np.asarray(time)).astype(np.float32)


EVENT_WORDS = {"1": 1.0, "1.0": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0}


def events_of(values) -> np.ndarray:
    """An event column's values as 1.0 (seen) / 0.0 (censored), NaN for anything else (an empty cell, a word)."""
    words = np.char.lower(np.char.strip(np.asarray(values).astype(str)))
    return np.array([EVENT_WORDS.get(str(w), np.nan) for w in words], dtype=np.float64)


def decode(target):
    """(time, event) of signed times: numpy arrays for an array, tensors for a tensor (event as bool)."""
    target = target.reshape(-1)
    return abs(target), target > 0


def cox_loss(risk, target):
    """The negative log partial likelihood (Breslow) of risk scores over the rows of a batch, per event:
    each event's risk against the log-sum-exp of the risks of every row still at risk at its time (the
    batch's rows with a time at or after it). A batch without an event gives 0 (with a gradient of 0).
    Tensors in, a scalar tensor out (torch is imported here: the data side uses `encode` without it)."""
    import torch

    risk = risk.reshape(-1)
    risk = risk if risk.dtype == torch.float64 else risk.float()  # half under autocast; float64 in the baseline
    time, event = decode(target.to(risk.dtype))
    order = torch.argsort(time, descending=True)
    risk, time, event = risk[order], time[order], event[order]
    at_risk = torch.logcumsumexp(risk, 0)  # rows up to k in descending time: those with time >= time[k]...
    _, tie, counts = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
    at_risk = at_risk[(torch.cumsum(counts, 0) - 1)[tie]]  # ...and the rows tied with it, wherever they sorted
    events = event.sum()
    return -((risk - at_risk) * event).sum() / events.clamp(min=1)


def event_losses(risk: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each event's term of the negative log partial likelihood of all the rows at once (Breslow), in the
    events' row order, float64: its risk against the log-sum-exp of the risks of the rows at risk at its time."""
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    time, event = decode(np.asarray(target, dtype=np.float64))
    order = np.argsort(-time, kind="stable")
    at_risk = np.logaddexp.accumulate(risk[order])
    ordered = time[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ordered) != 0), len(ordered) - 1]  # each tie group's last row
    at_risk[:] = at_risk[last_of_tie[np.searchsorted(last_of_tie, np.arange(len(ordered)))]]
    losses = np.empty_like(risk)
    losses[order] = at_risk - risk[order]
    return losses[event]


def partial_log_likelihood(risk: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """(Breslow's log partial likelihood of all the rows at once, their number of events), in float64."""
    losses = event_losses(risk, target)
    return -float(losses.sum()), len(losses)


def risk_state(risk: np.ndarray, target: np.ndarray) -> dict:
    """What a survival model keeps of its validation rows, in its checkpoint beside its weights: the spread of
    its risks (`risk_scale`, what an ensemble divides them by) and the baseline hazard they imply
    (`baseline_hazard`, what turns a risk into survival probabilities; None without an event)."""
    return {"risk_scale": float(np.std(risk)), "baseline_hazard": baseline_hazard(risk, target)}


def baseline_hazard(risk: np.ndarray, target: np.ndarray) -> dict | None:
    """Breslow's estimate of the baseline cumulative hazard H0 from rows whose risks η are fixed: at each
    event time t, H0(t) sums, over the event times s <= t, the events at s over the sum of exp(η) of the rows
    still at risk at s. Estimated on validation rows, the risks are a model's offsets on rows it did not train
    on, so the survival probabilities exp(-H0(t) exp(η)) are calibrated there, not on an overfitted fit.
    {"times": event times ascending, "log_cumhaz": log H0 at each (logs: risks of a few units overflow exp),
    "max_time": the rows' longest follow-up}; None without an event."""
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    time, event = decode(np.asarray(target, dtype=np.float64))
    if not event.any():
        return None
    times, deaths = np.unique(time[event], return_counts=True)
    order = np.argsort(time, kind="stable")
    at_or_after = np.logaddexp.accumulate(risk[order][::-1])[::-1]  # [k]: log Σ exp(η) of rows k.. by time
    log_at_risk = at_or_after[np.searchsorted(time[order], times, side="left")]
    log_cumhaz = np.logaddexp.accumulate(np.log(deaths) - log_at_risk)
    return {"times": times.tolist(), "log_cumhaz": log_cumhaz.tolist(), "max_time": float(time.max())}


def survival_at(risk: np.ndarray, hazard: dict, times) -> np.ndarray:
    """S(t | η) = exp(-H0(t) exp(η)) of each row's risk at each of `times`: [rows, times]. H0 is a step
    function: 0 before the first event time, and its last value past the last one."""
    risk = np.asarray(risk, dtype=np.float64).reshape(-1, 1)
    step = np.searchsorted(hazard["times"], np.asarray(times, dtype=np.float64), side="right") - 1
    log_h = np.where(step >= 0, np.asarray(hazard["log_cumhaz"])[step.clip(min=0)], -np.inf)
    with np.errstate(over="ignore"):  # a risk far above the rest: exp overflows to inf, its survival to 0
        return np.exp(-np.exp(log_h + risk))


def kaplan_meier(target: np.ndarray, times) -> np.ndarray:
    """The Kaplan-Meier estimate of the share of rows without the event at each of `times` (what a
    cohort's mean predicted survival should come near); NaN past the rows' longest follow-up."""
    time, event = decode(np.asarray(target, dtype=np.float64))
    times = np.asarray(times, dtype=np.float64)
    return np.where(times > time.max(), np.nan, _step_value(*_product_limit(time, event), times, "right"))


def _product_limit(time: np.ndarray, counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier's product-limit curve of the rows where `counted` (the events; or the censorings, for the
    chance of still being followed) among all rows: (its step times, its value from each on)."""
    steps, counts = np.unique(time[counted], return_counts=True)
    return steps, np.cumprod(1 - counts / (len(time) - np.searchsorted(np.sort(time), steps)))


def _step_value(steps: np.ndarray, curve: np.ndarray, at, side: str) -> np.ndarray:
    """A step curve's value at `at` (side "right": at it; "left": just before it); 1 before its first step."""
    k = np.searchsorted(steps, at, side=side) - 1
    return np.where(k >= 0, curve[np.clip(k, 0, None)] if len(curve) else 1.0, 1.0)


def brier_score(target: np.ndarray, survival: np.ndarray, time_point: float) -> float:
    """Graf's Brier score at `time_point` of predicted probabilities of no event by then (one per row): the mean
    squared gap to what happened (0 for a row whose event came by then, 1 for one still followed after it),
    each row weighted by the inverse probability of still being followed (Kaplan-Meier of the censoring), so
    the rows censored before `time_point`, whose outcome is unknown, count through the others. 0 is perfect;
    predicting every row the cohort's Kaplan-Meier is the reference to beat."""
    time, event = decode(np.asarray(target, dtype=np.float64))
    survival = np.asarray(survival, dtype=np.float64).reshape(-1)
    followed = _product_limit(time, ~event)  # Kaplan-Meier of the censoring
    died, alive = event & (time <= time_point), time > time_point
    scores = np.zeros(len(time))
    scores[died] = survival[died] ** 2 / _step_value(*followed, time[died], "left")
    if alive.any():
        scores[alive] = (1 - survival[alive]) ** 2 / _step_value(*followed, time_point, "right")
    return float(scores.mean())


def val_metrics(risk: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """A survival model's validation metrics (the training loop's, the baseline's, an ensemble's): val_loss, the
    negative log partial likelihood per event of all the rows at once (NaN without an event), val_cindex, and
    val_risk_std, the spread of its risks (what an ensemble divides each member's by: candle_ray.predict)."""
    log_likelihood, events = partial_log_likelihood(risk, target)
    return {"val_loss": -log_likelihood / events if events else float("nan"), "val_cindex": concordance(risk, target),
            "val_risk_std": float(np.std(risk))}


def concordance(risk: np.ndarray, target: np.ndarray) -> float:
    """Harrell's C: of the pairs whose order is known (one row's event comes before the other's time), the
    share where the earlier row has the higher risk, a tie in risk counting one half; NaN without such a pair."""
    right, pairs = event_pairs(risk, target)
    return float(right.sum() / pairs.sum()) if pairs.sum() else float("nan")


def event_pairs(risk: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event (in the events' row order): how many of the rows at risk after its time it outranks (a tie
    counting one half), and how many there are. Exact, in O(n log n): rows are taken in descending time, and
    each event is compared with the rows of later times through a Fenwick tree of risk ranks."""
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    time, event = decode(np.asarray(target, dtype=np.float64))
    values, rank = np.unique(risk, return_inverse=True)
    tree = np.zeros(len(values) + 1, dtype=np.int64)
    order = np.argsort(-time, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(time[order]) != 0) + 1, len(order)]
    right, pairs = np.zeros(len(risk)), np.zeros(len(risk))
    seen = 0
    for a, b in zip(starts[:-1], starts[1:]):  # one group of equal times: compared with later ones, then added
        group = order[a:b]
        for i in group[event[group]]:
            below, upto = _prefix(tree, rank[i]), _prefix(tree, rank[i] + 1)
            right[i], pairs[i] = below + (upto - below) / 2, seen
        for i in group:
            _add(tree, rank[i] + 1)
        seen += len(group)
    return right[event], pairs[event]


def _prefix(tree: np.ndarray, k: int) -> int:
    """How many added ranks are below k (Fenwick tree, 1-based)."""
    total = 0
    while k > 0:
        total += int(tree[k])
        k -= k & -k
    return total


def _add(tree: np.ndarray, k: int) -> None:
    while k < len(tree):
        tree[k] += 1
        k += k & -k
