"""Which trials' weights a sweep keeps (`tune --keep-checkpoints K`): the running trials' and the K best finished
ones' (by the best-epoch rule of candle_ray.summary; with several objectives, the Pareto front's as well).

A finished trial that is not among them can never be picked again (`predict SWEEP --top K`, `--pick`, the
best trial), since trials that finish later only add better candidates: its weights go as soon as it falls
out. PBT sweeps keep everything until the end (a donor's checkpoint may be cloned at any time). Plain Python:
the driver callback (candle_ray.callbacks) deletes the files and tags the MLflow run.
"""

from __future__ import annotations

import bisect
import math
import shutil
from pathlib import Path

from candle_ray.summary import finite, pareto_front, trial_tie, trial_value

WEIGHTS_TAG = "candle_ray.weights"  # on the MLflow run of a trial whose weights were dropped


class Retention:
    """Follows finished trials; says which ones' weights may go. `keep` 0 keeps every trial's."""

    def __init__(self, keep: int, objectives, defer: bool = False):
        self.keep, self.objectives, self.defer = keep, tuple(objectives), defer
        self.ranked: list[tuple[float, float, str]] = []  # finished trials with a value: (key, tie, id), best first
        self.values: dict[str, tuple] = {}  # several objectives: each finished trial's values
        self.dropped: set[str] = set()
        self.seen: set[str] = set()

    def _key(self, value: float) -> float:
        return value if self.objectives[0][1] == "min" else -value

    def finished(self, trial_id: str, result: dict | None, failed: bool = False) -> list[str]:
        """`trial_id` ended (with its last result): the finished trials whose weights may go now."""
        if not self.keep or trial_id in self.seen:
            return []
        self.seen.add(trial_id)
        value = None if failed else trial_value(result, self.objectives[0][0])
        if not finite(value):
            return self._drop([trial_id]) if not self.defer else []  # a failed trial is never picked
        tie = trial_tie(result, self.objectives[0][0])  # equal values: as summary.ranked orders them
        entry = (self._key(value), tie if finite(tie) else math.inf, trial_id)
        index = bisect.bisect(self.ranked, entry)
        self.ranked.insert(index, entry)
        if len(self.objectives) > 1:
            self.values[trial_id] = tuple(trial_value(result, m) for m, _ in self.objectives)
        if self.defer:
            return []
        if len(self.objectives) == 1:
            # Each trial that fell past the K best was dropped then: now at most one is past them and kept,
            # this trial or the one it pushed out (no walk of all the ranked trials per trial).
            past = self.ranked[max(index, self.keep)][-1] if len(self.ranked) > self.keep else None
            return self._drop([past]) if past is not None and past not in self.dropped else []
        return self._drop(self._outside())

    def at_end(self) -> list[str]:
        """What may go once the sweep is over (a PBT sweep decides only then)."""
        return self._drop(self._outside()) if self.keep else []

    def _outside(self) -> list[str]:
        outside = [t for *_, t in self.ranked[self.keep:] if t not in self.dropped]
        if outside and len(self.objectives) > 1:  # a Pareto front member can still be picked (--pick)
            modes = tuple(mode for _, mode in self.objectives)
            front = set(pareto_front(list(self.values), self.values.get, modes))
            outside = [t for t in outside if t not in front]
        return outside

    def _drop(self, trial_ids: list[str]) -> list[str]:
        self.dropped.update(trial_ids)
        return trial_ids


def drop_files(store, sweep: str, work_dir: Path, trial_id: str) -> None:
    """Delete a trial's weights this driver can reach: its own checkpoint folders (one, one per --cv fold, or
    Ray Train's for an elastic trial) and the checkpoints it handed Tune in the sweep's storage (local or s3).
    Its other records stay."""
    trial = Path(work_dir) / "trials" / trial_id
    # ray-train: an elastic trial's Ray Train checkpoints (candle_ray.trial)
    for folder in [trial / "checkpoints", *trial.glob("fold-*/checkpoints"), trial / "ray-train"]:
        shutil.rmtree(folder, ignore_errors=True)
    drop_tune_copies(store, sweep, trial_id)


def slim_files(work_dir: Path, trial_id: str) -> None:
    """A finished trial's checkpoint folders this driver can reach keep its best epoch's weights only
    (checkpoint.slim): `predict`, `ensemble` and the sweep's model read nothing else, and a best and a newest
    epoch with Adam's moments are 6x the weights (Uno's full-space smoke sweep, RMSprop: 616 -> 308 MB). A
    best that fails its checks stays as it is, for whoever reads it to report."""
    from candle_ray import checkpoint
    from candle_ray.errors import CheckpointError

    for folder in checkpoint.trial_folders(Path(work_dir) / "trials" / trial_id):
        try:
            checkpoint.slim(folder)
        except CheckpointError:
            pass


def drop_tune_copies(store, sweep: str, trial_id: str) -> None:
    """Delete the checkpoints a trial handed Tune (copies of its checkpoint folder, in the sweep's storage).
    Once the trial has finished and its best weights are in MLflow, nothing reads them: Tune restores
    only unfinished trials, and `predict`, `ensemble` and the sweep's model read the trial's own folder or
    MLflow. Each holds the best and the newest epoch with optimizer state (3x the weights with Adam)."""
    import pyarrow.fs as pafs

    tune_dir = store.path(sweep, trial_id)
    for info in store.fs.get_file_info(pafs.FileSelector(tune_dir, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                store.fs.delete_dir(info.path)
            except FileNotFoundError:  # Tune's own retention (num_to_keep) got there first
                pass
