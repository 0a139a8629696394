"""A sweep's trial, on the worker: Tune's function trainable.

A one-worker trial *is* the worker: the loop runs inside Tune's function trainable (actors reused
between trials), so a trial costs what its epochs cost. A multi-worker trial is rank 0 itself, with
peer actors in its placement group (candle_ray.ddp, the path `train --workers N` takes too). An elastic trial (`--workers-per-trial
MIN-MAX`) drives a Ray Train V2 TorchTrainer with ScalingConfig(num_workers=(MIN, MAX)) from inside
the trial: it pays Train's start-up (~15-25 s per trial, and again per resize) for growing and
shrinking with the cluster; its trial actor takes no CPU. `tune --cv K` trains K fold models in lockstep.
Per epoch a trial reports its metrics and, with a Tune checkpoint, its candle-ray checkpoint files, so
schedulers can stop it, PBT can clone its weights into another trial, and a resumed sweep continues it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ray
import ray.tune

from candle_ray import checkpoint
from candle_ray.errors import TrainingError

# Hyperband counts time in units of the grace period: each result carries epoch / unit under this key.
HYPERBAND_TIME = "hyperband_t"



def _checkpoint_dirs(job) -> dict[str, Path]:
    """Where the trial's loops write checkpoints, by their folder in a Tune checkpoint: the run's own
    ("" = the checkpoint's root), or one per fold for `tune --cv` ("fold-k")."""
    run_dir = Path(job.run_dir)
    if job.cv_folds:
        return {f"fold-{k}": run_dir / f"fold-{k}" / "checkpoints" for k in range(int(job.cv_folds))}
    return {"": run_dir / "checkpoints"}


def _tune_checkpoint(ckpt_dirs: dict[str, Path]):
    """The loops' current last/best checkpoints as one Tune checkpoint (hard links: no copy here)."""
    staging = Path(tempfile.mkdtemp(prefix="candle-ray-ckpt-"))
    for folder, ckpt_dir in ckpt_dirs.items():
        target = staging / folder
        target.mkdir(parents=True, exist_ok=True)
        for kind in checkpoint.KINDS:
            pointer = ckpt_dir / f"{kind}.json"
            if pointer.exists():
                shutil.copy2(pointer, target / pointer.name)
                name = checkpoint.pointer(ckpt_dir, kind)["file"]
                if not (target / name).exists():
                    try:
                        os.link(ckpt_dir / name, target / name)
                    except OSError:  # another filesystem
                        shutil.copy2(ckpt_dir / name, target / name)
    return staging, ray.tune.Checkpoint.from_directory(str(staging))


def _report_epochs(job, epochs) -> None:
    """Report each new epoch to Tune, with the checkpoint files when the loop wrote `last` and the
    previous hand-over is `tune_checkpoint_s` old (and always at the trial's final epoch). Where the loop
    paces its `last` itself (`job.last_every_s`), every `last` it writes is handed over.

    Each checkpoint Tune receives is copied into the sweep storage and makes the driver snapshot the
    experiment state; on short epochs doing that every epoch costs the driver a core that concurrent
    trials need. A kill then re-runs at most `tune_checkpoint_s` of a trial.
    """
    from candle_ray.summary import BestEpoch, packed

    ckpt_dirs = _checkpoint_dirs(job)
    every_s, handed_at, paced = float(job.tune_checkpoint_s), None, job.last_every_s > 0
    final_epoch = int(job.config["epochs"])
    hyperband_unit = job.hyperband_unit
    for metrics in BestEpoch(job.metric, job.mode)(epochs):
        if metrics.get("replayed"):  # restored trials: Tune already holds these epochs
            continue
        result = packed({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                        (job.metric, *job.followed))
        if hyperband_unit:
            result[HYPERBAND_TIME] = metrics["epoch"] / hyperband_unit
        written = all((checkpoint.pointer(d, "last") or {}).get("epoch") == metrics["epoch"] for d in ckpt_dirs.values())
        due = (paced or handed_at is None or time.monotonic() - handed_at >= every_s
               or metrics["epoch"] >= final_epoch or "stop_reason" in metrics)
        if due and written:
            handed_at = time.monotonic()
            staging, ckpt = _tune_checkpoint(ckpt_dirs)
            try:
                ray.tune.report(result, checkpoint=ckpt)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            ray.tune.report(result)
        if metrics.get("stop_reason") == "non-finite loss":
            raise TrainingError(f"trial hit a non-finite loss at epoch {metrics['epoch']} "
                                f"(loss {metrics['loss']}, val_loss {metrics['val_loss']}); lower the learning rate")


def _mean_over_folds(job, device):
    """`tune --cv K`: K fold models trained in lockstep; each epoch reports every metric's mean over the
    folds (what the scheduler and searcher see) and each fold's own `fold<k>_<metric>`.

    The trial is one model choice: its best epoch is the one whose mean is best (its rank), every fold's
    best checkpoint is that epoch's (the pooled model is the one ranked, not K epochs each picked on its
    fold's own validation rows), and early stopping follows the mean. So the folds write no checkpoint
    themselves: here, each keeps an epoch whose mean is the best so far as `best`, and one at the pace of
    the trial's hand-overs to Tune (`job.last_every_s`) and the trial's last as `last`, all folds the same
    epochs. The folds share the process, so their random streams interleave: a trial is
    reproducible, but a fold's numbers differ from the same fold trained alone. The trial ends when any
    fold stops (timeout, a non-finite loss): the mean needs every fold at every epoch.
    """
    from candle_ray.loop import World, early_stop_reason, train_epochs
    from candle_ray.summary import BestEpoch

    ckpt_dirs = list(_checkpoint_dirs(job).values())
    runs = [train_epochs(replace(job, run_dir=str(ckpt_dir.parent), cv={"assignment": job.cv_assignment, "fold": k}),
                         World(device=device), selects_best=False) for k, ckpt_dir in enumerate(ckpt_dirs)]
    written_at, final_epoch = None, int(job.config["epochs"])
    for merged in BestEpoch(job.metric, job.mode)(_merged_epochs(zip(*runs))):
        epoch, best_epoch, keeps = merged["epoch"], merged.get("best_epoch"), merged.pop("keeps")
        reason = early_stop_reason(job.config, job.metric, epoch - (best_epoch or 0))
        if reason and "stop_reason" not in merged:
            merged["stop_reason"] = reason
        last = ("stop_reason" in merged or epoch >= final_epoch or written_at is None
                or time.monotonic() - written_at >= job.last_every_s)
        kinds = [k for k, due in (("last", last), ("best", best_epoch == epoch)) if due]
        if kinds and not merged["replayed"]:
            for k, keep in enumerate(keeps):
                keep(kinds, merged.get(f"fold{k}_{job.metric}"))
            written_at = time.monotonic() if last else written_at
        yield merged
        if reason:
            return


def _merged_epochs(per_epoch):
    """Each epoch's fold results (a tuple, one per fold) as one result: means, and fold<k>_ copies (not of
    each fold's own best epoch: the trial's is its mean's)."""
    for per_fold in per_epoch:
        merged = {"epoch": per_fold[0]["epoch"], "replayed": all(m.get("replayed") for m in per_fold),
                  "keeps": [m["keep"] for m in per_fold if "keep" in m]}
        for key, value in per_fold[0].items():
            if key not in (*merged, "best_epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                values = [m[key] for m in per_fold if key in m]
                # the trial's epoch took every fold's time; its other numbers are the folds' mean
                merged[key] = sum(values) / (1 if key == "epoch_time_s" else len(values))
                if key.startswith("val_") or key == "loss":
                    merged.update({f"fold{k}_{key}": m[key] for k, m in enumerate(per_fold) if key in m})
        reasons = [f"fold {k}: {m['stop_reason']}" for k, m in enumerate(per_fold) if "stop_reason" in m]
        if reasons:
            merged["stop_reason"] = "; ".join(reasons)
        yield merged


def run_trial(config: dict, base_job) -> None:
    """One trial. Tune's checkpoint is the truth: a restored or PBT-cloned trial continues from it
    (with this trial's hyperparameters), a fresh trial starts from scratch."""
    # Ray logs every persisted checkpoint at INFO: one line per trial epoch is noise in a sweep; so is each
    # restore on this (reused) actor: a PBT sweep of 8 Khan trials printed 6 "Restored on ... from checkpoint".
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = Path(base_job.work_dir) / "trials" / trial_id
    # A conditional key this trial did not search (candle_ray.conditional) keeps the experiment's value.
    searched = {k: v for k, v in config.items() if v is not None or k not in base_job.conditional}
    job = replace(base_job, config={**base_job.config, **searched}, run_dir=str(run_dir))
    if "cv_fold" in config:  # `candle-ray cv`: this trial is one fold of the driver's fold assignment
        job = replace(job, cv={"assignment": base_job.cv_assignment, "fold": int(config["cv_fold"])})
    ckpt_dirs = _checkpoint_dirs(job)
    for ckpt_dir in ckpt_dirs.values():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    restored = ray.tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as src:
            for folder, ckpt_dir in ckpt_dirs.items():
                shutil.copytree(Path(src) / folder, ckpt_dir)
        last = checkpoint.pointer(next(iter(ckpt_dirs.values())), "last") or {}
        origin = Path(last.get("origin") or run_dir)
        origin = (origin.parent if job.cv_folds else origin).name  # .../trials/<id>[/fold-k]
        # A record of where this trial's weights came from: itself (a resume) or another trial (PBT).
        with open(run_dir / "restores.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "from_trial": origin, "epoch": last.get("epoch"),
                                "sha256": last.get("sha256"), "config": config}, default=str) + "\n")
    if base_job.workers.elastic:
        _run_elastic_trial(job, trial_id)
    elif job.cv_folds:
        from candle_ray.ddp import device_for, record_rank

        record_rank(run_dir, 0)
        _report_epochs(job, _mean_over_folds(job, device_for(job.use_gpu)))
    else:
        from candle_ray import ddp

        _report_epochs(job, ddp.epochs(job))


def _run_elastic_trial(job, trial_id: str) -> None:
    """An elastic trial: a Ray Train run (ScalingConfig(num_workers=(MIN, MAX))) driven from this trial,
    named after the trial (a retried trial finds its Train state again). Its workers resume from the
    trial's checkpoint folder, which they must see: one machine or a shared --storage."""
    from candle_ray import runtime
    from candle_ray import launch

    plan = runtime.Plan(job.workers, float(job.cpus_per_worker), int(bool(job.use_gpu)), int(job.threads))
    _report_epochs(job, launch.ddp_epochs(job, plan, max_failures=int(job.max_failures),
                                           storage_path=str(Path(job.run_dir) / "ray-train"),
                                           run_name=f"train-{trial_id}"))
