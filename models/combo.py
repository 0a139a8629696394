"""Combo: CANDLE's drug-pair growth regressor for NCI-ALMANAC (Pilot1) in pure PyTorch.

Keras reference (combo_baseline_keras2.py): one encoder per feature *type* — Dense `dense_feature_layers`
(1000 x 3, always ReLU) — shared by drug1 and drug2; concatenation → Dense `dense` (1000 x 3,
`activation`), each followed by dropout and an optional residual add (when widths match) → Dense 1.
13,742,001 parameters: encoders cell.expression 923 → 2,926,000 and drug.descriptors 3,809 → 5,812,000,
head (3 x 1000 = 3,000 → 1000 x 3 → 1) 5,004,001.

Input convention: one flat tensor (batch, input_dim) in CANDLE's `input_features` order, split here by
width: cell.<f> (`cell_feature_dims[i]` columns for each f in `cell_features`), then drug1.<f> and
drug2.<f> (`drug_feature_dims[i]` for each f in `drug_features`). Default 923 + 2 x 3,809 = 8,541;
input_dim must equal the sum (checked).

Keras-vs-PyTorch choices:
* Dropout is CANDLE's PermanentDropout: it stays active in eval mode (MC-dropout UQ), as in Keras;
  `permanent_dropout=False` gives ordinary dropout. With dropout > 0 two eval passes differ.
* glorot_uniform kernels and zero biases (Keras defaults; Combo sets no initializer).
* Encoders use ReLU whatever `activation` is, apply dropout too, and have no residual adds, as in Keras.
"""

import torch
from torch import nn

from ._layers import check_feature_dims, dense_stack, keras_init_, run_stack

REFERENCE_PARAMS = 13_742_001
DEFAULTS = {
    "input_dim": 8541,
    "classes": 1,
    "dense": [1000, 1000, 1000],
    "dense_feature_layers": [1000, 1000, 1000],
    "activation": "relu",
    "dropout": 0.0,
    "residual": False,
    "permanent_dropout": True,
    "cell_features": ["expression"],
    "cell_feature_dims": [923],  # landmark genes present in the expression table
    "drug_features": ["descriptors"],
    "drug_feature_dims": [3809],  # dragon7 descriptors
}
DESCRIPTION = "Combo drug-pair regressor (NCI-ALMANAC): shared per-feature encoders + dense head (CANDLE Pilot1)"


class Combo(nn.Module):
    def __init__(self, c):
        super().__init__()
        check_feature_dims(c)
        types = [(f"cell/{f}", int(w)) for f, w in zip(c["cell_features"], c["cell_feature_dims"])]
        drug_types = [(f"drug/{f}", int(w)) for f, w in zip(c["drug_features"], c["drug_feature_dims"])]
        # (encoder key, width) per input block, in CANDLE's order; drug encoders serve drug1 and drug2
        self.segments = types + drug_types + drug_types
        total = sum(w for _, w in self.segments)
        if total != int(c["input_dim"]):
            layout = " + ".join(f"{key} {w}" for key, w in self.segments)
            raise ValueError(f"combo input_dim={c['input_dim']} but the feature layout is {layout} = {total}")
        drop, perm = c["dropout"], c["permanent_dropout"]
        self.encoders, encoded = nn.ModuleDict(), {}
        for key, width in types + drug_types:
            self.encoders[key], encoded[key] = dense_stack(width, c["dense_feature_layers"], "relu", drop, perm, False)
        merged = sum(encoded[key] for key, _ in self.segments)
        self.head, width = dense_stack(merged, c["dense"], c["activation"], drop, perm, c["residual"])
        self.out = nn.Linear(width, int(c["classes"]))
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, [w for _, w in self.segments], dim=1)
        encoded = [run_stack(self.encoders[key], part) for part, (key, _) in zip(parts, self.segments)]
        return self.out(run_stack(self.head, torch.cat(encoded, dim=1)))


def build(config: dict) -> nn.Module:
    return Combo({**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}})
