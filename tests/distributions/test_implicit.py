import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_adv.distributions import (
    ImplicitDensityError,
    ImplicitDistribution,
    ImplicitValue,
    is_implicit,
)
from pyro_adv.nn import MLPGenerator


def _dist(batch=(5,), noise_dim=3, out=2):
    gen = MLPGenerator(noise_dim, out, hidden_dims=(8,))
    base = dist.Normal(0.0, 1.0).expand(batch + (noise_dim,)).to_event(1)
    return gen, ImplicitDistribution(gen, base)


def test_shapes_expand_to_event():
    _, d = _dist()
    assert d.batch_shape == (5,) and d.event_shape == (2,)
    assert d.rsample().shape == (5, 2)
    assert d.rsample((4,)).shape == (4, 5, 2)
    e = d.expand((3, 5))
    assert e.batch_shape == (3, 5) and e.rsample().shape == (3, 5, 2)
    i = d.to_event(1)
    assert i.batch_shape == () and i.event_shape == (5, 2)
    assert is_implicit(i) and is_implicit(d.mask(False)) and is_implicit(e)
    assert not is_implicit(dist.Normal(0.0, 1.0))


def test_rsample_is_differentiable():
    gen, d = _dist()
    d.rsample().sum().backward()
    assert all(p.grad is not None for p in gen.parameters())
    assert not d.sample().requires_grad


def test_under_plate_broadcasts():
    gen, _ = _dist()
    base = dist.Normal(0.0, 1.0).expand([3]).to_event(1)
    with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 7):
        x = pyro.sample("x", ImplicitDistribution(gen, base))
    assert x.shape == (4, 7, 2)


def test_log_prob_raises_clear_error():
    _, d = _dist()
    with pytest.raises(ImplicitDensityError, match="TraceAVB_ELBO"):
        d.log_prob(torch.zeros(5, 2))
    with pytest.raises(NotImplementedError):
        d.to_event(1).log_prob(torch.zeros(5, 2))
    with pytest.raises(ImplicitDensityError):
        d.mean  # noqa: B018


def test_trace_elbo_on_implicit_guide_names_site_and_objectives():
    gen, d = _dist(batch=())

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        pyro.module("gen", gen)
        pyro.sample("z", d)

    with pytest.raises(ValueError, match=r"(?s)site 'z'.*TraceAVB_ELBO.*Trace_ALI"):
        pyro.infer.Trace_ELBO().loss(model, guide)


def test_bad_arguments():
    with pytest.raises(TypeError, match="callable"):
        ImplicitDistribution(3, dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="reparameterizable"):
        ImplicitDistribution(lambda e: e, dist.Poisson(1.0))
    gen = MLPGenerator(3, 2)
    bad = ImplicitDistribution(
        lambda e: gen(e)[..., :1, :],
        dist.Normal(0.0, 1.0).expand([5, 3]).to_event(1),
        event_shape=(2,),
    )
    with pytest.raises(ValueError, match="generator returned shape"):
        bad.rsample()


def test_implicit_value():
    v = torch.randn(4, 3)
    d = ImplicitValue(v, event_dim=1, joint="g")
    assert d.batch_shape == (4,) and d.event_shape == (3,)
    assert torch.equal(d.rsample(), v)
    assert d.expand((2, 4)).rsample().shape == (2, 4, 3)
    with pytest.raises(ImplicitDensityError):
        d.log_prob(v)
