"""P1B1: CANDLE's gene-expression autoencoder (Pilot1 benchmark 1): `model` = "ae" | "vae" | "cvae".

Keras reference (`model='ae'`, dense=[2000, 600], latent_dim=2, 60,483 features): encoder Dense 2000 →
Dense 600 → Dense 2 (all `activation`), decoder Dense 600 → Dense 2000 → Dense 60,483 sigmoid;
244,400,085 parameters. Every hidden Dense is followed by [residual add when the widths match] →
[BatchNorm] → [Dropout or AlphaDropout], in that order. "vae"/"cvae" replace the latent Dense by linear
`z_mean` and `z_log_var` layers (latent_dim each) and sample z = z_mean + exp(z_log_var / 2) * eps,
eps ~ N(0, epsilon_std^2); "cvae" concatenates a one-hot condition (the cancer type) to the encoder's
and the decoder's inputs.

Input convention: one flat tensor (batch, input_dim). For "cvae" its last `condition_dim` columns are the
one-hot condition, so the reconstructed width is input_dim - condition_dim; `classes` (the number of
outputs) must equal that width (it is checked).

Keras-vs-PyTorch choices:
* The decoder output keeps Keras' sigmoid (inputs are min-max scaled to [0, 1] and the loss is mse, or
  binary crossentropy for the VAE); CANDLE's PyTorch prototype used ReLU there instead.
* glorot_uniform kernels and zero biases, as Keras (CANDLE's default `initialization`).
* BatchNorm uses Keras' defaults: PyTorch momentum 0.01 (= Keras momentum 0.99) and eps 1e-3.
* VAE sampling happens in training mode only; in eval mode the decoder gets z_mean (deterministic
  inference). Keras' Lambda layer samples in both modes.
* The KL term can't live in the model's output: after each forward pass of a "vae"/"cvae" the per-sample
  KL divergence is in `model.kl` (shape [batch]); CANDLE's loss is mean(BCE(x, x̂) + kl / features).
"""

import torch
from torch import nn

from ._layers import activation, keras_init_

REFERENCE_PARAMS = 244_400_085  # model="ae"
DEFAULTS = {
    "input_dim": 60483,
    "classes": 60483,  # an autoencoder reconstructs its features
    "model": "ae",
    "dense": [2000, 600],
    "latent_dim": 2,
    "activation": "relu",
    "dropout": 0.0,
    "alpha_dropout": False,
    "batch_normalization": False,
    "residual": False,
    "epsilon_std": 1.0,
    "condition_dim": 0,  # cvae only: one-hot condition columns at the end of the input
}
DESCRIPTION = "P1B1 RNA-seq autoencoder (ae / vae / cvae), dense encoder + mirrored decoder (CANDLE Pilot1)"


class Block(nn.Module):
    """Dense + activation → [residual add if widths match] → [BatchNorm] → [(Alpha)Dropout]."""

    def __init__(self, width_in, units, act, residual, batch_norm, dropout, alpha_dropout):
        super().__init__()
        self.dense, self.act = nn.Linear(width_in, units), activation(act)
        self.residual = residual and width_in == units
        self.norm = nn.BatchNorm1d(units, momentum=0.01, eps=1e-3) if batch_norm else nn.Identity()
        self.drop = (nn.AlphaDropout if alpha_dropout else nn.Dropout)(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        h = self.act(self.dense(x))
        if self.residual:
            h = h + x
        return self.drop(self.norm(h))


class P1B1(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.kind = c["model"]
        if self.kind not in ("ae", "vae", "cvae"):
            raise ValueError(f"model={self.kind!r}; use ae, vae or cvae")
        self.cond = int(c["condition_dim"]) if self.kind == "cvae" else 0
        if self.kind == "cvae" and self.cond <= 0:
            raise ValueError("model=cvae needs condition_dim > 0 (one-hot condition columns at the end of the input)")
        self.features = int(c["input_dim"]) - self.cond
        if int(c["classes"]) != self.features:
            raise ValueError(f"an autoencoder reconstructs its input: classes must be {self.features} "
                             f"(input_dim - condition_dim), got {c['classes']}")
        latent, self.epsilon_std = int(c["latent_dim"]), float(c["epsilon_std"])
        layers = [int(u) for u in c["dense"] if u and u > 0]
        opts = (c["activation"], c["residual"], c["batch_normalization"], c["dropout"], c["alpha_dropout"])

        def stack(width, sizes):
            blocks = []
            for units in sizes:
                blocks.append(Block(width, units, *opts))
                width = units
            return nn.Sequential(*blocks), width

        self.encoder, width = stack(self.features + self.cond, layers)
        if self.kind == "ae":
            self.latent = nn.Sequential(nn.Linear(width, latent), activation(c["activation"]))
        else:
            self.z_mean, self.z_log_var = nn.Linear(width, latent), nn.Linear(width, latent)
        self.decoder, width = stack(latent + self.cond, layers[::-1])
        self.output = nn.Sequential(nn.Linear(width, self.features), nn.Sigmoid())
        self.kl = None
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cond = x[:, self.features:]  # empty unless cvae
        h = self.encoder(x)
        if self.kind == "ae":
            z = self.latent(h)
        else:
            z_mean, z_log_var = self.z_mean(h), self.z_log_var(h)
            self.kl = -0.5 * torch.sum(1 + z_log_var - z_mean.square() - z_log_var.exp(), dim=-1)
            z = z_mean
            if self.training:
                z = z + torch.exp(z_log_var / 2) * torch.randn_like(z_mean) * self.epsilon_std
        return self.output(self.decoder(torch.cat([z, cond], dim=1) if self.cond else z))


def build(config: dict) -> nn.Module:
    return P1B1({**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}})
