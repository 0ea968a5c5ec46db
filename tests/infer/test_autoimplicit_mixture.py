"""
AutoImplicit's mixture mechanics, cheaply: where the components start, and that
draws follow the learned weights on both sampling paths (the training path's
Categorical site and the bins of the extra noise coordinate). The accuracy of
whole fits is tested in ``test_modes.py``.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models.zoo import Bimodal


def _component_centres(guide):
    return (guide.loc + guide.sampler.offsets).detach().reshape(-1)


def _covers_both_modes(component_init, seed):
    tilted = Bimodal(prior_loc=1.5)  # modes at +-1.1; the prior's centre at 1.5
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoImplicit(tilted.model, num_components=2, component_init=component_init)
    guide(*tilted.args)
    centres = _component_centres(guide)
    return bool((centres < -0.8).any() and (centres > 0.8).any())


def test_components_start_on_every_mode_the_likelihood_reaches():
    # prior placement starts both components on the prior centre's side of zero on 8
    # of these 10 seeds (measured); the likelihood-resampled k-means centres never do
    seeds = range(10)
    assert all(_covers_both_modes("likelihood", s) for s in seeds)
    assert not all(_covers_both_modes("prior", s) for s in seeds)


A = torch.tensor([[1.0, 0.5], [0.3, -1.0], [0.8, 0.8]])


def matmul_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    pyro.sample("x", dist.Normal(A @ z, 1.0).to_event(1), obs=x)


def test_a_model_that_does_not_broadcast_falls_back_to_prior_placement():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoImplicit(matmul_model, num_components=4)
    guide(torch.tensor([1.0, -0.5, 1.4]))
    offsets = guide.sampler.offsets.detach()
    assert torch.isfinite(offsets).all()
    # antithetic pairs about the prior's centre: the components start apart
    assert torch.cdist(offsets, offsets).add(torch.eye(4) * 1e3).min() > 0.01


def test_bad_component_init_is_named():
    with pytest.raises(ValueError, match="component_init"):
        AutoImplicit(matmul_model, num_components=2, component_init="data")


@pytest.mark.parametrize("path", ["site", "bins"])
def test_draws_follow_the_learned_weights(path):
    tilted = Bimodal()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoImplicit(tilted.model, num_components=2)
    guide(*tilted.args)
    with torch.no_grad():
        # components far apart, so a draw's sign says which one made it
        guide.sampler.offsets.copy_(torch.tensor([[10.0], [-10.0]]) - guide.loc)
        guide.component_logits.copy_(torch.tensor([math.log(0.7), math.log(0.3)]))
    n = 20_000
    with torch.no_grad():
        if path == "site":
            with pyro.plate("draws", n, dim=-2):
                trace = poutine.trace(guide).get_trace(*tilted.args)
            z = trace.nodes["z"]["value"].reshape(-1)
            assert "_AutoImplicit_component" in trace.nodes
        else:
            z = guide.get_posterior().rsample((n,)).reshape(-1)
    share = (z > 0).double().mean().item()
    assert abs(share - 0.7) < 0.02, share
    assert guide.component_weights().tolist() == pytest.approx([0.7, 0.3], abs=1e-6)


def test_both_sampling_paths_draw_the_same_components():
    # the bins' coordinate must reach no network: were it also an input, each
    # component would see only its own bin of it when sampling, unlike in training
    tilted = Bimodal()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoImplicit(tilted.model, num_components=2, init_scale=1.0)
    guide(*tilted.args)
    with torch.no_grad():
        guide.sampler.offsets.copy_(torch.tensor([[10.0], [-10.0]]) - guide.loc)
        guide.component_logits.copy_(torch.tensor([math.log(0.7), math.log(0.3)]))
        n = 40_000
        with pyro.plate("draws", n, dim=-2):
            site = poutine.trace(guide).get_trace(*tilted.args).nodes["z"]["value"].reshape(-1)
        bins = guide.get_posterior().rsample((n,)).reshape(-1)
    for side in (1, -1):
        a, b = site[site * side > 0], bins[bins * side > 0]
        se = (a.var() / len(a) + b.var() / len(b)).sqrt()
        assert abs(a.mean() - b.mean()) < 4 * se, (side, a.mean(), b.mean(), se)
        assert abs(a.std() / b.std() - 1) < 0.05, (side, a.std(), b.std())
