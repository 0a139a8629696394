"""P3B1: CANDLE's multi-task classifier of pathology-report features (Pilot3 benchmark 1) in pure PyTorch.

Keras reference: Input(400) → shared Dense stack `shared_nnet_spec` (1200, 2400, 3600 x 7, 2400; ReLU,
optional Dropout) → per task a tower `ind_nnet_spec` (2400, 2400, 1200, 1200) → Dense n_classes softmax,
for 3 tasks (primary site 13, laterality 2, grade 4 classes). CANDLE builds one Keras Model per task on
the shared layers and trains them in turn, each on its own data.

The reference gives no parameter count, so REFERENCE_PARAMS is None; by the specification the count at
DEFAULTS is 145,995,619 = shared 98,431,200 + 3 towers x 15,847,200 + outputs (15,613 + 2,402 + 4,804).

Interface: `classes` is a list of per-task class counts (an int means a single task). `forward(x)`
returns a tuple with one logits tensor per task; `forward(x, task=k)` returns task k's logits only
(what CANDLE's per-task training needs: each task's batches come from its own data). With an int
`classes` forward returns one tensor.

`ind_nnet_spec` is one tower for every task (a list of widths), a list of per-task lists, or CANDLE's
string form ("2400, 2400, 1200, 1200:2400, ..." with ':' between tasks).

Keras-vs-PyTorch choices: no output softmax (logits; CrossEntropyLoss applies it); glorot_uniform
kernels and zero biases (CANDLE's `initialization='glorot_uniform'`).
"""

import torch
from torch import nn

from ._layers import activation, keras_init_

REFERENCE_PARAMS = None
DEFAULTS = {
    "input_dim": 400,
    "classes": [13, 2, 4],
    "shared_nnet_spec": [1200, 2400, 3600, 3600, 3600, 3600, 3600, 3600, 3600, 2400],
    "ind_nnet_spec": [2400, 2400, 1200, 1200],
    "activation": "relu",
    "dropout": 0.0,
}
DESCRIPTION = "P3B1 multi-task pathology-report classifier: shared dense trunk + 3 task towers (CANDLE Pilot3)"


def _towers(spec, tasks):
    if isinstance(spec, str):
        spec = [[int(v) for v in part.replace(",", " ").split()] for part in spec.split(":")]
    spec = list(spec)
    if spec and isinstance(spec[0], (list, tuple)):
        if len(spec) != tasks:
            raise ValueError(f"ind_nnet_spec has {len(spec)} towers for {tasks} tasks")
        return [list(s) for s in spec]
    return [spec] * tasks


def _dense(width, sizes, act, dropout):
    layers = []
    for units in sizes:
        if units and units > 0:
            layers += [nn.Linear(width, int(units)), activation(act)]
            layers += [nn.Dropout(dropout)] if dropout else []
            width = int(units)
    return nn.Sequential(*layers), width


class P3B1(nn.Module):
    def __init__(self, input_dim, classes, shared, ind, act, dropout):
        super().__init__()
        self.multi = isinstance(classes, (list, tuple))
        classes = [int(c) for c in classes] if self.multi else [int(classes)]
        self.shared, width = _dense(int(input_dim), shared, act, dropout)
        self.towers = nn.ModuleList()
        for sizes, n in zip(_towers(ind, len(classes)), classes):
            tower, out = _dense(width, sizes, act, dropout)
            self.towers.append(nn.Sequential(tower, nn.Linear(out, n)))
        keras_init_(self)

    def forward(self, x: torch.Tensor, task: int | None = None):
        h = self.shared(x)
        if task is not None:
            return self.towers[task](h)
        outs = tuple(tower(h) for tower in self.towers)
        return outs if self.multi else outs[0]


def build(config: dict) -> nn.Module:
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    return P3B1(c["input_dim"], c["classes"], c["shared_nnet_spec"], c["ind_nnet_spec"], c["activation"],
                c["dropout"])
