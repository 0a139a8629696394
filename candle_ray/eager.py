"""Eager PyTorch without the compiler's import: a worker's first optimizer step costs 1.2 s less.

torch.optim imports torch._dynamo (and with it sympy) the first time an optimizer steps (the step's
graph-break guard) or calls one of its never-compile methods (`torch._disable_dynamo`: add_param_group,
zero_grad, state_dict, load_state_dict). That import takes 1.2 s of CPU here (1.24 of the 2.7 s between a
trial's entry and its first epoch, in a trial's profile), in every trial actor, `train` worker and DDP
peer, for a compiler candle-ray never runs.

`eager_optimizer` removes both triggers for one optimizer, keeping what they do when nothing compiles:
- its step runs torch's own step under torch.no_grad() (what the guard does for a non-differentiable
  optimizer), without the profiler label and step hooks candle-ray never registers;
- each never-compile wrapper caches the function to call in `fn.__dynamo_disable`; with nothing
  compiling "fn with dynamo disabled" is fn, so fn itself is stored there.
It leaves torch as it is when torch._dynamo is already loaded (something here compiles) or when torch's
wrappers are not the ones it knows (another torch version): the worst case is the 1.2 s again.
"""

from __future__ import annotations

import sys
import types

_patched: set[type] = set()


def eager_optimizer(make):
    """`make()`'s optimizer, built and made to step without importing torch._dynamo (module docstring)."""
    if "torch._dynamo" in sys.modules:
        return make()
    import torch

    _skip_disable_wrappers(torch.optim.Optimizer)  # its constructor calls add_param_group
    optimizer = make()
    step = _torch_step(type(optimizer))
    if step is None:
        return optimizer
    _skip_disable_wrappers(type(optimizer))

    def eager_step(self, *args, **kwargs):
        with torch.no_grad():
            return step(self, *args, **kwargs)

    optimizer.step = types.MethodType(eager_step, optimizer)
    return optimizer


def _torch_step(cls):
    """The optimizer's own step under torch's two wrappers (profile hooks over the grad guard), or None."""
    hooked = getattr(cls, "step", None)
    guarded = getattr(hooked, "__wrapped__", None)
    own = getattr(guarded, "__wrapped__", None)
    if (getattr(guarded, "__name__", "") != "step" or getattr(guarded, "__code__", None) is None
            or guarded.__code__.co_name != "_use_grad" or own is None):
        return None
    return own


def _skip_disable_wrappers(cls) -> None:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    wrapper = getattr(getattr(torch, "_compile", None), "_disable_dynamo", None)
    if wrapper is None:
        return
    code = wrapper(lambda: None).__code__
    for klass in (*cls.__mro__[:-1], DistributedDataParallel):  # not object
        if klass in _patched:
            continue
        _patched.add(klass)
        for attr in vars(klass).values():
            for _ in range(3):  # contextmanager and the like wrap on top of torch's wrapper
                inner = getattr(attr, "__wrapped__", None)
                if inner is None:
                    break
                if getattr(attr, "__code__", None) is code:
                    if getattr(inner, "__dynamo_disable", None) is None:
                        inner.__dynamo_disable = inner
                    break
                attr = inner
