"""One contract over every registered model."""

import pytest
import torch

from candle_ray import models

SMALL = {  # narrow inputs so the forward pass is fast; architecture otherwise at defaults
    "nt3": {"input_dim": 300, "conv": [8, 20, 1, 8, 10, 1]},
    "mlp": {"input_dim": 50},
}


@pytest.mark.parametrize("name", models.NAMES)
def test_contract(name):
    info = models.info(name)
    assert info.description and "input_dim" in info.defaults and "classes" in info.defaults
    if info.reference_params is not None:  # the Keras reference count, at the defaults
        assert models.count_parameters(name) == info.reference_params
    config = {**info.defaults, **SMALL[name]}
    torch.manual_seed(0)
    model = models.build(name, config).eval()
    x = torch.rand(3, config["input_dim"])
    out = model(x)
    assert out.shape == (3, config["classes"]) and torch.isfinite(out).all()
    torch.manual_seed(0)
    again = models.build(name, config).eval()
    assert torch.equal(again(x), out)  # same seed, same weights, same output
    out.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_small_set_is_complete():
    assert set(SMALL) == set(models.NAMES)


def test_nt3_reference_layers():
    with torch.device("meta"):
        model = models.build("nt3", {})
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes[:4] == [(128, 1, 20), (128,), (128, 128, 10), (128,)]
    assert shapes[4] == (200, 773_760)  # flatten 6,045 x 128, as in the Keras summary


def test_nt3_conv_stack_ends_at_nonpositive_triple():
    model = models.build("nt3", {"input_dim": 300, "conv": [4, 5, 1, 0, 0, 0, 9, 9, 9], "pool": [2]})
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 1


def test_nt3_too_deep_for_input():
    with pytest.raises(ValueError, match="longer than its input"):
        models.build("nt3", {"input_dim": 15})


def test_unknown_model():
    with pytest.raises(KeyError, match="did you mean nt3"):
        models.info("nt4")


def test_glorot_init_zero_bias():
    model = models.build("mlp", {"input_dim": 40})
    lin = model.net[0]
    bound = (6 / (40 + 512)) ** 0.5
    assert lin.bias.abs().sum() == 0 and lin.weight.abs().max() <= bound
