"""Step statistics stay on the device until read; a training step reads it twice."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from benchmarks.overhead import DeviceReads
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.infer.stats import Deferred, MeanOf, StepStats
from pyro_adv.models import ConjugateGaussian
from pyro_adv.nn import ImplicitEncoder, MLPGenerator


def test_values_are_those_of_item():
    a = torch.tensor(0.1, dtype=torch.float32)
    b = torch.tensor(1 / 3, dtype=torch.float64)
    accs = [torch.tensor(0.25), torch.tensor(0.7)]
    stats = StepStats({"a": a, "b": b, "none": None, "number": 2.5, "mean": MeanOf(accs)})
    stats["late"] = Deferred(lambda: a * 3)
    stats["count"] = torch.tensor(7)  # an integer tensor reads as an int, as .item()
    stats["flag"] = torch.tensor(True)
    assert not stats.resolved
    assert stats["a"] == a.item() and isinstance(stats["a"], float)
    assert stats["b"] == b.item()
    assert stats["mean"] == (accs[0].item() + accs[1].item()) / 2
    assert stats["late"] == (a * 3).item()
    assert stats["none"] is None and stats["number"] == 2.5
    assert stats["count"] == 7 and type(stats["count"]) is int
    assert stats["flag"] is True
    assert stats.resolved and dict(stats) == {k: stats[k] for k in stats}
    # a value assigned after the read is read on the next access
    stats["c"] = torch.tensor(4.0)
    assert stats["c"] == 4.0 and len(stats) == 9
    assert repr(stats).startswith("{'a': ")


def _avb():
    cg = ConjugateGaussian()
    _, x = cg.simulate(10, torch.Generator().manual_seed(0))
    objective = TraceAVB_ELBO(num_particles=4, moment_particles=32, discriminator_particles=8)
    return cg.model, AutoImplicit(cg.model), objective, (x,)


def _ali():
    encoder = ImplicitEncoder(1, 1, hidden_dims=(8,))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", encoder(x))

    return model, guide, Trace_ALI(discriminator_hidden_dims=(8,)), (torch.randn(16, 1),)


def _gan():
    generator = MLPGenerator(1, 1, hidden_dims=(8,))

    def model(x):
        pyro.module("generator", generator)
        with pyro.plate("data", x.shape[0]):
            noise = dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1)
            pyro.sample("x", ImplicitDistribution(generator, noise), obs=x)

    objective = Trace_GAN(discriminator_hidden_dims=(8,))
    return model, lambda *a, **k: None, objective, (torch.randn(16, 1),)


@pytest.mark.parametrize("problem", [_avb, _ali, _gan], ids=["avb", "ali", "gan"])
def test_a_step_reads_the_device_twice_or_so(problem):
    # Pyro's own validation reads the device to check distribution arguments; without
    # it, what is left is the objective's: the reported loss with both players'
    # finiteness (one read), and the zero-gradient watch (one read)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, objective, args = problem()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), objective)
    svi.step(*args)
    with pyro.validation_enabled(False), DeviceReads() as reads:
        for _ in range(3):
            svi.step(*args)
    # AVB's extrapolated fraction and draw count stay tensors too
    assert reads.count == 3 * 2
    # the statistics are still tensors, and reading them is one more read
    assert not objective.stats.resolved
    with DeviceReads() as reads:
        values = dict(objective.stats)
    assert reads.count == 1
    assert all(v is None or isinstance(v, (int, float)) for v in values.values())
    assert values["discriminator_max_abs_logit"] > 0
    if isinstance(objective, TraceAVB_ELBO):
        assert type(values["extrapolated_draws"]) is int
        assert 0 <= values["extrapolated_draws"] <= objective.num_particles
        assert 0.0 <= values["extrapolated_fraction"] <= 1.0
