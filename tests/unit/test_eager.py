"""Optimizers that step without importing torch's compiler (candle_ray.eager), checked in a fresh Python:
in this test process another test may have loaded torch._dynamo already, and then nothing is patched."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from candle_ray.loop import make_optimizer

    NAMES = ("sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam")

    def train(name, make=make_optimizer):
        torch.manual_seed(1)
        model, x = torch.nn.Linear(4, 2), torch.randn(8, 4)
        opt = make(name, model.parameters(), 0.01, momentum=0.9 if name == "sgd" else 0.0,
                   weight_decay=0.1 if name in ("sgd", "adam", "nadam") else 0.0)
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
        opt.load_state_dict(opt.state_dict())
        return model.weight.detach().clone(), torch.is_grad_enabled()

    eager = {name: train(name) for name in NAMES}
    print("dynamo", "torch._dynamo" in sys.modules)
    import torch._dynamo  # now torch's own wrappers run as they are
    for name in NAMES:
        weights, grad_on = train(name)
        print(name, torch.equal(weights, eager[name][0]), eager[name][1] and grad_on)
""")


def test_optimizers_step_like_torch_without_importing_its_compiler():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "dynamo False"  # 1.2 s of imports a worker no longer pays
    # Every optimizer (with and without weight decay, momentum, state round trip) moves the weights
    # bit for bit as torch's own step does, and leaves autograd on.
    assert lines[1:8] == [f"{n} True True" for n in ("sgd", "adam", "rmsprop", "adagrad", "adadelta", "adamax", "nadam")]
