"""Small shared pieces for the benchmark models: Keras-compatible activations and initialisation."""

import torch
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
