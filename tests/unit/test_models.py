"""One contract over every registered model."""

import pytest
import torch

from candle_ray import models

SMALL = {  # narrow inputs so the forward pass is fast; architecture otherwise at defaults
    "nt3": {"input_dim": 300, "conv": [8, 20, 1, 8, 10, 1]},
    "mlp": {"input_dim": 50},
    "tc1": {"input_dim": 300, "conv": [8, 20, 1, 8, 10, 1]},
    "p1b1": {"input_dim": 50, "classes": 50, "dense": [32, 16]},
    "p1b2": {"input_dim": 50, "dense": [32, 16, 8]},
    "p1b3": {"input_dim": 50, "dense": [32, 16, 8, 4]},
    "uno": {"input_dim": 2 + 10 + 2 * (12 + 8), "cell_feature_dims": [10], "drug_feature_dims": [12, 8],
            "dense": [16, 16, 16], "dense_feature_layers": [16, 16, 16]},
    "combo": {"input_dim": 10 + 2 * 12, "cell_feature_dims": [10], "drug_feature_dims": [12],
              "dense": [16, 16, 16], "dense_feature_layers": [16, 16, 16]},
    "attn": {"input_dim": 50, "dense": [32, 16, 16, 8, 8, 4, 4, 4]},
    "p3b1": {"input_dim": 50, "shared_nnet_spec": [32, 16], "ind_nnet_spec": [16, 8]},
}


def _flat(out):
    return torch.cat(out, dim=1) if isinstance(out, (tuple, list)) else out


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
    classes = config["classes"]
    if isinstance(classes, (list, tuple)):  # multi-task (p3b1): one logits tensor per task
        assert [tuple(o.shape) for o in out] == [(3, c) for c in classes]
        out, classes = _flat(out), sum(classes)
    assert out.shape == (3, classes) and torch.isfinite(out).all()
    torch.manual_seed(0)
    again = models.build(name, config).eval()
    assert torch.equal(_flat(again(x)), out)  # same seed, same weights, same output
    # as a checkpoint rebuilds it (no tensor of the model may live outside its state dict)
    restored = models.build_with_weights(name, config, model.state_dict()).eval()
    assert not any(t.is_meta for t in [*restored.parameters(), *restored.buffers()])
    assert torch.equal(_flat(restored(x)), out)
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


def test_uno_auc_variant_count():
    from candle_ray.models import uno

    assert models.count_parameters("uno", uno.AUC_CONFIG) == uno.AUC_REFERENCE_PARAMS == 16_224_001


def test_unknown_model():
    with pytest.raises(KeyError, match="did you mean nt3"):
        models.info("nt4")


def test_glorot_init_zero_bias():
    model = models.build("mlp", {"input_dim": 40})
    lin = model.net[0]
    bound = (6 / (40 + 512)) ** 0.5
    assert lin.bias.abs().sum() == 0 and 0 < lin.weight.abs().max() <= bound
