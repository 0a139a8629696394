"""Uno: CANDLE's unified drug-response regressor (single drugs and drug pairs) in pure PyTorch.

Keras reference (uno_baseline_keras2.py): one encoder per feature *type* — Dense `dense_feature_layers`
(1000 x 3, always ReLU) — shared by drug1 and drug2; doses (and the optional response-source one-hot) go
into the concatenation unencoded; head Dense `dense` (1000 x 3, `activation`), each followed by dropout
and an optional residual add (when widths match); Dense 1 linear.

Input convention: one flat tensor (batch, input_dim) whose columns follow CANDLE's `input_features` order
and are split here by width:
    dose1, dose2            1 column each (absent when `agg_dose` is set; dose2 absent when `single`)
    response.source         `response_source_dim` columns (0 = not encoded)
    cell.<f>                `cell_feature_dims[i]` columns for each f in `cell_features`
    drug1.<f>, drug2.<f>    `drug_feature_dims[i]` columns for each f in `drug_features` (drug2 unless `single`)
input_dim must equal the sum (checked).

Reference counts (all reproduced exactly):
* 21,275,001 at DEFAULTS ("all sources, drug pairs, landmark genes"): 2 doses + cell.rnaseq 942 + 2 x
  (descriptors 5,270 + fingerprints 2,048) = 15,580 inputs (the README's input width for that run), no
  response-source input: encoders 2,945,000 + 7,273,000 + 4,051,000, head (5,002 → 1000 x 3 → 1) 7,006,001.
* 16,224,001 for the AUC model (AUC_CONFIG: agg_dose, single drug, descriptors only, 5 head layers):
  encoders 2,945,000 + 7,273,000, head (2,000 → 1000 x 5 → 1) 6,006,001.
* 19,273,001 (single-drug UQ model) = AUC_CONFIG with fingerprints too and 3 head layers.

Keras-vs-PyTorch choices:
* Dropout is CANDLE's PermanentDropout: it stays active in eval mode (MC-dropout UQ), as in Keras;
  `permanent_dropout=False` gives ordinary dropout. With dropout > 0 two eval passes differ.
* Kernels use `initialization` (default glorot_normal, Keras' truncated normal), biases 0, as the Keras
  code (build_initializer) does, including the output layer.
* Encoders use ReLU whatever `activation` is and have no residual adds, as in Keras.
"""

import torch
from torch import nn

from ._layers import check_feature_dims, dense_stack, init_kernel_, run_stack

REFERENCE_PARAMS = 21_275_001
DEFAULTS = {
    "input_dim": 15580,
    "classes": 1,
    "dense": [1000, 1000, 1000],
    "dense_feature_layers": [1000, 1000, 1000],
    "dense_cell_feature_layers": None,  # override dense_feature_layers for cell encoders
    "dense_drug_feature_layers": None,  # ... and for drug encoders
    "activation": "relu",
    "dropout": 0.0,
    "residual": False,
    "permanent_dropout": True,
    "initialization": "glorot_normal",
    "single": False,
    "agg_dose": None,  # e.g. "AUC": dose-independent target, no dose inputs
    "response_source_dim": 0,
    "cell_features": ["rnaseq"],
    "cell_feature_dims": [942],  # landmark genes
    "drug_features": ["descriptors", "fingerprints"],
    "drug_feature_dims": [5270, 2048],  # dragon7 descriptors; PFP + ECFP bits
}
DESCRIPTION = "Uno drug-response regressor: shared per-feature-type encoders + dense head (CANDLE Pilot1)"

# uno_auc_model.txt: CCLE AUC, single drug, descriptors only, 5 x 1000 head, dropout 0.1.
AUC_CONFIG = {"agg_dose": "AUC", "single": True, "drug_features": ["descriptors"], "drug_feature_dims": [5270],
              "dense": [1000] * 5, "dropout": 0.1, "input_dim": 942 + 5270}
AUC_REFERENCE_PARAMS = 16_224_001


class Uno(nn.Module):
    def __init__(self, c):
        super().__init__()
        check_feature_dims(c)
        drugs = ["drug1"] if c["single"] else ["drug1", "drug2"]
        doses = [] if c["agg_dose"] else [d.replace("drug", "dose") for d in drugs]
        # (input name, width, encoder key or None) in CANDLE's input_features order
        self.segments = [(d, 1, None) for d in doses]
        if c["response_source_dim"]:
            self.segments.append(("response.source", int(c["response_source_dim"]), None))
        cells = dict(zip(c["cell_features"], map(int, c["cell_feature_dims"])))
        drug_dims = dict(zip(c["drug_features"], map(int, c["drug_feature_dims"])))
        self.segments += [(f"cell.{f}", w, f"cell.{f}") for f, w in cells.items()]
        self.segments += [(f"{d}.{f}", w, f"drug.{f}") for d in drugs for f, w in drug_dims.items()]
        total = sum(w for _, w, _ in self.segments)
        if total != int(c["input_dim"]):
            layout = " + ".join(f"{name} {w}" for name, w, _ in self.segments)
            raise ValueError(f"uno input_dim={c['input_dim']} but the feature layout is {layout} = {total}")

        drop, perm = c["dropout"], c["permanent_dropout"]
        self.encoders, widths = nn.ModuleDict(), {}
        types = [(f"cell.{f}", w) for f, w in cells.items()] + [(f"drug.{f}", w) for f, w in drug_dims.items()]
        for key, width in types:
            sizes = c["dense_cell_feature_layers"] if key.startswith("cell.") else c["dense_drug_feature_layers"]
            # ModuleDict keys can't contain ".", hence the "/" spelling
            self.encoders[key.replace(".", "/")], widths[key] = dense_stack(
                width, sizes or c["dense_feature_layers"], "relu", drop, perm, False)
        merged = sum(widths[key] if key else w for _, w, key in self.segments)
        self.head, width = dense_stack(merged, c["dense"], c["activation"], drop, perm, c["residual"])
        self.out = nn.Linear(width, int(c["classes"]))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init_kernel_(m.weight, c["initialization"])
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, [w for _, w, _ in self.segments], dim=1)
        encoded = [run_stack(self.encoders[key.replace(".", "/")], part) if key else part
                   for part, (_, _, key) in zip(parts, self.segments)]
        return self.out(run_stack(self.head, torch.cat(encoded, dim=1)))


def build(config: dict) -> nn.Module:
    return Uno({**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}})
