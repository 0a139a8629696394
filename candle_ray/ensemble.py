"""Ensembles: which members to train, and how well their pooled predictions know what they don't know.

`candle-ray ensemble` is a sweep whose trials are the members (see sweep.run): seed replicas of one
configuration, or the K best configurations of a finished sweep (DeepHyper's recipe), each possibly
replicated over seeds. After training, `evaluate` pools the members' best checkpoints on the
validation split and measures the ensemble's uncertainty: accuracy or fit of the pooled prediction,
NLL, Brier and ECE (classifiers), interval coverage and width, the aleatoric/epistemic split (het or qtl
heads), and a split-conformal check (calibrate on one half of the validation rows, measure coverage
on the other). No Ray and no MLflow here; the caller logs what this returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from candle_ray.errors import UsageError

FINISHED = ("completed", "stopped early")


def check_poolable(entry) -> None:
    """Refuse, before any member trains, an ensemble whose members' predictions cannot be pooled."""
    if entry.manifest["task"] == "autoencoder":
        raise UsageError(f"dataset {entry.name} trains an autoencoder: an ensemble pools predictions, and "
                         f"reconstructions have none to pool; train one model with `candle-ray train` (or search "
                         f"with `candle-ray tune`)")


def seed_members(members: int, base_seed: int) -> list[dict]:
    if members < 1:
        raise UsageError(f"--members must be >= 1, got {members}")
    return [{"rng_seed": base_seed + i} for i in range(members)]


def _value(text: str):
    """A config value as results.csv wrote it (str() of the Python value) back to the value."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except ValueError:
        return text


def top_rows(rows: list[dict], metric: str, mode: str, top: int, sweep: str) -> list[dict]:
    """The `top` best finished trials (rows of a sweep's results.csv, whose `metric` column is each
    trial's best epoch: candle_ray.summary), best first."""
    from candle_ray.summary import TIE_BREAK, ranked

    done = ranked([r for r in rows if r.get("status") in FINISHED and r.get(metric) not in (None, "")],
                  lambda r: float(r[metric]), mode,
                  lambda r: float(r[TIE_BREAK]) if metric != TIE_BREAK and r.get(TIE_BREAK) not in (None, "") else None)
    if top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    if top > len(done):
        raise UsageError(f"--top {top} but sweep {sweep!r} has only {len(done)} finished trial(s) with a {metric}; "
                         f"use --top {max(1, len(done))} or less" if done else
                         f"sweep {sweep!r} has no finished trial with a {metric}; finish or resume it first")
    return done[:top]


def _chosen_rows(rows: list[dict], metric: str, mode: str, top: int, sweep: str, pick: str | None) -> list[dict]:
    from candle_ray.summary import picked_row

    return [picked_row(rows, pick, sweep)] if pick else top_rows(rows, metric, mode, top, sweep)


def best_epoch_of(storage: str, sweep: str, record: dict, pick: str | None = None) -> int:
    """The best epoch of a finished sweep's best trial (or of its front member `pick`): the one that ranked it."""
    from candle_ray.storage import Storage

    ranked = record["sweep"]
    [row] = _chosen_rows(Storage.parse(storage).read_results(sweep), ranked["metric"], ranked["mode"], 1, sweep, pick)
    return int(float(row["best_epoch"]))


def top_configs(rows: list[dict], metric: str, mode: str, top: int, sweep: str, pick: str | None = None) -> list[dict]:
    """The settings of the `top` best finished trials, best first (or of the front member `pick` names)."""
    chosen = _chosen_rows(rows, metric, mode, top, sweep, pick)
    # An empty cell: a key the trial did not search (candle_ray.conditional); the member does not either.
    return [{k[len("config."):]: None if v in ("", None) else _value(v) for k, v in r.items() if k.startswith("config.")}
            for r in chosen]


def members_from_sweep(storage: str, sweep: str, top: int, replicas: int, base_seed: int,
                       experiment_path: Path, pick: str | None = None) -> tuple[list[dict], dict]:
    """The K best configurations of a finished sweep (or its Pareto front's member `pick`), each trained
    `replicas` times with different seeds, and the sweep's record (its fixed --set overrides and smoke flag
    belong to those configurations)."""
    from candle_ray.storage import Storage

    store = Storage.parse(storage)
    record = store.read_sweep(sweep, f"--from-sweep {sweep!r} does not exist", "pass --storage where it ran")
    if Path(record["experiment_file"]) != Path(experiment_path):
        raise UsageError(f"sweep {sweep!r} searched {record['experiment_file']}, not {experiment_path}; "
                         f"pass the same experiment file")
    rows = store.read_results(sweep)
    if rows is None:
        raise UsageError(f"sweep {sweep!r} has no results.csv yet; let it finish (or resume it) first")
    configs = top_configs(rows, record["sweep"]["metric"], record["sweep"]["mode"], top, sweep, pick)
    _check_one_head(configs, sweep)
    return [{**config, "rng_seed": base_seed + i} for config in configs for i in range(replicas)], record


def member_ranking(record: dict) -> tuple[str | None, str | None]:
    """The metric and mode that pick each member's epoch: the ones the sweep ranked its trials by (a val_r2
    sweep's members keep their best val_r2 epoch), or the experiment's (None) when that was not a validation
    metric (a cost such as n_params first in a multi-objective sweep)."""
    ranked = record["sweep"]
    return (ranked["metric"], ranked["mode"]) if ranked["metric"].startswith("val_") else (None, None)


def _check_one_head(configs: list[dict], sweep: str) -> None:
    """Refuse, before training them, configurations whose outputs do not pool (predict's rule: an mse and an
    mae member pool, a qtl one does not): a sweep that searched the loss (ranked by val_r2, say) can have a
    qtl trial and an mse trial among its best."""
    from candle_ray.objectives import LOSS_ALIASES
    from candle_ray.predict import pooled_head

    heads = [pooled_head(c) for c in configs]
    if len(set(heads)) > 1:
        names = [LOSS_ALIASES.get(str(c.get("loss")), str(c.get("loss") or "default")) for c in configs]
        losses = [name + (" with abstention" if head == "abstention" else "") for name, head in zip(names, heads)]
        same = next(i for i, head in enumerate(heads) if head != heads[0])
        raise UsageError(f"the {len(configs)} best trials of sweep {sweep!r} use different losses "
                         f"({', '.join(losses)}), whose outputs do not pool; take --top {same} (the best that share "
                         f"one) or sweep with one loss (--set loss=NAME)")


# ---------------------------------------------------------------- evaluation of the pooled members


def _val_rows(entry, batch: int = 1024):
    """The validation split in order, as (batch factory, labels)."""
    import torch

    from candle_ray.data.feed import make_feed

    feed = make_feed(entry, "val", batch, shuffle=False, pad=False, mode="memory")
    labels = torch.cat([y for _, y in feed.epoch(0)]).numpy()
    return (lambda: (x for x, _ in feed.epoch(0))), labels


def evaluate(checkpoint_dirs: list[Path], entry, out_dir: Path, *, alpha: float = 0.1, seed: int = 0,
             keep_baseline: bool = False) -> tuple[dict, list[Path]]:
    """Pool the members on the validation split: (metrics, PNG/TSV files) to attach to the ensemble's run.

    A linear baseline among `checkpoint_dirs` (a checkpoint with a `pool_share`, candle_ray.baseline) joins the
    pool when its head is the networks' (a classifier's probabilities, a plain regressor's prediction), unless
    the networks clearly beat it on these rows (`baseline_beaten`) and `keep_baseline` (a share the user chose)
    is off. `ensemble_baseline_share` is its share (0: not pooled), `ensemble_baseline_paired_t` the test's
    statistic, and `members_val_*` score the networks alone."""
    from candle_ray import predict as predicting

    members = [predicting.load_member(path) for path in checkpoint_dirs]
    networks = [m for m in members if m.share is None]
    if not networks:
        raise UsageError(f"no ensemble member among {len(members)} checkpoint(s), only a linear baseline; train members first")
    linear = [m for m in members if m.share is not None and m.head == networks[0].head][:1]
    batches, y = _val_rows(entry)
    task = networks[0].data.get("task")
    pred = predicting.predict(networks + linear, batches, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(pred, predicting.TaskPredictions):  # a multi-task model has no linear baseline
        return _evaluate_tasks(pred, y, networks, out_dir, alpha, seed)
    metrics = {"ensemble_members": float(len(networks)), "ensemble_val_rows": float(len(y))}
    if linear:  # what the networks score without it: their samples' plain mean (a second pass only if they pool alone)
        is_linear = np.array([name == "baseline" for name in pred.names])
        alone = pred.samples[~is_linear].mean(axis=0)
        metrics.update({k.replace("ensemble_", "members_"): v for k, v in _scores(alone, y, task).items()})
        beaten, metrics["ensemble_baseline_paired_t"] = baseline_beaten(alone, pred.samples[is_linear][0], y, task)
        if beaten and not keep_baseline:
            linear, pred = [], predicting.predict(networks, batches, seed=seed)
    metrics["ensemble_baseline_share"] = float(linear[0].share) if linear else 0.0
    metrics.update(_scores(pred.probs if pred.probs is not None else pred.mean, y, task))
    halves = _halves(len(y), seed, _val_groups(entry))
    uq = _class_uq if pred.probs is not None else _survival_uq if task == "survival" else _regression_uq
    uq_metrics, files = uq(pred, y, halves, alpha, out_dir)
    metrics.update(uq_metrics)
    table = predicting.table(pred, networks[0].data, alpha=alpha, member_columns=True)
    table.insert(0, "target", y if y.ndim == 1 else list(map(list, y)))
    path = out_dir / "val_predictions.tsv"
    table.to_csv(path, sep="\t", index=False)
    return metrics, [*files, path]


def _halves(rows: int, seed: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The conformal check's split: a seeded half of the validation rows calibrates, the other half measures;
    with `groups` (each val row's), half the groups: coverage is then measured on groups that calibrated nothing,
    as for a new patient."""
    if groups is None:
        order = np.random.default_rng(seed).permutation(rows)
        return order[: rows // 2], order[rows // 2:]
    keys = np.unique(groups)
    calibrating = np.isin(groups, np.random.default_rng(seed).permutation(keys)[: len(keys) // 2])
    return np.flatnonzero(calibrating), np.flatnonzero(~calibrating)


def _val_groups(entry) -> np.ndarray | None:
    """Each validation row's group, for a dataset with a group column (TableDataset(..., group=)); else None."""
    from candle_ray.data.cache_format import read_manifest
    from candle_ray.data.folds import pooled_groups

    manifest = read_manifest(entry)
    if not manifest.get("group"):
        return None
    return pooled_groups(entry, manifest["group"])[int(manifest["splits"]["train"]["rows"]):]


def _evaluate_tasks(pred, y: np.ndarray, networks: list, out_dir: Path, alpha: float, seed: int):
    """`evaluate` of a multi-task model (P3B1): each task scored on the validation rows labelled for it, its
    metrics suffixed with the task's index as training names them (ensemble_val_accuracy_0...), and
    ensemble_val_accuracy their mean, as training's val_accuracy."""
    from candle_ray import predict as predicting

    per_task, files = {}, []
    for t, (name, task) in enumerate(zip(pred.names, pred.tasks)):
        rows = np.flatnonzero(y[:, t] >= 0)
        scored, labels = _rows(task, rows), y[rows, t]
        task_metrics, task_files = _class_uq(scored, labels, _halves(len(rows), seed), alpha, out_dir, name)
        per_task.update({f"{key}_{t}": value for key, value in {**_scores(scored.probs, labels), **task_metrics}.items()})
        files += task_files
    accuracy = float(np.mean([per_task[f"ensemble_val_accuracy_{t}"] for t in range(len(pred.tasks))]))
    metrics = {"ensemble_members": float(len(networks)), "ensemble_val_rows": float(len(y)),
               "ensemble_baseline_share": 0.0, "ensemble_val_accuracy": accuracy, **per_task}
    table = predicting.table(pred, networks[0].data, alpha=alpha, member_columns=True)
    for t, name in reversed(list(enumerate(pred.names))):
        table.insert(0, f"{name}_target", y[:, t])  # -1: the row has no label for the task
    path = out_dir / "val_predictions.tsv"
    table.to_csv(path, sep="\t", index=False)
    return metrics, [*files, path]


# The networks must beat the linear baseline by this many standard errors, on at least this many validation
# rows, before an ensemble leaves it out of its pool. The networks were early-stopped and chosen on these
# rows, so their losses there are optimistic: a one-sided p of ~0.001, never on a handful of rows (where the
# baseline's half share protected held-out accuracy on small expression data: README "The linear baseline
# joins the ensemble").
BEATEN_T = 3.0
BEATEN_MIN_ROWS = 50
BASELINE_SHARE = 0.5  # the baseline's share of the pool when the user names none (`ensemble --baseline-share`)


def baseline_beaten(networks: np.ndarray, linear: np.ndarray, y: np.ndarray, task: str | None = None
                    ) -> tuple[bool, float]:
    """(Do the networks clearly beat the linear baseline?, the paired t statistic) from per-row losses on the
    validation rows: a classifier's cross-entropy of the true class ([rows, classes] probabilities), a
    regressor's squared error ([rows] predictions), a survival model's share of each event's risk set it
    ranks wrongly ([rows] risks; scale-free, as pooling rescales them). Positive t: the networks' losses are lower."""
    if task == "survival":
        from candle_ray import cox

        def loss(risk):
            right, pairs = cox.event_pairs(risk, y)
            return 1 - right[pairs > 0] / pairs[pairs > 0]
    elif networks.ndim == 2:
        rows, labels = np.arange(len(y)), y.astype(np.int64)
        loss = lambda p: -np.log(np.clip(p[rows, labels], 1e-12, 1.0))  # noqa: E731
    else:
        target = y.astype(np.float64).reshape(len(y), -1)[:, 0]
        loss = lambda p: (p - target) ** 2  # noqa: E731
    gain = loss(linear) - loss(networks)
    spread = float(gain.std(ddof=1)) if len(gain) > 1 else 0.0
    t = float(gain.mean() / (spread / np.sqrt(len(gain)))) if spread > 0 else 0.0
    return len(gain) >= BEATEN_MIN_ROWS and t >= BEATEN_T, t


def _scores(point: np.ndarray, y: np.ndarray, task: str | None = None) -> dict:
    """A pooled prediction's fit: accuracy of class probabilities [rows, classes], MSE, MAE and R² of a
    regressor's predictions [rows], or a survival model's val_loss and concordance index of its risks [rows]."""
    if task == "survival":
        from candle_ray import cox

        return {f"ensemble_{key}": value for key, value in cox.val_metrics(point, y).items()}
    if point.ndim == 2:
        return {"ensemble_val_accuracy": float((point.argmax(1) == y.astype(np.int64)).mean())}
    target = y.astype(np.float64).reshape(len(y), -1)[:, 0]
    err = target - point
    return {"ensemble_val_mse": float(np.mean(err ** 2)), "ensemble_val_mae": float(np.mean(np.abs(err))),
            "ensemble_val_r2": float(1 - np.sum(err ** 2) / max(np.sum((target - target.mean()) ** 2), 1e-12))}


def _class_uq(pred, y: np.ndarray, halves, alpha: float, out_dir: Path, task: str | None = None
              ) -> tuple[dict, list[Path]]:
    """A classifier ensemble's calibration (NLL, Brier, ECE, reliability diagram) and conformal sets (`task`:
    which task of a multi-task model, named in the diagram's file and title)."""
    from candle_ray import uq, uq_plots

    labels, (cal, test) = y.astype(np.int64), halves
    metrics = {
        "ensemble_val_nll": uq.categorical_nll(pred.probs, labels),
        "ensemble_val_brier": uq.brier_score(pred.probs, labels),
        "ensemble_val_ece": uq.expected_calibration_error(pred.probs, labels),
        "ensemble_val_prob_std": float(pred.prob_std.max(axis=1).mean()),
    }
    if pred.abstain is not None:
        metrics["ensemble_val_abstain_mean"] = float(pred.abstain.mean())
    files = [uq_plots.reliability_diagram(pred.probs, labels, out_dir / f"reliability{f'_{task}' if task else ''}.png",
                                         title="Reliability, pooled ensemble" + (f", {task}" if task else ""))]
    calibrator = _conformal(_rows(pred, cal), labels[cal], alpha)
    if calibrator is not None:
        sets = calibrator.predict(pred.probs[test])
        metrics["conformal_val_coverage"] = uq.set_coverage(sets, labels[test])
        metrics["conformal_val_set_size"] = uq.mean_set_size(sets)
    return metrics, files


def _regression_uq(pred, y: np.ndarray, halves, alpha: float, out_dir: Path) -> tuple[dict, list[Path]]:
    """A regressor ensemble's Gaussian intervals, their coverage and the uncertainty split, plots, and the
    conformal intervals' coverage."""
    from candle_ray import predict as predicting
    from candle_ray import uq, uq_plots

    target, metrics, files = y.astype(np.float64).reshape(len(y), -1)[:, 0], {}, []
    sigma = pred.sigma
    if sigma is not None and np.all(sigma > 0):
        lower, upper = uq.gaussian_interval(pred.mean, sigma, alpha)
        metrics.update({
            "ensemble_val_nll": uq.gaussian_nll(target, pred.mean, sigma),
            f"ensemble_val_coverage_{round(100 * (1 - alpha))}": uq.interval_coverage(target, lower, upper),
            "ensemble_val_interval_width": uq.mean_interval_width(lower, upper),
            "ensemble_val_aleatoric_std": float(np.sqrt(pred.aleatoric).mean()),
            "ensemble_val_epistemic_std": float(np.sqrt(pred.epistemic).mean()),
        })
        nominal = np.linspace(0.05, 0.95, 19)
        curves = {"Gaussian (ensemble σ)": uq.gaussian_coverage_curve(target, pred.mean, sigma, nominal)}
        files.append(uq_plots.coverage_plot(nominal, curves, out_dir / "coverage.png"))
        files.append(uq_plots.error_vs_sigma(target, pred.mean, sigma, out_dir / "error_vs_sigma.png"))
    cal, test = (_rows(pred, rows) for rows in halves)
    calibrator = _conformal(cal, target[halves[0]], alpha)
    if calibrator is not None:
        lower, upper = predicting.interval(test, calibrator)
        metrics["conformal_val_coverage"] = uq.interval_coverage(target[halves[1]], lower, upper)
        metrics["conformal_val_interval_width"] = uq.mean_interval_width(lower, upper)
    return metrics, files


def _survival_uq(pred, y: np.ndarray, halves, alpha: float, out_dir: Path) -> tuple[dict, list[Path]]:
    """A survival ensemble's spread: how far its members' risk scores disagree (no interval: a risk has no
    observed value to cover)."""
    epistemic = pred.epistemic if pred.epistemic is not None else np.zeros(0)
    return ({"ensemble_val_epistemic_std": float(np.sqrt(epistemic).mean())} if epistemic.size else {}), []


def _rows(pred, rows: np.ndarray):
    """The Prediction restricted to `rows` (its samples are [samples, rows, ...])."""
    from dataclasses import replace

    per_row = ("probs", "prob_std", "abstain", "mean", "aleatoric", "epistemic", "q_low", "q_high")
    return replace(pred, samples=pred.samples[:, rows],
                   **{name: None if getattr(pred, name) is None else getattr(pred, name)[rows] for name in per_row})


def _conformal(pred, labels, alpha: float):
    """A calibrator, or None when half the validation split is too small for alpha."""
    from candle_ray import predict as predicting
    from candle_ray.conformal import minimum_calibration_rows

    if len(labels) < minimum_calibration_rows(alpha):
        return None
    return predicting.calibrate(pred, labels, alpha)
