"""Checkpoints: atomic, checksummed, self-describing (model name + config + weights).

Layout of a run's `checkpoints/` folder (after CANDLE's ckpt_utils):
  epoch-0007.pt   torch.save of the state dict below, written to a temporary name and renamed
  last.json       {"file", "sha256", "epoch", ...}: replaced atomically after the .pt file is in place
  best.json       the same for the best epoch by the experiment's metric
Epoch files that neither pointer names are deleted. Loading verifies the sha256 and uses
`torch.load(weights_only=True)`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from candle_ray.errors import CheckpointError

FORMAT = 1
KINDS = ("last", "best")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class _HashingWriter:
    """A file wrapper that hashes what torch.save writes: the checksum costs no second read."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save(directory: str | Path, state: dict, *, kinds=("last",), value: float | None = None) -> Path:
    """Write `state` as epoch-NNNN.pt and point each of `kinds` (last, best) at it. `value`: the best
    pointer's metric value, where it is not the state's best (a cv fold's, at the epoch its trial chose)."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    epoch = int(state["epoch"])
    path = directory / f"epoch-{epoch:04d}.pt"
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        writer = _HashingWriter(f)
        torch.save({**state, "format": FORMAT}, writer)
    digest = writer.sha256.hexdigest()
    os.replace(tmp, path)
    pointer = {"file": path.name, "sha256": digest, "epoch": epoch, "model": state.get("model"), "origin": state.get("origin"),
               "metric": state.get("best", {}).get("metric"), "value": state.get("best", {}).get("value")}
    for kind in kinds:
        _write_json_atomic(directory / f"{kind}.json", {**pointer, "value": value} if kind == "best" and
                           value is not None else pointer)
    _prune(directory)
    return path


def without_optimizer(state: dict) -> dict:
    """A checkpoint's state for models and copies: only resuming a training reads the optimizer's state (from
    the run's own folder), and Adam's is twice the size of the weights. `save` writes the format anew."""
    return {k: v for k, v in state.items() if k not in ("optimizer", "format")}


def slim(directory: str | Path) -> int:
    """A finished run's checkpoints as its best epoch alone, without the optimizer's state (only resuming a
    training reads that, and a finished run is not resumed): Adam's moments are twice the weights, and the
    newest epoch another copy of both. The best is rewritten under its own name, so either pointer finds it;
    returns the bytes freed."""
    directory = Path(directory)
    best = pointer(directory, "best")
    files = list(directory.glob("epoch-*.pt"))
    if best is None or not files:
        return 0
    state = load(directory / best["file"])
    if "optimizer" not in state and [p.name for p in files] == [best["file"]]:
        return 0  # slim already
    before = sum(p.stat().st_size for p in files)
    if "optimizer" in state:
        save(directory, without_optimizer(state), kinds=KINDS, value=best.get("value"))
    else:  # the loop wrote the best without it (only a `last` carries it): point `last` there too
        _write_json_atomic(directory / "last.json", best)
        _prune(directory)
    return before - sum(p.stat().st_size for p in directory.glob("epoch-*.pt"))


def _prune(directory: Path) -> None:
    keep = set()
    for kind in KINDS:
        pointer = directory / f"{kind}.json"
        if pointer.exists():
            keep.add(json.loads(pointer.read_text())["file"])
    for path in directory.glob("epoch-*.pt"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def pointer(directory: str | Path, kind: str = "last") -> dict | None:
    path = Path(directory) / f"{kind}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint pointer {path} is unreadable ({exc}); delete {path.parent} to start over") from None


def trial_folders(trial_dir: Path) -> list[Path]:
    """A trial's checkpoint folders: its `checkpoints/`, or one per fold with `tune --cv` (fold-k/checkpoints,
    pooled as the trial's model); none when it has neither."""
    folds = sorted(trial_dir.glob("fold-*/checkpoints"), key=lambda p: int(p.parent.name.split("-")[1]))
    return folds or ([trial_dir / "checkpoints"] if (trial_dir / "checkpoints").is_dir() else [])


def resolve(path: str | Path, kind: str = "best") -> Path:
    """A checkpoint file from a run dir, a checkpoints dir, or a .pt file."""
    path = Path(path)
    if path.is_file():
        return path
    for directory in (path / "checkpoints", path):
        p = pointer(directory, kind)
        if p:
            return directory / p["file"]
    raise CheckpointError(f"no {kind} checkpoint under {path}; pass a run directory, its checkpoints/ folder or a .pt file")


def load(path: str | Path, kind: str = "last", *, map_location="cpu", missing_ok=False) -> dict | None:
    """Load and verify a checkpoint; `path` is a checkpoints dir (uses `kind`'s pointer) or a .pt file."""
    import torch

    path = Path(path)
    expected = None
    if path.is_dir() or not path.exists():
        p = pointer(path, kind)
        if p is None:
            if missing_ok:
                return None
            raise CheckpointError(f"no {kind} checkpoint in {path}; train first or pass another folder")
        path, expected = path / p["file"], p["sha256"]
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing; delete {path.parent} to start over")
    if expected is None:  # a bare .pt file: find the pointer that names it
        for kind_ in KINDS:
            p = pointer(path.parent, kind_)
            if p and p["file"] == path.name:
                expected = p["sha256"]
    if expected is not None and _sha256(path) != expected:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (corrupt or changed); "
                              f"delete it or resume from another run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is corrupt") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a candle-ray checkpoint (format {FORMAT})")
    return state


def rebuild(path: str | Path, kind: str = "best", *, map_location="cpu"):
    """The model stored in a checkpoint, weights loaded, in eval mode — no experiment file needed."""
    from candle_ray import models

    state = load(resolve(path, kind), map_location=map_location)
    model = models.build_with_weights(state["model"], {**state["config"], **state["model_shape"]}, state["weights"])
    return model.eval(), state
