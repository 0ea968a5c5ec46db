"""The digits VAE example scores and simulates the model it trains."""

import importlib.util
import pathlib

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_adv.nn import MLP

pytest.importorskip("sklearn")

PATH = pathlib.Path(__file__).parent.parent / "examples" / "vae_digits.py"


@pytest.fixture(scope="module")
def vae_digits():
    spec = importlib.util.spec_from_file_location("vae_digits", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data(vae_digits):
    train, test = vae_digits.load_digits()
    assert train.shape == (1797 - vae_digits.NUM_TEST, 64) and test.shape == (360, 64)
    assert set(train.unique().tolist()) == {0.0, 1.0}
    # the split does not depend on the run's seed
    torch.manual_seed(123)
    assert torch.equal(vae_digits.load_digits()[1], test)


def test_log_joint_is_the_trained_models_density(vae_digits):
    # the held-out estimator must score the model that training fits
    torch.manual_seed(0)
    decoder = MLP(3, 64, (16,))
    x = (torch.rand(5, 64) < 0.3).float()
    z = torch.randn(5, 3)
    model = vae_digits.make_model(decoder, 3)
    conditioned = poutine.condition(model, data={"z": z})
    trace = poutine.trace(conditioned).get_trace(x, torch.arange(5))
    trace.compute_log_prob()
    expected = trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]
    got = vae_digits.log_joint(decoder, x)(z.unsqueeze(0))[0]
    assert torch.allclose(got, expected, atol=1e-5)
    pyro.clear_param_store()


def test_straight_through_draws_are_the_bernoulli_model(vae_digits):
    # ALI simulates the pixels with the straight-through relaxation: its forward values
    # must be draws of the VAE's Bernoulli likelihood, whatever the temperature
    logits = torch.tensor([-2.0, 0.0, 1.5])
    fn = dist.RelaxedBernoulliStraightThrough(torch.tensor(0.5), logits=logits)
    draws = fn.expand((40000, 3))()  # as pyro.sample draws it: rsample
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(draws.mean(0), torch.sigmoid(logits), atol=0.015)
