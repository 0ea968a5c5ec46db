"""``objective(model, guide, *args)`` is a differentiable loss for custom training loops."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit

X = torch.tensor([1.2, 0.4, 2.1, 1.7, 0.9, 1.4, 2.5, 0.3, 1.1, 1.6])
# z ~ N(0, 1), x_i ~ N(z, 1): the posterior is N(sum(x) / (n + 1), 1 / (n + 1))
POST_MEAN = X.sum().item() / (len(X) + 1)
POST_SD = math.sqrt(1 / (len(X) + 1))
STEPS = 800


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def objective():
    return TraceAVB_ELBO(num_particles=8, moment_particles=128, discriminator_particles=32)


def draws(guide):
    with torch.no_grad():
        return torch.stack([guide(X)["z"] for _ in range(2000)])


def by_svi():
    pyro.set_rng_seed(0)
    guide = AutoImplicit(model, hidden_dims=(16,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=objective())
    for _ in range(STEPS):
        svi.step(X)
    return draws(guide)


def by_custom_loop():
    pyro.set_rng_seed(0)
    guide = AutoImplicit(model, hidden_dims=(16,))
    avb = objective()
    loss = avb(model, guide, X)  # builds the guide and the discriminator
    assert torch.is_tensor(loss) and loss.requires_grad
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    assert any(n.startswith("discriminator_") for n in pyro.get_param_store().keys())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(STEPS):
        optimizer.zero_grad()
        pyro.infer.util.torch_backward(loss)
        optimizer.step()
        loss = avb(model, guide, X)
    assert math.isfinite(avb.stats["loss"])  # the -ELBO estimate, as svi.step returns
    return draws(guide)


@pytest.mark.slow
def test_custom_loop_trains_like_svi():
    custom = by_custom_loop()
    pyro.clear_param_store()
    svi = by_svi()
    for z in (custom, svi):
        assert z.mean().item() == pytest.approx(POST_MEAN, abs=0.25 * POST_SD)
        assert z.std().item() == pytest.approx(POST_SD, rel=0.25)
    # the two fits agree within their Monte Carlo error
    assert abs(custom.mean() - svi.mean()).item() < 0.25 * POST_SD
    assert abs(custom.std() / svi.std() - 1).item() < 0.25


def test_differentiable_loss_matches_the_gradients_of_svi_step():
    # one surrogate, two players: the discriminator's gradient is its own loss's
    pyro.set_rng_seed(3)
    guide = AutoImplicit(model, hidden_dims=(8,))
    avb = objective()
    loss = avb.differentiable_loss(model, guide, X)
    loss.backward()
    store = pyro.get_param_store()
    grads = {n: store[n].unconstrained().grad for n in store.keys()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(n.startswith("discriminator_") and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith("AutoImplicit") and g.abs().sum() > 0 for n, g in grads.items())
