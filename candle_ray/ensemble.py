"""Ensembles: which members to train, and how well their pooled predictions know what they don't know.

`candle-ray ensemble` is a sweep whose trials are the members (see sweep.run): seed replicas of one
configuration, or the K best configurations of a finished sweep (DeepHyper's recipe), each possibly
replicated over seeds. After training, `evaluate` pools the members' best checkpoints on the
validation split and measures the ensemble's uncertainty: accuracy or fit of the pooled prediction,
NLL, Brier and ECE (classifiers), interval coverage and width, the aleatoric/epistemic split (het
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
    task, classes = entry.manifest["task"], entry.num_classes
    if task == "autoencoder":
        raise UsageError(f"dataset {entry.name} trains an autoencoder: an ensemble pools predictions, and "
                         f"reconstructions have none to pool; train one model with `candle-ray train` (or search "
                         f"with `candle-ray tune`)")
    if isinstance(classes, (list, tuple)):
        raise UsageError(f"dataset {entry.name} is multi-task ({len(classes)} tasks): an ensemble pools one "
                         f"prediction per row; train one model with `candle-ray train`, whose per-task accuracies "
                         f"are in MLflow")


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
    from candle_ray.summary import ranked

    done = ranked([r for r in rows if r.get("status") in FINISHED and r.get(metric) not in (None, "")],
                  lambda r: float(r[metric]), mode)
    if top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    if top > len(done):
        raise UsageError(f"--top {top} but sweep {sweep!r} has only {len(done)} finished trial(s) with a {metric}; "
                         f"use --top {max(1, len(done))} or less" if done else
                         f"sweep {sweep!r} has no finished trial with a {metric}; finish or resume it first")
    return done[:top]


def top_configs(rows: list[dict], metric: str, mode: str, top: int, sweep: str, pick: str | None = None) -> list[dict]:
    """The settings of the `top` best finished trials, best first (or of the front member `pick` names)."""
    from candle_ray.summary import picked_row

    chosen = [picked_row(rows, pick, sweep)] if pick else top_rows(rows, metric, mode, top, sweep)
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
                         f"build the ensemble from the same experiment file")
    rows = store.read_results(sweep)
    if rows is None:
        raise UsageError(f"sweep {sweep!r} has no results.csv yet; let it finish (or resume it) first")
    configs = top_configs(rows, record["sweep"]["metric"], record["sweep"]["mode"], top, sweep, pick)
    return [{**config, "rng_seed": base_seed + i} for config in configs for i in range(replicas)], record


# ---------------------------------------------------------------- evaluation of the pooled members


def _val_rows(entry, batch: int = 1024):
    """The validation split in order, as (batch factory, labels)."""
    import torch

    from candle_ray.data.feed import make_feed

    feed = make_feed(entry, "val", batch, shuffle=False, pad=False, mode="memory")
    labels = torch.cat([y for _, y in feed.epoch(0)]).numpy()
    return (lambda: (x for x, _ in feed.epoch(0))), labels


def evaluate(checkpoint_dirs: list[Path], entry, out_dir: Path, *, alpha: float = 0.1, seed: int = 0) -> tuple[dict, list[Path]]:
    """Pool the members on the validation split: (metrics, PNG/TSV files) to attach to the ensemble's run."""
    from candle_ray import predict as predicting
    from candle_ray import uq, uq_plots

    members = [predicting.load_member(path) for path in checkpoint_dirs]
    batches, y = _val_rows(entry)
    pred = predicting.predict(members, batches, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"ensemble_members": float(len(members)), "ensemble_val_rows": float(len(y))}
    files: list[Path] = []
    # Conformal check: calibrate on a seeded half of the validation rows, measure on the other half.
    order = np.random.default_rng(seed).permutation(len(y))
    cal, test = order[: len(y) // 2], order[len(y) // 2:]
    if pred.probs is not None:
        labels = y.astype(np.int64)
        metrics.update({
            "ensemble_val_accuracy": float((pred.probs.argmax(1) == labels).mean()),
            "ensemble_val_nll": uq.categorical_nll(pred.probs, labels),
            "ensemble_val_brier": uq.brier_score(pred.probs, labels),
            "ensemble_val_ece": uq.expected_calibration_error(pred.probs, labels),
            "ensemble_val_prob_std": float(pred.prob_std.max(axis=1).mean()),
        })
        if pred.abstain is not None:
            metrics["ensemble_val_abstain_mean"] = float(pred.abstain.mean())
        files.append(uq_plots.reliability_diagram(pred.probs, labels, out_dir / "reliability.png",
                                                  title=f"Reliability, {len(members)}-member ensemble"))
        calibrator = _conformal(predicting.Prediction(head=pred.head, samples=pred.samples[:, cal], probs=pred.probs[cal]),
                                labels[cal], alpha)
        if calibrator is not None:
            sets = calibrator.predict(pred.probs[test])
            metrics["conformal_val_coverage"] = uq.set_coverage(sets, labels[test])
            metrics["conformal_val_set_size"] = uq.mean_set_size(sets)
    else:
        target = y.astype(np.float64).reshape(len(y), -1)[:, 0]
        err = target - pred.mean
        metrics.update({"ensemble_val_mse": float(np.mean(err ** 2)), "ensemble_val_mae": float(np.mean(np.abs(err))),
                        "ensemble_val_r2": float(1 - np.sum(err ** 2) / max(np.sum((target - target.mean()) ** 2), 1e-12))})
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
        part = lambda a, rows: None if a is None else a[rows]  # noqa: E731
        calibrator = _conformal(predicting.Prediction(
            head=pred.head, samples=pred.samples[:, cal], mean=pred.mean[cal], aleatoric=part(pred.aleatoric, cal),
            epistemic=part(pred.epistemic, cal), q_low=part(pred.q_low, cal), q_high=part(pred.q_high, cal)),
            target[cal], alpha)
        if calibrator is not None:
            held = predicting.Prediction(head=pred.head, samples=pred.samples[:, test], mean=pred.mean[test],
                                         aleatoric=part(pred.aleatoric, test), epistemic=part(pred.epistemic, test),
                                         q_low=part(pred.q_low, test), q_high=part(pred.q_high, test))
            lower, upper = predicting.interval(held, calibrator)
            metrics["conformal_val_coverage"] = uq.interval_coverage(target[test], lower, upper)
            metrics["conformal_val_interval_width"] = uq.mean_interval_width(lower, upper)
    table = predicting.table(pred, members[0].data, alpha=alpha, member_columns=True)
    table.insert(0, "target", y if y.ndim == 1 else list(map(list, y)))
    path = out_dir / "val_predictions.tsv"
    table.to_csv(path, sep="\t", index=False)
    files.append(path)
    return metrics, files


def _conformal(pred, labels, alpha: float):
    """A calibrator, or None when half the validation split is too small for alpha."""
    from candle_ray import predict as predicting
    from candle_ray.conformal import minimum_calibration_rows

    if len(labels) < minimum_calibration_rows(alpha):
        return None
    return predicting.calibrate(pred, labels, alpha)
