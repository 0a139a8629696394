"""CANDLE's feature scalings with scikit-learn's semantics, in numpy (sklearn stays out of the stack).

`fit_scaler` returns plain JSON-able parameters so that the cache can store them next to the data
and prediction can apply the same transform later. Statistics are accumulated in float64 over row
blocks: a 4,320 x 60,483 TC1 matrix never gets a full float64 copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from candle_ray.data.spec import SCALINGS
from candle_ray.errors import DataError, UsageError

_ROWS = 2048  # rows per block for the float64 accumulations
_EPS = 10 * np.finfo(np.float64).eps  # sklearn's `_handle_zeros_in_scale` threshold


def _blocks(X):
    """Row blocks of one matrix or of several (fitting on train+val without concatenating them)."""
    for part in [X] if isinstance(X, np.ndarray) else X:
        for start in range(0, len(part), _ROWS):
            yield part[start : start + _ROWS]


def _width(X) -> int:
    parts = [X] if isinstance(X, np.ndarray) else list(X)
    widths = {p.shape[1] for p in parts}
    if len(widths) != 1 or any(p.ndim != 2 for p in parts):
        raise DataError(f"cannot fit a scaler on matrices of different widths {sorted(widths)}; all splits need the same features")
    return widths.pop()


def _rows(X) -> int:
    return len(X) if isinstance(X, np.ndarray) else sum(len(p) for p in X)


def _nonzero(scale: np.ndarray) -> np.ndarray:
    """Constant columns get scale 1, as sklearn does, instead of a division by zero."""
    scale = scale.copy()
    scale[scale < _EPS] = 1.0
    return scale


def _check_nonnegative(block: np.ndarray) -> None:
    if (block < 0).any():
        row, col = np.argwhere(block < 0)[0]
        # the feature, not the row: preparation scales the train split after its seeded shuffle
        raise DataError(f"scaling 'log' (log1p) needs non-negative features, found {float(block[row, col])!r} in "
                        f"feature {int(col) + 1}; choose another scaling (e.g. 'std') or fix the data")


def fit_scaler(kind: str, X: np.ndarray | Sequence[np.ndarray]) -> dict:
    """Fit `kind` (maxabs, minmax, std, log, none) on X, or on the rows of several matrices together.

    Returns {"kind": kind, ...} with per-feature lists: maxabs {"scale"}, minmax {"min", "scale"},
    std {"mean", "scale"}; log and none have no parameters (log only checks X >= 0).
    """
    if kind not in SCALINGS:
        raise UsageError(f"scaling {kind!r} is not one of {', '.join(SCALINGS)}")
    d = _width(X)
    if kind == "none":
        return {"kind": "none"}
    if kind == "log":
        for block in _blocks(X):
            _check_nonnegative(block)
        return {"kind": "log"}
    if _rows(X) == 0:
        raise DataError(f"cannot fit scaling {kind!r} on zero rows; the split is empty")
    if kind == "maxabs":
        top = np.zeros(d, dtype=np.float64)
        for block in _blocks(X):
            np.maximum(top, np.abs(block).max(axis=0), out=top)
        return {"kind": "maxabs", "scale": _nonzero(top).tolist()}
    if kind == "minmax":
        low = np.full(d, np.inf)
        high = np.full(d, -np.inf)
        for block in _blocks(X):
            np.minimum(low, block.min(axis=0), out=low)
            np.maximum(high, block.max(axis=0), out=high)
        return {"kind": "minmax", "min": low.tolist(), "scale": _nonzero(high - low).tolist()}
    # std: two passes (mean, then squared deviations) for accuracy; population variance like sklearn.
    n = _rows(X)
    total = np.zeros(d)
    for block in _blocks(X):
        total += block.sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(d)
    for block in _blocks(X):
        squares += np.square(block - mean).sum(axis=0)
    return {"kind": "std", "mean": mean.tolist(), "scale": _nonzero(np.sqrt(squares / n)).tolist()}


def apply_scaler(params: dict, X: np.ndarray) -> np.ndarray:
    """Apply fitted parameters to X; returns a new float32 matrix (X is never modified)."""
    kind = params.get("kind")
    if kind not in SCALINGS:
        raise UsageError(f"scaler parameters have kind {kind!r}, expected one of {', '.join(SCALINGS)}")
    X = np.asarray(X)
    if kind == "none":
        return np.array(X, dtype=np.float32, copy=True)
    out = np.empty(X.shape, dtype=np.float32)
    if kind == "log":
        for start in range(0, len(X), _ROWS):
            block = X[start : start + _ROWS]
            _check_nonnegative(block)
            out[start : start + _ROWS] = np.log1p(block.astype(np.float64))
        return out
    scale = np.asarray(params["scale"], dtype=np.float64)
    shift = np.asarray(params["min"] if kind == "minmax" else params["mean"], dtype=np.float64) if kind != "maxabs" else 0.0
    if X.ndim != 2 or X.shape[1] != scale.shape[0]:
        raise DataError(f"scaler was fitted on {scale.shape[0]} features but the data has shape {X.shape}; rebuild the cache entry")
    for start in range(0, len(X), _ROWS):
        out[start : start + _ROWS] = (X[start : start + _ROWS] - shift) / scale
    return out


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    """Integer labels [n] -> float32 one-hot [n, classes] (Keras `to_categorical`)."""
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= classes):
        bad = y[(y < 0) | (y >= classes)][0]
        raise DataError(f"label {bad.item()!r} is out of range for {classes} classes; labels must be integers in [0, {classes})")
    out = np.zeros((len(y), classes), dtype=np.float32)
    out[np.arange(len(y)), y.astype(np.int64)] = 1.0
    return out
