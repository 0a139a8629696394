"""Predictions with uncertainty from checkpoints: one model, MC dropout, or an ensemble of members.

Pure torch + numpy (no Ray, no MLflow: the CLI turns MLflow run ids into checkpoint files first).
Raw outputs become predictions according to the head a model was trained with (its checkpoint's
config): softmax probabilities for classifiers (the abstain unit split off when `abstention` is
set), (mean, σ²) for heteroscedastic heads (`loss: het`, CANDLE's interleaved [μ, log σ²]),
(q50, q10, q90) for quantile heads (`loss: qtl`), the output itself for plain regressors; a multi-task
model (P3B1) is one classifier per task, each pooled, scored and calibrated on its own.

Uncertainty: members (an ensemble) and stochastic passes (MC dropout) are pooled into one sample of
predictions per row; `uq.ensemble_moments` splits the spread into aleatoric (het heads; for qtl heads
the pooled inter-decile range's) and epistemic (between members and passes) parts. Members weigh the
same, except one whose checkpoint holds a `pool_share` (an ensemble's linear baseline,
candle_ray.baseline): it takes that share of the pooled output, and the others split the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from candle_ray import checkpoint, uq
from candle_ray.errors import UsageError


@dataclass
class Member:
    model: nn.Module
    state: dict
    source: str

    @property
    def config(self) -> dict:
        return self.state["config"]

    @property
    def data(self) -> dict:
        return self.state.get("data") or {}

    @property
    def objective(self) -> dict:
        """What its training objective kept (a survival model's cox.risk_state: risk_scale, baseline_hazard)."""
        return self.state.get("objective") or {}

    @property
    def share(self) -> float | None:
        """The share of a pooled output this member takes (an ensemble's linear baseline), or None (equal parts)."""
        return self.state.get("pool_share")

    @property
    def head(self) -> str:
        """classification | abstention | regression | het | qtl | multitask."""
        if isinstance(self.data.get("num_classes"), list):
            return "multitask"
        kind = pooled_head(self.config)
        if self.data.get("task") == "classification":
            return "abstention" if kind == "abstention" else "classification"
        return kind if kind in ("het", "qtl") else "regression"

    def in_target_units(self, raw: np.ndarray) -> np.ndarray:
        """A regressor's raw outputs (standardised targets when it was trained so) in the targets' units."""
        if self.head not in ("regression", "het", "qtl"):
            return raw
        from candle_ray.objectives import to_original

        return to_original(raw, self.data.get("target_scaler"), {"het": 2, "qtl": 3}.get(self.head, 1))


def load_member(path, kind: str = "best") -> Member:
    """A checkpoint rebuilt as an eval-mode model, with the description of the data it was trained on."""
    model, state = checkpoint.rebuild(path, kind)
    if not state.get("data"):
        raise UsageError(f"checkpoint {path} does not describe its training data (written by an older candle-ray); "
                         f"retrain it to predict from files")
    return Member(model=model, state=state, source=str(checkpoint.resolve(path, kind)))


def pooled_head(config: dict) -> str:
    """What decides, from a configuration alone, whether members' outputs pool: an abstention unit, het or qtl
    heads, or a plain output (a classifier's logits, an mse or mae regressor's value)."""
    if str(config.get("abstention")).lower() == "true":
        return "abstention"
    loss = str(config.get("loss", "mse")).lower()
    return loss if loss in ("het", "qtl") else "plain"


def check_compatible(members: list[Member]) -> None:
    """Members of one ensemble must read the same features and predict the same thing."""
    first = members[0]
    for other in members[1:]:
        for key in ("fingerprint", "num_features", "task"):
            if other.data.get(key) != first.data.get(key):
                raise UsageError(f"ensemble members disagree on {key}: {first.source} has {first.data.get(key)!r}, "
                                 f"{other.source} has {other.data.get(key)!r}; combine models trained on the same data")
        if other.head != first.head:
            raise UsageError(f"ensemble members have different heads ({first.head} vs {other.head}), whose outputs "
                             f"do not pool; combine models trained with the same loss (a sweep's --top K: fewer)")


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def enable_mc_dropout(model: nn.Module, name: str) -> None:
    """Dropout on at inference (BatchNorm stays in eval mode); UsageError for a model without dropout."""
    layers = dropout_modules(model)
    if not layers:
        raise UsageError(f"--mc-dropout needs a model trained with dropout > 0, but {name} has no active dropout "
                         f"layer (dropout={model_dropout(model)}); retrain with --set dropout=0.1 or leave out --mc-dropout")
    for layer in layers:
        layer.train()


def model_dropout(model: nn.Module) -> float:
    return max((m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)), default=0.0)


def raw_outputs(model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]], *, passes: int = 1,
                device: torch.device | str = "cpu", seed: int = 0) -> np.ndarray | list[np.ndarray]:
    """Outputs of `passes` forward passes over every batch: [passes, rows, outputs] (a list per task for
    multi-task models). Dropout randomness is seeded, so a prediction can be reproduced."""
    device = torch.device(device)
    model = model.to(device)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    per_pass = []
    try:
        with torch.no_grad():
            for _ in range(passes):
                chunks = []
                for xb in batches():
                    out = model(xb.to(device))
                    chunks.append([o.float().cpu() for o in out] if isinstance(out, (tuple, list)) else out.float().cpu())
                if isinstance(chunks[0], list):
                    per_pass.append([torch.cat([c[t] for c in chunks]).numpy() for t in range(len(chunks[0]))])
                else:
                    per_pass.append(torch.cat(chunks).numpy())
    finally:
        torch.set_rng_state(generator_state)
    if isinstance(per_pass[0], list):
        return [np.stack([p[t] for p in per_pass]) for t in range(len(per_pass[0]))]
    return np.stack(per_pass)


def array_batches(X: np.ndarray, batch: int = 1024) -> Callable[[], Iterable[torch.Tensor]]:
    def batches():
        from candle_ray.data.feed import as_tensor  # zero-copy: X may be a read-only view of the caller's frame

        for start in range(0, len(X), batch):
            yield as_tensor(np.ascontiguousarray(X[start:start + batch], dtype=np.float32))
    return batches


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Prediction:
    """Pooled predictions of one or more members for `rows` rows.

    classification: probs [rows, classes] (mean over members and passes), prob_std (their spread),
    abstain [rows] (probability of the abstain unit) or None.
    regression: mean [rows], aleatoric (het heads' σ², quantile heads' from q10..q90) and epistemic variances
    [rows]; q_low/q_high for quantile heads.
    samples: every member's (and pass's) point prediction [samples, rows] or probs [samples, rows, classes].
    names: each sample's column name in `table(member_columns=True)` [default member_0, member_1, ...].
    survival: a survival model's probability of no event by each of `times` [rows, times], when asked for.
    """

    head: str
    samples: np.ndarray
    probs: np.ndarray | None = None
    prob_std: np.ndarray | None = None
    abstain: np.ndarray | None = None
    mean: np.ndarray | None = None
    aleatoric: np.ndarray | None = None
    epistemic: np.ndarray | None = None
    q_low: np.ndarray | None = None
    q_high: np.ndarray | None = None
    names: list[str] | None = None
    survival: np.ndarray | None = None
    times: tuple[float, ...] = ()

    @property
    def sigma(self) -> np.ndarray | None:
        if self.mean is None:
            return None
        return np.sqrt(self.aleatoric + self.epistemic)

    @property
    def models_noise(self) -> bool:
        """A regressor whose σ includes the data's noise (het or qtl heads), not only its members' or MC
        passes' spread."""
        return self.q_low is not None or (self.aleatoric is not None and bool(np.any(self.aleatoric > 0)))


@dataclass
class TaskPredictions:
    """A multi-task model's pooled predictions (P3B1): one classifier's Prediction per task, named as the
    dataset's label columns."""

    names: list[str]
    tasks: list[Prediction]


@dataclass
class TaskCalibrators:
    """One conformal classifier per task, fitted on the calibration rows labelled for it; None for a task
    that none was."""

    per_task: list
    rows: list[int]


def pool_weights(members: list[Member], passes: list[int]) -> np.ndarray | None:
    """Each sample's weight in the pooled output (members x passes), or None when all weigh the same: a member
    with a `share` takes it, the others split the rest equally, and a member's passes split its part."""
    fixed = sum(m.share for m in members if m.share is not None)
    if not fixed:
        return None
    free = sum(m.share is None for m in members)
    parts = [(m.share if free else m.share / fixed) if m.share is not None else (1 - fixed) / free for m in members]
    return np.concatenate([np.full(n, part / n) for part, n in zip(parts, passes)])


def _mean_std(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The (weighted) mean and population spread over the leading sample axis."""
    mean = np.average(values, axis=0, weights=weights)
    return mean, np.sqrt(np.average((values - mean) ** 2, axis=0, weights=weights))


def pool(head: str, outputs: list[np.ndarray], weights: np.ndarray | None = None, names: list[str] | None = None
         ) -> Prediction:
    """Combine members' raw outputs (each [passes, rows, outputs]) into one Prediction, each sample weighing
    `weights` (pool_weights; None: the same)."""
    raw = np.concatenate(outputs, axis=0)  # [members x passes, rows, outputs]
    if head in ("classification", "abstention"):
        probs = _softmax(raw)
        abstain = None
        if head == "abstention":  # the last unit abstains; renormalise the class probabilities
            abstain = np.average(probs[..., -1], axis=0, weights=weights)
            probs = probs[..., :-1] / probs[..., :-1].sum(axis=-1, keepdims=True).clip(min=1e-12)
        mean, spread = _mean_std(probs, weights)
        return Prediction(head=head, samples=probs, probs=mean, prob_std=spread, abstain=abstain, names=names)
    if raw.shape[-1] not in (1, 2, 3):
        raise UsageError(f"a {head} model with {raw.shape[-1]} outputs per row cannot be pooled; one target is supported")
    if head == "het":
        mu, var = uq.split_heteroscedastic(raw)
        mu, var = mu[..., 0], var[..., 0]
        moments = uq.ensemble_moments(mu, var, weights)
        return Prediction(head=head, samples=mu, mean=moments.mean, aleatoric=moments.aleatoric,
                          epistemic=moments.epistemic, names=names)
    if head == "qtl":
        q50, lo, hi = (q[..., 0] for q in uq.split_quantiles(raw))
        moments = uq.ensemble_moments(q50, weights=weights)
        lo, hi = np.average(lo, axis=0, weights=weights), np.average(hi, axis=0, weights=weights)
        # The data's noise as CANDLE reads it off the pooled inter-decile range (a crossed pair: none).
        noise = uq.quantile_sigma(lo, hi).clip(min=0) ** 2
        return Prediction(head=head, samples=q50, mean=moments.mean, aleatoric=noise, epistemic=moments.epistemic,
                          q_low=lo, q_high=hi, names=names)
    point = raw[..., 0]
    moments = uq.ensemble_moments(point, weights=weights)
    return Prediction(head=head, samples=point, mean=moments.mean, aleatoric=moments.aleatoric,
                      epistemic=moments.epistemic, names=names)


def predict(members: list[Member], batches: Callable[[], Iterable[torch.Tensor]], *, mc_passes: int = 0,
            device="cpu", seed: int = 0, times=()) -> Prediction | TaskPredictions:
    """Every member over the same rows (with `mc_passes` dropout passes each; a member with a fixed share, a
    linear baseline, has no dropout and passes once), pooled (a multi-task model's: each task on its own); a
    survival model's probabilities of no event by each of `times` too, where asked."""
    if not members:
        raise UsageError("no model to predict with")
    if times and members[0].data.get("task") != "survival":
        raise UsageError(f"--times: a {members[0].data.get('task')} model predicts no survival times; only a model "
                         f"of a survival dataset (TableDataset(..., event=...)) takes --times")
    check_compatible(members)
    head = members[0].head
    outputs, names, passes, networks = [], [], [], 0
    for i, member in enumerate(members):
        stochastic = bool(mc_passes) and member.share is None
        if stochastic:
            enable_mc_dropout(member.model, member.source)
        raw = raw_outputs(member.model, batches, passes=max(1, mc_passes) if stochastic else 1, device=device,
                          seed=seed + i)
        outputs.append(member.in_target_units(raw))
        passes.append(len(raw[0]) if isinstance(raw, list) else len(raw))  # a multi-task model's: per task
        if member.share is not None:
            names += ["baseline"] * passes[-1]
        else:
            names += [f"member_{networks + k}" for k in range(passes[-1])]
            networks += passes[-1]
    weights = pool_weights(members, passes)
    curves = _survival_curves(members, outputs, weights, times) if times else None
    if members[0].data.get("task") == "survival":
        outputs = _on_one_risk_scale(members, outputs, passes, weights)
    if head == "multitask":
        from candle_ray.data.features import task_names

        return TaskPredictions(task_names(members[0].data), [pool("classification", [o[t] for o in outputs], weights,
                                                                   names) for t in range(len(outputs[0]))])
    pred = pool(head, outputs, weights, names)
    if curves is not None:
        pred.survival, pred.times = curves, tuple(float(t) for t in times)
    return pred


def _survival_curves(members: list[Member], outputs: list[np.ndarray], weights, times) -> np.ndarray:
    """Each member's (and pass's) survival probabilities at `times`, from its own risks and the baseline hazard
    estimated with them on its validation rows, averaged as the pool weighs them: [rows, times]. Probabilities
    pool without a common risk scale, so the raw risks are used, not `_on_one_risk_scale`'s."""
    from candle_ray import cox

    curves = []
    for member, out in zip(members, outputs):
        hazard = member.objective.get("baseline_hazard")
        if hazard is None:
            raise UsageError(f"--times: {member.source} keeps no baseline hazard, which is estimated on a model's "
                             f"validation rows (it had none with an event, was trained on every row, or was saved "
                             f"by an older candle-ray); leave out --times, or use a model trained with a val split")
        curves += [cox.survival_at(sample[:, 0], hazard, times) for sample in out]
    return np.average(np.stack(curves), axis=0, weights=weights)


def follow_up_note(members: list[Member], times) -> str | None:
    """A note on times past the follow-up of the validation rows a member's baseline hazard came from: its
    estimate stops changing at their last event, so the survival there is a floor held flat, not a forecast."""
    longest = min((m.objective.get("baseline_hazard") or {}).get("max_time", np.inf) for m in members)
    past = [t for t in times if t > longest]
    if not past:
        return None
    return (f"note: --times {', '.join(f'{t:g}' for t in past)} past the longest follow-up ({longest:g}) of the "
            f"validation rows the baseline hazard was estimated on: survival there is held at its last value")


def _on_one_risk_scale(members: list[Member], outputs: list[np.ndarray], passes: list[int], weights) -> list:
    """Survival members' risks, each divided by its spread on its validation rows (its checkpoint's
    `risk_scale`) and put back on their (weighted) mean spread, so that each moves the pooled ranking by its
    share. Left as they were, a Cox baseline chosen with a strong penalty spread its risks 0.1 on GSE3143's
    validation rows and the networks 0.9 to 6.9, and its half share of the pool moved nothing. A single
    member's risks are unchanged; without every member's spread (a model trained on all rows) none is scaled."""
    scales = [member.objective.get("risk_scale") for member in members]
    if len(members) < 2 or not all(s and np.isfinite(s) and s > 0 for s in scales):
        return outputs
    per_sample = np.repeat(scales, passes)
    mean = float(np.average(per_sample, weights=weights))
    return [out / scale * mean for out, scale in zip(outputs, scales)]


def calibrate(pred: Prediction | TaskPredictions, y: np.ndarray, alpha: float, set_score: str = "lac",
              smoothed: bool = False):
    """A split-conformal calibrator fitted on predictions of held-out labelled rows.

    Quantile heads get CQR; a model with a spread (het heads, several members, MC dropout) gets
    σ-normalised residuals, so intervals widen where the model is unsure; else absolute residuals.
    Classifiers get prediction sets (LAC by default, APS on request) by the rank rule, or from smoothed
    p-values with `smoothed` (a multi-task model's `y` is [rows, tasks], UNLABELLED where a row has no label
    for a task). The rank rule is the default because it has slack for calibration rows a
    little easier than the predicted ones, as validation rows that a sweep selected on may be: smoothed
    sets calibrated on them covered 0.81 and 0.86 on Khan's data (5 splits each; the rank rule 0.98).
    """
    from candle_ray import conformal

    if isinstance(pred, TaskPredictions):  # each task on the rows labelled for it
        fitted, counts = [], []
        for t, task in enumerate(pred.tasks):
            rows = y[:, t] >= 0
            counts.append(int(rows.sum()))
            fitted.append(conformal.ConformalClassifier(alpha, score=set_score, smoothed=smoothed)
                          .fit(task.probs[rows], y[rows, t]) if rows.any() else None)
        return TaskCalibrators(fitted, counts)
    if pred.probs is not None:
        return conformal.ConformalClassifier(alpha, score=set_score, smoothed=smoothed).fit(pred.probs, y)
    if pred.q_low is not None:
        return conformal.ConformalQuantileRegressor(alpha).fit(y, pred.q_low, pred.q_high)
    sigma = pred.sigma
    if sigma is not None and np.all(sigma > 0):
        return conformal.SplitConformalRegressor(alpha, score="normalized").fit(y, pred.mean, sigma)
    return conformal.SplitConformalRegressor(alpha, score="absolute").fit(y, pred.mean)


def interval(pred: Prediction, calibrator) -> tuple[np.ndarray, np.ndarray]:
    """Conformal (lower, upper) bounds of a regression Prediction, from the calibrator `calibrate` chose."""
    if pred.q_low is not None:
        return calibrator.predict(pred.q_low, pred.q_high)
    if getattr(calibrator, "score", "") == "normalized":
        return calibrator.predict(pred.mean, pred.sigma)
    return calibrator.predict(pred.mean)


def table(pred: Prediction | TaskPredictions, info: dict, *, alpha: float = 0.1, calibrator=None, ids=None,
          member_columns=False):
    """The output table: predictions, spreads, interval bounds or prediction sets, optional per-member columns
    (a multi-task model's: each task's columns, named after it: task0_prediction, task0_p_3, ...)."""
    import pandas as pd

    if isinstance(pred, TaskPredictions):
        parts = [table(task, task_info(info, t), alpha=alpha, member_columns=member_columns,
                       calibrator=calibrator.per_task[t] if calibrator else None).add_prefix(f"{name}_")
                 for t, (name, task) in enumerate(zip(pred.names, pred.tasks))]
        return pd.concat(([pd.DataFrame({"id": ids})] if ids is not None else []) + parts, axis=1)
    columns: dict[str, np.ndarray | list] = {}
    if isinstance(ids, dict):  # a joined dataset's rows: their input columns (cell, drug1, dose1...)
        columns.update(ids)
    elif ids is not None:
        columns["id"] = ids
    if pred.probs is not None:
        names = class_names(info, pred.probs.shape[1])
        top = pred.probs.argmax(axis=1)
        columns["prediction"] = [names[i] for i in top]
        columns["probability"] = pred.probs[np.arange(len(top)), top]
        columns["probability_std"] = pred.prob_std[np.arange(len(top)), top]
        for i, name in enumerate(names):
            columns[f"p_{name}"] = pred.probs[:, i]
        if pred.abstain is not None:
            columns["p_abstain"] = pred.abstain
        if calibrator is not None:
            sets = calibrator.predict(pred.probs)
            columns["prediction_set"] = ["|".join(n for n, inside in zip(names, row) if inside) for row in sets]
            columns["set_size"] = sets.sum(axis=1)
        if member_columns:
            for m, column in enumerate(_sample_names(pred)):
                columns[column] = [names[i] for i in pred.samples[m].argmax(axis=1)]
    else:  # a survival model's output is a risk score (log hazard ratio), no time: named so
        columns["risk" if info.get("task") == "survival" else "prediction"] = pred.mean
        sigma = pred.sigma
        if sigma is not None and np.any(sigma > 0):
            columns["std"] = sigma
            if pred.aleatoric is not None and np.any(pred.aleatoric > 0) and np.any(pred.epistemic > 0):
                columns["aleatoric_std"], columns["epistemic_std"] = np.sqrt(pred.aleatoric), np.sqrt(pred.epistemic)
        if calibrator is not None:
            columns["lower"], columns["upper"] = interval(pred, calibrator)
        elif sigma is not None and np.any(sigma > 0) and pred.models_noise:  # see spread_only_note
            # at 1 - alpha, as the ensemble's coverage metric; qtl's own q10..q90 is an 80 % interval
            columns["lower"], columns["upper"] = uq.gaussian_interval(pred.mean, sigma, alpha)
        if pred.q_low is not None:
            from candle_ray.objectives import QUANTILES

            columns[f"q{round(100 * QUANTILES[1])}"], columns[f"q{round(100 * QUANTILES[2])}"] = pred.q_low, pred.q_high
        if member_columns:
            for m, column in enumerate(_sample_names(pred)):
                columns[column] = pred.samples[m]
        for k, t in enumerate(pred.times):
            columns[survival_column(t)] = pred.survival[:, k]
    return pd.DataFrame(columns)


def survival_column(time: float) -> str:
    """The table's column of the probability of no event by `time` (the label column's units)."""
    return f"survival_{time:g}"


def task_info(info: dict, task: int) -> dict:
    """What `table` and `labelled_line` read of a model's data, for one task of a multi-task model."""
    from candle_ray.data.features import task_names

    return {"task": "classification", "num_classes": info["num_classes"][task], "class_names": None,
            "label": task_names(info)[task]}


def class_names(info: dict, count: int) -> list[str]:
    """The classes as predict writes them: their names, or their indices where the labels were indices."""
    return [str(n) for n in (info.get("class_names") or range(count))]


def spread_only_note(pred: Prediction, calibrator, info: dict) -> str | None:
    """Why a regressor's table has `std` but no interval bounds: its members' (or MC passes') spread leaves
    out the data's noise. On GDSC (Nutlin-3a, 5 mse members) a 90 % Gaussian interval from it covered 0.19 of
    170 held-out rows, and 0.20 of the 169 validation rows with the linear baseline pooled."""
    if info.get("task") == "survival":  # a risk score has no observed value for an interval to cover
        return None
    if not isinstance(pred, Prediction) or pred.mean is None or calibrator is not None or pred.models_noise \
            or pred.sigma is None or not np.any(pred.sigma > 0):
        return None
    return ("note: no interval bounds: std is the spread of the members' predictions alone, which leaves out "
            "the noise in the data (a 90% interval from it covered 19% of held-out GDSC rows); pass --conformal "
            "LABELLED_ROWS for calibrated intervals, or train loss=het or loss=qtl heads")


def labelled_line(frame, y: np.ndarray | None, info: dict, alpha: float, times=()) -> str | None:
    """How `table`'s predictions fare on the rows whose label the file carries (a held-out test file):
    accuracy, or R² and MAE, or a survival model's concordance index (on rows with both its time and event
    columns) and, by each of `times`, its mean survival probability beside the rows' Kaplan-Meier estimate and
    its Brier score beside that of the Kaplan-Meier; the coverage and size of conformal sets or intervals. None
    without labels."""
    from candle_ray.data.features import UNLABELLED, is_multitask

    if y is None:
        return None
    if is_multitask(info):
        return _tasks_labelled_line(frame, y, info, alpha)
    labelled = (y != UNLABELLED) if info["task"] == "classification" else np.isfinite(y)
    n = int(labelled.sum())
    if n == 0:
        return None
    rows = frame[labelled]
    if info["task"] == "survival":
        from candle_ray import cox

        events = int((y[labelled] > 0).sum())
        said = [f"concordance index {cox.concordance(rows['risk'].to_numpy(np.float64), y[labelled]):.3f} "
                f"({events} events)"]
        for t, seen in zip(times, cox.kaplan_meier(y[labelled], times)):
            predicted = rows[survival_column(t)].to_numpy(np.float64)
            said.append(f"survival by {t:g}: mean predicted {predicted.mean():.3f}, Kaplan-Meier " + (
                f"{seen:.3f}, Brier score {cox.brier_score(y[labelled], predicted, t):.3f} (the Kaplan-Meier "
                f"for every row: {cox.brier_score(y[labelled], np.full(n, seen), t):.3f})"
                if np.isfinite(seen) else "none (past the rows' follow-up)"))
    elif info["task"] == "classification":
        said = _class_scores(rows, np.array(class_names(info, int(info["num_classes"])))[y[labelled]], alpha)
    else:
        truth, err = y[labelled], y[labelled] - rows["prediction"].to_numpy(np.float64)
        spread = np.sum((truth - truth.mean()) ** 2)
        said = ([f"R² {1 - np.sum(err ** 2) / spread:.3f}"] if n > 1 and spread > 0 else []) + [f"MAE {np.abs(err).mean():.4g}"]
        if "lower" in rows:
            lower, upper = rows["lower"].to_numpy(np.float64), rows["upper"].to_numpy(np.float64)
            said.append(f"{1 - alpha:.0%} interval coverage {uq.interval_coverage(truth, lower, upper):.3f} "
                        f"(mean width {uq.mean_interval_width(lower, upper):.4g})")
    left = len(y) - n
    return (f"on the {n} rows labelled in the file ({info.get('label') or 'first column'}): " + ", ".join(said)
            + (f"; {left} of {len(y)} rows left out: their label is empty or one the model does not know" if left else ""))


def _class_scores(rows, truth: np.ndarray, alpha: float) -> list[str]:
    """A classifier's accuracy on labelled rows of `table`'s output, and its sets' coverage and size."""
    hits = rows["prediction"].astype(str).to_numpy() == truth
    said = [f"accuracy {hits.mean():.3f} ({int(hits.sum())}/{len(truth)})"]
    if "prediction_set" in rows:
        covered = np.mean([t in s.split("|") for t, s in zip(truth, rows["prediction_set"])])
        said.append(f"{1 - alpha:.0%} set coverage {covered:.3f} (mean size {rows['set_size'].mean():.2f})")
    return said


def _tasks_labelled_line(frame, y: np.ndarray, info: dict, alpha: float) -> str | None:
    """`labelled_line` of a multi-task model: each task on the rows labelled for it (P3B1's rows carry one)."""
    from candle_ray.data.features import task_names

    said = []
    for t, name in enumerate(task_names(info)):
        labelled = y[:, t] >= 0
        if labelled.any():
            rows = frame.loc[labelled, [c for c in frame.columns if c.startswith(f"{name}_")]]
            truth = np.array(class_names(task_info(info, t), info["num_classes"][t]))[y[labelled, t]]
            scores = _class_scores(rows.rename(columns=lambda c: c[len(name) + 1:]), truth, alpha)
            said.append(f"{name} ({int(labelled.sum())} rows): " + ", ".join(scores))
    return "on the rows labelled in the file: " + "; ".join(said) if said else None


def _sample_names(pred: Prediction) -> list[str]:
    return pred.names or [f"member_{m}" for m in range(pred.samples.shape[0])]
