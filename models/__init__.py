"""The model registry. Each `models/<name>.py` holds DEFAULTS, DESCRIPTION, REFERENCE_PARAMS and
`build(config) -> nn.Module`; `input_dim` and `classes` (outputs) come from the data at training time.
A module may define `from_candle_file(values) -> values`, where CANDLE's own config file spells its keys otherwise.

Installed as `candle_ray.models`, so no generic top-level `models` package lands in site-packages.
Importing this module is cheap; a model's module (and torch) is imported on first use.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

NAMES = ("nt3", "mlp", "tc1", "p1b1", "p1b2", "p1b3", "uno", "combo", "attn", "p3b1")
# The models whose module defines from_candle_file: only theirs is imported (with torch) to read a CANDLE file,
# which the train driver otherwise does after its first epoch (candle_ray.train).
CANDLE_FILE_SPELLINGS = ("attn",)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    defaults: dict
    reference_params: int | None


def _module(name: str):
    if name not in NAMES:
        close = difflib.get_close_matches(name, NAMES, n=2)
        hint = f"did you mean {' or '.join(close)}?" if close else f"registered models: {', '.join(NAMES)}"
        raise KeyError(f"unknown model {name!r}; {hint}")
    return importlib.import_module(f"{__name__}.{name}")


def info(name: str) -> ModelInfo:
    m = _module(name)
    return ModelInfo(name, m.DESCRIPTION, dict(m.DEFAULTS), m.REFERENCE_PARAMS)


def from_candle_file(name: str, values: dict) -> dict:
    """Config values read from a CANDLE `*_default_model.txt`, in model `name`'s own terms: a model whose
    CANDLE file spells a key otherwise defines `from_candle_file(values)` (attn: its output layer); ValueError
    for what the model cannot take."""
    return _module(name).from_candle_file(values) if name in CANDLE_FILE_SPELLINGS else values


def build(name: str, config: dict):
    """Build model `name` from a config holding its keys (missing keys take the model's defaults)."""
    return _module(name).build(config)


def build_with_weights(name: str, config: dict, weights: dict):
    """Model `name` holding `weights` (a state dict): built on the meta device and given those tensors, so
    no layer is initialised only to be overwritten (a 24 M-parameter Uno: 0.6-0.8 s instead of 2.0-2.2 s)."""
    import torch

    with torch.device("meta"):
        model = build(name, config)
    model.load_state_dict(weights, assign=True)
    return model


def count_parameters(name: str, config: dict | None = None) -> int:
    """Parameter count as Keras reports it (without allocating memory: built on the meta device).

    Keras counts BatchNorm's moving mean and variance as (non-trainable) weights; PyTorch keeps them
    as buffers, so they are added here to compare with the Keras references.
    """
    import torch

    with torch.device("meta"):
        model = build(name, {**info(name).defaults, **(config or {})})
    moving = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)
    return sum(p.numel() for p in model.parameters()) + moving
