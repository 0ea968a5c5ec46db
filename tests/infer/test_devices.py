"""
Device and dtype: every tensor the objectives create follows the model's values.

A tensor created on the CPU by accident (``torch.zeros(n)``, ``torch.tensor(0.5)``,
``torch.randint(...)``) breaks a CUDA run, and one created in the default dtype
breaks a float64 run: the same bug. On a CPU-only machine the dtype is what can be
observed, so each engine trains here on float64 data and networks while a
``TorchDispatchMode`` records every floating-point tensor created from pyro_adv's
code; each must be float64 and on ``device`` (``--device cuda`` runs the same on a
GPU). A second recorder catches what dtype cannot show: factory calls in pyro_adv's
code that give neither ``device=`` nor a tensor to follow (they land on the CPU).
"""

import os
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import pyro_adv
from pyro_adv.diagnostics import importance_log_weights
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO, simulate
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.nn import ImplicitEncoder, MLPGenerator

PACKAGE = os.path.dirname(pyro_adv.__file__)
LIBRARIES = (os.path.dirname(torch.__file__), os.path.dirname(pyro.__file__), "<")


#: library code whose own tensors are not the objectives' doing: torch's optimizers keep
#: their step counters as CPU float32 scalars, and pyro's subsample sites score a constant
#: 0 on the plate's device
EXEMPT = (
    os.path.join(os.path.dirname(torch.__file__), "optim"),
    os.path.join(os.path.dirname(pyro.__file__), "poutine", "subsample_messenger.py"),
)


def _culprit():
    """
    The innermost frame that is neither torch's nor pyro's, if it is pyro_adv's (the
    user's model and this test are not under test), unless exempt library code lies
    in between.
    """
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(EXEMPT):
            return None
        recorder = frame.f_code.co_name in ("__torch_function__", "__torch_dispatch__")
        if not recorder and not name.startswith(LIBRARIES) and "contextlib" not in name:
            if name.startswith(PACKAGE):
                return f"{os.path.relpath(name, PACKAGE)}:{frame.f_lineno} ({frame.f_code.co_name})"
            return None
        frame = frame.f_back
    return None


class CreatedTensors(TorchDispatchMode):
    """Records floating-point outputs of pyro_adv's code that are not ``dtype`` on ``device``."""

    def __init__(self, dtype, device):
        super().__init__()
        self.dtype, self.device, self.bad = dtype, device, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if (
                isinstance(t, torch.Tensor)
                and t.is_floating_point()
                and t.numel()  # pyro.plate's device probe torch.tensor(()) holds no value
                and (t.dtype != self.dtype or t.device.type != self.device.type)
            ):
                where = _culprit()
                if where is not None:
                    self.bad.setdefault(where, (str(func), t.dtype, str(t.device)))
        return out


_FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.arange,
    torch.eye,
    torch.linspace,
    torch.tensor,
}


class CpuFactories(TorchFunctionMode):
    """Records factory calls in pyro_adv's code without ``device=`` (they make CPU tensors)."""

    def __init__(self):
        super().__init__()
        self.bad = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and "device" not in kwargs:
            # torch.tensor(t) keeps t's device; torch.tensor(()) is how pyro.plate finds
            # the default device for its indices (integers, never mixed with values)
            exempt = func is torch.tensor and args and (torch.is_tensor(args[0]) or args[0] == ())
            where = None if exempt else _culprit()
            if where is not None:
                self.bad.setdefault(where, func.__name__)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------- problems


def _local_model(device, dtype, n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g).to(device, dtype)
    zeros = torch.zeros(2, device=device, dtype=dtype)

    def model(x, subsample_size=None):
        with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[idx])

    encoder = ImplicitEncoder(2, 2, hidden_dims=(8,)).to(device, dtype)

    def guide(x, subsample_size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
            pyro.sample("z", encoder(x[idx]))

    return model, guide, x


def _avb_global(device, dtype, adaptive_contrast, num_components=1):
    x = torch.tensor([3.0, 7.0, 4.0, 6.0], device=device, dtype=dtype)
    rate_prior = (
        torch.tensor(2.0, device=device, dtype=dtype),
        torch.tensor(0.5, device=device, dtype=dtype),
    )

    def model(x):
        rate = pyro.sample("rate", dist.Gamma(*rate_prior))
        loc = pyro.sample("loc", dist.Normal(rate_prior[0], rate_prior[1]))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, rate), obs=x)

    objective = TraceAVB_ELBO(
        num_particles=4,
        adaptive_contrast=adaptive_contrast,
        moment_particles=32,
        discriminator_particles=8,
        discriminator_hidden_dims=(8,),
        discriminator_steps=2,
    )
    guide = AutoImplicit(model, hidden_dims=(8,), num_components=num_components)
    return model, guide, objective, (x,), {}


def _problem(name, device, dtype):
    if name.startswith("avb_global"):
        # a mixture guide brings mixture-aware contrast (a Gaussian-mixture reference)
        mixture = name.endswith("mixture")
        return _avb_global(
            device, dtype, adaptive_contrast=name != "avb_global_plain", num_components=1 + mixture
        )
    if name in ("avb_local", "ali", "ali_bank"):
        model, guide, x = _local_model(device, dtype)
        if name == "avb_local":
            objective = TraceAVB_ELBO(
                num_particles=2,
                moment_particles=16,
                discriminator_particles=8,
                discriminator_hidden_dims=(8,),
            )
        elif name == "ali":
            objective = Trace_ALI(discriminator_hidden_dims=(8,), num_particles=2)
        else:
            bank = simulate(model, 1, x)
            objective = Trace_ALI(simulations=bank, discriminator_hidden_dims=(8,), num_particles=2)
        return model, guide, objective, (x,), {"subsample_size": 8}
    generator = MLPGenerator(2, 2, hidden_dims=(8,)).to(device, dtype)
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    zeros = torch.zeros(2, device=device, dtype=dtype)

    def gan(data, batch_size=None):
        pyro.module("generator", generator)
        with pyro.plate("data", len(data), subsample_size=batch_size) as idx:
            noise = dist.Normal(zeros, 1.0).expand([len(idx), 2]).to_event(1)
            pyro.sample("x", ImplicitDistribution(generator, noise), obs=data[idx])

    divergence = "wasserstein" if name == "gan_wasserstein" else "nonsaturating"
    objective = Trace_GAN(divergence=divergence, discriminator_hidden_dims=(8,), num_particles=2)
    return gan, lambda *a, **k: None, objective, (data,), {"batch_size": 16}


PROBLEMS = [
    "avb_global_contrast",
    "avb_global_mixture",
    "avb_global_plain",
    "avb_local",
    "ali",
    "ali_bank",
    "gan",
    "gan_wasserstein",
]


@pytest.mark.parametrize("name", PROBLEMS)
def test_engines_create_tensors_on_the_models_device_and_dtype(name, device):
    dtype = torch.float64
    model, guide, objective, args, kwargs = _problem(name, device, dtype)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), objective)
    objective.use_optimizer_of(svi)
    created, factories = CreatedTensors(dtype, device), CpuFactories()
    with created, factories:
        for _ in range(2):  # the first step builds, the second is a plain step
            svi.step(*args, **kwargs)
        svi.evaluate_loss(*args, **kwargs)
        if name.startswith(("avb", "ali")):  # diagnostics: importance weights
            log_w = importance_log_weights(
                model, guide, *args, num_samples=8, objective=objective, **kwargs
            )
            assert log_w.dtype == dtype and log_w.device.type == device.type
    assert not created.bad, f"tensors of another dtype or device: {created.bad}"
    assert not factories.bad, f"factory calls without device=: {factories.bad}"
    params = pyro.get_param_store().get_state()["params"]
    for param_name, p in params.items():
        assert p.dtype == dtype and p.device.type == device.type, param_name


def test_recorders_catch_a_leak(device):
    # the recorders' teeth: code compiled as pyro_adv's that makes a CPU float32 tensor
    from pyro_adv.infer import util

    leak = compile("import torch\ntorch.zeros(3) + 1\n", util.__file__, "exec")
    created, factories = CreatedTensors(torch.float64, device), CpuFactories()
    with created, factories:
        exec(leak, {})
    assert list(created.bad.values())[0][1] == torch.float32
    assert list(factories.bad.values()) == ["zeros"]
