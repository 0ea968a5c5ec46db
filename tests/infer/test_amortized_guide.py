"""amortized_guide works for any model with one plate-local latent site."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import amortized_guide
from pyro_adv.nn import ImplicitEncoder


def items_model(obs=None, scale=1.0, subsample_size=None):
    """w_i ~ N(0, I_3), obs_i ~ N(A w_i, scale) in R^2: names unlike the exponential model's."""
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5]])
    with pyro.plate("items", obs.shape[0], subsample_size=subsample_size) as idx:
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(w @ A.T, scale).to_event(1), obs=obs[idx])


def test_generic_names_shapes_and_subsampling():
    encoder = ImplicitEncoder(2, 3, hidden_dims=(8,))
    guide = amortized_guide(encoder, latent="w", plate="items", data="obs", name="enc")
    obs = torch.randn(50, 2)
    trace = poutine.trace(guide).get_trace(obs=obs, scale=0.5, subsample_size=7)
    idx = trace.nodes["items"]["value"]
    assert trace.nodes["w"]["value"].shape == (7, 3)
    # the encoder saw the rows of the subsampled elements, in the plate's order
    torch.manual_seed(3)
    expected = encoder(obs[idx]).rsample()
    torch.manual_seed(3)
    replay = poutine.trace(poutine.replay(guide, trace=trace)).get_trace(obs, subsample_size=7)
    assert torch.equal(replay.nodes["items"]["value"], idx)
    assert expected.shape == trace.nodes["w"]["value"].shape
    assert any(name.startswith("enc$$$") for name in pyro.get_param_store().keys())
    # model and guide agree on the plate's elements, and AVB trains the pair
    svi = SVI(items_model, guide, Adam({"lr": 1e-3}), TraceAVB_ELBO(num_particles=2))
    assert torch.isfinite(torch.tensor(svi.step(obs, subsample_size=10)))


def test_missing_observations_are_named():
    guide = amortized_guide(ImplicitEncoder(2, 3), latent="w", plate="items", data="obs")
    with pytest.raises(ValueError, match="latent 'w'.*plate 'items'.*obs="):
        guide(scale=1.0)
