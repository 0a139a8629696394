"""NT3: CANDLE's normal/tumour RNA-seq classifier (Pilot1 benchmark 4) in pure PyTorch.

Keras reference: Conv1D(128, 20) → ReLU → MaxPool(1) → Conv1D(128, 10) → ReLU → MaxPool(10) → Flatten →
Dense 200 → ReLU → Dropout → Dense 20 → ReLU → Dropout → Dense 2 (softmax), 154,922,918 parameters
for 60,483 input features. The softmax lives in the loss (CrossEntropyLoss takes logits).
`conv` is read as (filters, kernel, stride) triples; a triple with a value <= 0 ends the conv stack;
`pool[i]` is the max-pool size after conv layer i (0 or 1 = none).
"""

import torch
from torch import nn

from ._layers import activation, keras_init_

REFERENCE_PARAMS = 154_922_918
DEFAULTS = {
    "input_dim": 60483,
    "classes": 2,
    "conv": [128, 20, 1, 128, 10, 1],
    "pool": [1, 10],
    "dense": [200, 20],
    "dropout": 0.1,
    "activation": "relu",
}
DESCRIPTION = "NT3 normal/tumour classifier: 1-D convolutions over RNA-seq + dense head (CANDLE Pilot1)"


def conv_triples(conv):
    triples = []
    for i in range(0, len(conv) - len(conv) % 3, 3):
        filters, kernel, stride = conv[i:i + 3]
        if filters <= 0 or kernel <= 0 or stride <= 0:
            break
        triples.append((int(filters), int(kernel), int(stride)))
    return triples


def conv_stack(input_dim, conv, pool, activation_name):
    """CANDLE's Conv1D stack (shared by NT3 and TC1): layers, output channels and output length."""
    layers, channels, length = [], 1, int(input_dim)
    pool = [pool] if isinstance(pool, (int, float)) else list(pool or [])
    for i, (filters, kernel, stride) in enumerate(conv_triples(conv)):
        if length < kernel:
            raise ValueError(f"conv layer {i + 1} (kernel {kernel}) is longer than its input ({length}); "
                             f"shorten `conv` or use more features")
        layers += [nn.Conv1d(channels, filters, kernel, stride=stride), activation(activation_name)]
        channels, length = filters, (length - kernel) // stride + 1
        size = int(pool[i]) if i < len(pool) else 0
        if size > 1:
            if length < size:
                raise ValueError(f"pooling {size} after conv layer {i + 1} is longer than its output ({length}); "
                                 f"shorten `conv` or `pool`, or use more features")
            layers.append(nn.MaxPool1d(size))
            length = (length - size) // size + 1
    return layers, channels, length


class NT3(nn.Module):
    def __init__(self, input_dim, classes, conv, pool, dense, dropout, activation_name):
        super().__init__()
        layers, channels, length = conv_stack(input_dim, conv, pool, activation_name)
        self.features = nn.Sequential(*layers)
        head, width = [nn.Flatten()], channels * length
        for units in dense:
            if units and units > 0:
                head += [nn.Linear(width, int(units)), activation(activation_name)]
                if dropout:
                    head.append(nn.Dropout(dropout))
                width = int(units)
        head.append(nn.Linear(width, int(classes)))
        self.head = nn.Sequential(*head)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, features) → (batch, 1 channel, features): Conv1d is channels-first.
        return self.head(self.features(x.unsqueeze(1)))


def build(config: dict) -> nn.Module:
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    return NT3(c["input_dim"], c["classes"], c["conv"], c["pool"], c["dense"], c["dropout"], c["activation"])
