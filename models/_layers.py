"""Small shared pieces for the benchmark models: Keras-compatible activations and initialisation."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class HardSigmoid(nn.Module):
    """Keras 2's hard_sigmoid: clip(0.2 * x + 0.5, 0, 1) (PyTorch's Hardsigmoid uses x / 6 + 0.5)."""

    def forward(self, x):
        return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


_ACTIVATIONS = {
    "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "hard_sigmoid": HardSigmoid, "softplus": nn.Softplus, "softsign": nn.Softsign, "linear": nn.Identity,
    "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "softmax": lambda: nn.Softmax(dim=1),
}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}") from None


def keras_init_(module: nn.Module) -> None:
    """Keras defaults (glorot_uniform kernels, zero biases); PyTorch's own defaults differ."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


_VARIANCE = {"glorot_uniform": (1.0, "avg", "uniform"), "glorot_normal": (1.0, "avg", "normal"),
             "lecun_uniform": (1.0, "in", "uniform"), "lecun_normal": (1.0, "in", "normal"),
             "he_uniform": (2.0, "in", "uniform"), "he_normal": (2.0, "in", "normal")}


def init_kernel_(weight: torch.Tensor, name: str) -> None:
    """CANDLE's `initialization` names with Keras semantics (VarianceScaling, RandomNormal(0.05), ...)."""
    if name == "normal":
        nn.init.normal_(weight, 0.0, 0.05)
    elif name == "uniform":
        nn.init.uniform_(weight, -0.05, 0.05)
    elif name in ("constant", "zeros"):
        nn.init.zeros_(weight)
    elif name in _VARIANCE:
        scale, mode, dist = _VARIANCE[name]
        receptive = math.prod(weight.shape[2:])
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        n = {"in": fan_in, "avg": (fan_in + fan_out) / 2}[mode]
        if dist == "uniform":
            limit = math.sqrt(3.0 * scale / n)
            nn.init.uniform_(weight, -limit, limit)
        else:  # truncated at 2 sigma; 0.8796... restores the requested standard deviation
            std = math.sqrt(scale / n) / 0.87962566103423978
            nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
    else:
        raise ValueError(f"unknown initialization {name!r}; use normal, uniform, constant, {', '.join(_VARIANCE)}")


class PermanentDropout(nn.Dropout):
    """CANDLE's PermanentDropout: dropout in training *and* inference (Monte-Carlo dropout)."""

    def forward(self, x):
        return F.dropout(x, self.p, training=True)


def dense_stack(width, sizes, act, dropout, permanent, residual):
    """Dense layers, each followed by [dropout] and [residual add]; returns (modules, out width)."""
    layers = nn.ModuleList()
    for units in sizes:
        if units and units > 0:
            drop = (PermanentDropout if permanent else nn.Dropout)(dropout) if dropout > 0 else nn.Identity()
            block = nn.Sequential(nn.Linear(width, int(units)), activation(act), drop)
            block.residual = residual and width == int(units)
            layers.append(block)
            width = int(units)
    return layers, width


def run_stack(layers, h):
    for block in layers:
        h = block(h) + h if block.residual else block(h)
    return h


def check_feature_dims(c: dict) -> None:
    """Uno/Combo configs name their feature types and their widths in two aligned lists."""
    if len(c["cell_features"]) != len(c["cell_feature_dims"]) or \
            len(c["drug_features"]) != len(c["drug_feature_dims"]):
        raise ValueError("cell_feature_dims / drug_feature_dims need one width per "
                         "cell_features / drug_features entry")
