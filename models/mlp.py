"""A dense classifier/regressor for a user's own feature matrix (CANDLE-style `dense` list)."""

from torch import nn

from ._layers import activation, keras_init_

REFERENCE_PARAMS = None
DEFAULTS = {"input_dim": 1000, "classes": 2, "dense": [512, 128], "dropout": 0.1, "activation": "relu"}
DESCRIPTION = "multi-layer perceptron: Dense layers + activation + dropout (for your own matrices)"


class MLP(nn.Module):
    def __init__(self, input_dim, outputs, dense, dropout, activation_name):
        super().__init__()
        layers, width = [], int(input_dim)
        for units in dense:
            layers += [nn.Linear(width, int(units)), activation(activation_name)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(units)
        layers.append(nn.Linear(width, int(outputs)))
        self.net = nn.Sequential(*layers)
        keras_init_(self)

    def forward(self, x):
        return self.net(x)


def build(config: dict) -> nn.Module:
    c = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    return MLP(c["input_dim"], c["classes"], c["dense"], c["dropout"], c["activation"])
