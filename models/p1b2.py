"""P1B2: CANDLE's cancer-type classifier from somatic SNP features (Pilot1 benchmark 2) in pure PyTorch.

Keras reference: Dense 1024 → 512 → 256 (sigmoid, L2 1e-5 on kernels and activities, optional Dropout)
→ Dense 10 with the *same* sigmoid activation, trained with categorical crossentropy; 29,540,618
parameters for 28,204 input features.

Keras-vs-PyTorch choices:
* Sigmoid output under categorical crossentropy: Keras' loss renormalises the sigmoid outputs,
  p_i = sigmoid(z_i) / sum_j sigmoid(z_j). With `out_activation="sigmoid"` (default) the model returns
  log(sigmoid(z)), so CrossEntropyLoss (which applies softmax to its input) computes exactly that
  renormalised loss, and argmax is unchanged. `out_activation="linear"` returns plain logits (the usual
  softmax classifier, as in CANDLE's PyTorch prototype).
* L2 regularisation can't be part of a forward pass: `model.regularization_loss()` returns
  reg_l2 * (sum of squared hidden kernels + batch-mean of the squared hidden activations of the last
  forward pass, as tf.keras' activity regulariser), for the training loop to add to the loss. Weight
  decay in the optimiser is the usual stand-in for the kernel part.
* glorot_uniform kernels and zero biases, as Keras.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ._layers import activation, keras_init_

REFERENCE_PARAMS = 29_540_618
DEFAULTS = {
    "input_dim": 28204,
    "classes": 10,
    "dense": [1024, 512, 256],
    "activation": "sigmoid",
    "out_activation": "sigmoid",
    "dropout": 0.0,
    "reg_l2": 1e-5,
}
DESCRIPTION = "P1B2 cancer type from somatic SNPs: dense sigmoid classifier, sigmoid output (CANDLE Pilot1)"


class P1B2(nn.Module):
    def __init__(self, input_dim, classes, dense, activation_name, out_activation, dropout, reg_l2):
        super().__init__()
        if out_activation not in ("sigmoid", "linear", "softmax"):
            raise ValueError(f"out_activation={out_activation!r}; use sigmoid (Keras P1B2) or linear/softmax (logits)")
        self.hidden, width = nn.ModuleList(), int(input_dim)
        for units in dense:
            if units and units > 0:
                self.hidden.append(nn.Linear(width, int(units)))
                width = int(units)
        self.act, self.drop = activation(activation_name), nn.Dropout(dropout) if dropout else nn.Identity()
        self.out = nn.Linear(width, int(classes))
        self.log_sigmoid_out, self.reg_l2, self._activity = out_activation == "sigmoid", float(reg_l2), None
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activity = x.new_zeros(())
        for layer in self.hidden:
            x = self.act(layer(x))
            activity = activity + x.square().sum() / x.shape[0]
            x = self.drop(x)
        self._activity = activity
        z = self.out(x)
        return F.logsigmoid(z) if self.log_sigmoid_out else z

    def regularization_loss(self) -> torch.Tensor:
        kernels = sum(layer.weight.square().sum() for layer in self.hidden)
        return self.reg_l2 * (kernels + (self._activity if self._activity is not None else 0.0))


def build(config: dict) -> nn.Module:
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    return P1B2(c["input_dim"], c["classes"], c["dense"], c["activation"], c["out_activation"], c["dropout"],
                c["reg_l2"])
