"""TC1: CANDLE's 18-type tumour classifier on RNA-seq (Pilot1 benchmark 5) in pure PyTorch.

Keras reference (same builder as NT3): Conv1D(128, 20) → ReLU → MaxPool(1) → Conv1D(128, 10) → ReLU →
MaxPool(10) → Flatten → Dense 200 → ReLU → Dropout → Dense 20 → ReLU → Dropout → Dense 36 (softmax),
154,923,632 parameters for 60,483 input features.

Keras-vs-PyTorch choices:
* 36 output units for 18 tumour types: CANDLE one-hot encodes the labels to `classes=36`, so the Keras
  net has 18 never-used outputs. DEFAULTS keep 36 so the count matches the reference; when trained here
  `classes` comes from the data (18), which drops the dead units (20*18+18 = 378 fewer parameters).
* No softmax: the model returns logits and the loss (CrossEntropyLoss) applies it.
* glorot_uniform kernels and zero biases, as Keras (PyTorch's default init differs).
* Conv1d is channels-first, so the flatten order differs from Keras' channels-last (matters only when
  porting weights); the flatten width (6,045 x 128 = 773,760) is the same.
* `conv` is read as (filters, kernel, stride) triples; a triple with a value <= 0 ends the stack;
  `pool[i]` is the max-pool size after conv layer i. If the first triple is already <= 0, the Dense
  layers act position-wise on the (features, 1) input and the flatten comes just before the output layer
  ("dense-first"), as in tc1_baseline_keras2.py; the output layer then has features x dense[-1] inputs.
"""

import torch
from torch import nn

from ._layers import activation, keras_init_
from .nt3 import DEFAULTS as NT3_DEFAULTS
from .nt3 import conv_stack

REFERENCE_PARAMS = 154_923_632
# NT3's layers and defaults, with CANDLE's 36 output units.
DEFAULTS = {**NT3_DEFAULTS, "classes": 36}
DESCRIPTION = "TC1 18-type tumour classifier: NT3-style 1-D convolutions + dense head, 36 outputs (CANDLE Pilot1)"


class TC1(nn.Module):
    def __init__(self, input_dim, classes, conv, pool, dense, dropout, activation_name):
        super().__init__()
        features, channels, length = conv_stack(input_dim, conv, pool, activation_name)
        self.dense_first = not features
        self.features = nn.Sequential(*features)
        # dense-first: Linear acts on the last axis of (batch, features, 1), i.e. per input position.
        head, width = ([] if self.dense_first else [nn.Flatten()]), (1 if self.dense_first else channels * length)
        for units in dense:
            if units and units > 0:
                head += [nn.Linear(width, int(units)), activation(activation_name)]
                if dropout:
                    head.append(nn.Dropout(dropout))
                width = int(units)
        if self.dense_first:
            head.append(nn.Flatten())
            width *= int(input_dim)
        head.append(nn.Linear(width, int(classes)))
        self.head = nn.Sequential(*head)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_first:
            return self.head(x.unsqueeze(-1))  # (batch, features, 1)
        return self.head(self.features(x.unsqueeze(1)))  # (batch, 1 channel, features)


def build(config: dict) -> nn.Module:
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    return TC1(c["input_dim"], c["classes"], c["conv"], c["pool"], c["dense"], c["dropout"], c["activation"])
