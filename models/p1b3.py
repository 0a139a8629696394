"""P1B3: CANDLE's single-drug growth regressor on NCI60 (Pilot1 benchmark 3) in pure PyTorch.

Keras reference: Dense 1000 → 500 → 100 → 50, each Dense → [BatchNorm] → ReLU → Dropout 0.1, then Dense 1
(linear); 30,088,701 parameters for 29,532 inputs. Optional conv front end (p1b3_conv_model.txt:
conv=[10, 10, 5, 10, 10, 5], pool=10): per (filters, kernel, stride) triple Conv1D → [BatchNorm] →
activation → MaxPool(pool), then Flatten.

Input convention: one flat tensor (batch, input_dim) with CANDLE's column order: the raw log10
concentration, then the cell features, then the drug features (1 + 25,722 + 3,809 = 29,532 by default).
No segmenting is needed: the first Dense sees the whole concatenation, as in Keras.

Keras-vs-PyTorch choices:
* `initialization` follows CANDLE's names with Keras semantics: default "normal" = N(0, 0.05) kernels
  (Keras' RandomNormal), biases 0; "glorot_*", "he_normal", "lecun_*" use Keras' truncated-normal /
  uniform variance scaling. The output Dense keeps Keras' default glorot_uniform, as in the Keras code.
* BatchNorm uses Keras' defaults: PyTorch momentum 0.01 (= Keras momentum 0.99) and eps 1e-3.
* Conv1d is channels-first (Keras is channels-last); only the flatten order differs.
* CANDLE builds either the dense or the conv model; here a valid `conv` is followed by the `dense`
  layers (entries <= 0 are skipped, so dense=[0] gives the reference conv model: Flatten → Dense 1).
"""

import torch
from torch import nn

from ._layers import activation, init_kernel_

REFERENCE_PARAMS = 30_088_701
DEFAULTS = {
    "input_dim": 29532,
    "classes": 1,
    "dense": [1000, 500, 100, 50],
    "activation": "relu",
    "dropout": 0.1,
    "batch_normalization": False,
    "initialization": "normal",
    "conv": [0, 0, 0],  # off; e.g. [10, 10, 5, 10, 10, 5] as (filters, kernel, stride) triples
    "pool": 10,  # max-pool size after every conv layer (a list gives one per layer; 0/1 = none)
}
DESCRIPTION = "P1B3 drug-response (growth) regressor: dense stack on dose + cell + drug features (CANDLE Pilot1)"

# Keras VarianceScaling (scale, fan mode, distribution) for CANDLE's `initialization` names.
class P1B3(nn.Module):
    def __init__(self, c):
        super().__init__()
        act, bn, length = c["activation"], c["batch_normalization"], int(c["input_dim"])
        pool, conv, layers, channels = c["pool"], c["conv"], [], 1
        for i in range(0, len(conv) - len(conv) % 3, 3):
            filters, kernel, stride = (int(v) for v in conv[i:i + 3])
            if filters <= 0 or kernel <= 0 or stride <= 0:
                break
            if length < kernel:
                raise ValueError(f"conv layer {i // 3 + 1} (kernel {kernel}) is longer than its input ({length})")
            layers.append(nn.Conv1d(channels, filters, kernel, stride=stride))
            channels, length = filters, (length - kernel) // stride + 1
            layers += [nn.BatchNorm1d(filters, momentum=0.01, eps=1e-3)] if bn else []
            layers.append(activation(act))
            size = int(pool if isinstance(pool, (int, float)) else (pool[i // 3] if i // 3 < len(pool) else 0))
            if size > 1:
                layers.append(nn.MaxPool1d(size))
                length = (length - size) // size + 1
        self.conv = bool(layers)
        width = channels * length
        if self.conv:
            layers.append(nn.Flatten())
        for units in c["dense"]:
            if units and units > 0:
                layers.append(nn.Linear(width, int(units)))
                layers += [nn.BatchNorm1d(int(units), momentum=0.01, eps=1e-3)] if bn else []
                layers.append(activation(act))
                layers += [nn.Dropout(c["dropout"])] if c["dropout"] else []
                width = int(units)
        self.body, self.out = nn.Sequential(*layers), nn.Linear(width, int(c["classes"]))
        for m in self.body.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                init_kernel_(m.weight, c["initialization"])
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.out.weight)  # Keras default for the output Dense
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x.unsqueeze(1) if self.conv else x))


def build(config: dict) -> nn.Module:
    return P1B3({**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}})
