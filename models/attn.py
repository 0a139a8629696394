"""ATTN: CANDLE's attention-MLP drug-response classifier (Pilot1) in pure PyTorch.

Keras reference (attn_baseline_keras2.py, dense=[1000, 1000, 1000, 500, 250, 125, 60, 30, 2]):
    x = BatchNorm(Dense 1000 relu(input))
    a = BatchNorm(Dense 1000 relu(x));  b = Dense 1000 softmax(x)   # b: attention weights over 1000 units
    x = a * b
    Dense 500, 250, 125, 60, 30 (relu), each → BatchNorm → Dropout 0.2;  Dense 2 softmax.
Keras reports 8,893,437 parameters for 6,212 inputs (942 RNA-seq + 5,270 drug descriptors), of which
5,930 are non-trainable BatchNorm moving means/variances (2 x (1000 + 1000 + 500 + 250 + 125 + 60 + 30)).

Keras-vs-PyTorch choices:
* Parameter count: PyTorch keeps BatchNorm running statistics as buffers, not parameters (8,887,507
  trainable). `candle_ray.models.count_parameters` counts them as Keras does (its non-trainable
  weights), which gives Keras' 8,893,437.
* BatchNorm uses Keras' defaults: PyTorch momentum 0.01 (= Keras momentum 0.99) and eps 1e-3.
* No output softmax: the model returns logits and the loss (CrossEntropyLoss) applies it.
* glorot_uniform kernels and zero biases, as Keras.
* `dense` lists the hidden widths (CANDLE's list without the final output width, which is `classes`);
  dense[0..2] are the attention block (dense[1] == dense[2]). `activation` is one name for every hidden
  layer except the attention weights (always softmax, over the units), or CANDLE's per-layer list (one
  entry per dense entry, optionally plus the output's, which is ignored).
"""

import torch
from torch import nn

from ._layers import activation, keras_init_

REFERENCE_PARAMS = 8_893_437  # Keras' total: 8,887,507 trainable + 5,930 BatchNorm moving statistics
DEFAULTS = {
    "input_dim": 6212,
    "classes": 2,
    "dense": [1000, 1000, 1000, 500, 250, 125, 60, 30],
    "activation": "relu",
    "dropout": 0.2,
}
DESCRIPTION = "ATTN drug-response classifier: softmax-attention block + dense/BatchNorm stack (CANDLE Pilot1)"


def _bn(units):
    return nn.BatchNorm1d(units, momentum=0.01, eps=1e-3)


class Attn(nn.Module):
    def __init__(self, input_dim, classes, dense, act, dropout):
        super().__init__()
        dense = [int(u) for u in dense]
        if len(dense) < 3 or dense[1] != dense[2]:
            raise ValueError(f"attn needs dense[0..2] for the attention block with dense[1] == dense[2], got {dense}")
        if isinstance(act, str):
            acts = [act, act, "softmax"] + [act] * (len(dense) - 3)
        elif len(act) in (len(dense), len(dense) + 1):
            acts = list(act)[:len(dense)]
        else:
            raise ValueError(f"activation list needs {len(dense)} (or {len(dense) + 1}) entries, got {len(act)}")
        self.x = nn.Sequential(nn.Linear(int(input_dim), dense[0]), activation(acts[0]), _bn(dense[0]))
        self.a = nn.Sequential(nn.Linear(dense[0], dense[1]), activation(acts[1]), _bn(dense[1]))
        self.b = nn.Sequential(nn.Linear(dense[0], dense[2]), activation(acts[2]))
        tail, width = [], dense[2]
        for units, name in zip(dense[3:], acts[3:]):
            tail += [nn.Linear(width, units), activation(name), _bn(units)]
            tail += [nn.Dropout(dropout)] if dropout else []
            width = units
        self.tail, self.out = nn.Sequential(*tail), nn.Linear(width, int(classes))
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.x(x)
        return self.out(self.tail(self.a(x) * self.b(x)))


def from_candle_file(values: dict) -> dict:
    """CANDLE's attn_default_model.txt lists the output layer too: dense=[..., 30, 2] and one activation per
    entry, [..., 'relu', 'softmax'] (its code asserts equal lengths). Here `dense` holds the hidden widths
    (the output width is the data's classes) and `activation` one name for them; the attention weights are
    softmax whatever the name."""
    acts, dense = values.get("activation"), values.get("dense")
    if not isinstance(acts, (list, tuple)):
        return values
    if not isinstance(dense, (list, tuple)) or len(dense) != len(acts):
        raise ValueError(f"activation lists {len(acts)} layers but dense {dense!r} does not: CANDLE's attn file "
                         f"gives one activation per dense entry, the output layer's last")
    hidden = [name for i, name in enumerate(acts[:-1]) if i != 2]
    if len(acts) < 4 or acts[2] != "softmax" or len(set(hidden)) != 1:
        raise ValueError(f"activation={list(acts)}: attn takes one activation for every hidden layer and softmax "
                         f"for the attention weights (the third entry); write one name, e.g. activation='relu'")
    return {**values, "dense": list(dense)[:-1], "activation": hidden[0]}


def build(config: dict) -> nn.Module:
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    return Attn(c["input_dim"], c["classes"], c["dense"], c["activation"], c["dropout"])
