"""ImplicitEncoder's context preprocessing: the automatic log of skewed non-negative columns."""

import pyro
import pytest
import torch

from pyro_adv.infer.autoguide import amortized_guide
from pyro_adv.nn import ImplicitEncoder
from pyro_adv.nn.generators import LOG_CONTEXT_QUANTILE


def _net_input(encoder, context):
    # the network's input for one noise draw (noise zero): the preprocessed context
    seen = []
    hook = encoder.net.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        encoder.generate(context, torch.zeros(context.shape[:-1] + (encoder.noise_dim,)))
    hook.remove()
    return seen[0][..., : encoder.input_dim]


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    gaussian = 5.0 + torch.randn(n, generator=g)  # non-negative, symmetric
    exponential = torch.empty(n).exponential_(generator=g)
    shifted = torch.empty(n).exponential_(generator=g) - 0.5  # skewed, has negatives
    return torch.stack([gaussian, exponential, shifted], -1)


def test_auto_log_exact_cases():
    x = _batch()
    encoder = ImplicitEncoder(3, 2)
    encoder(x)
    assert encoder.log_context_mask.tolist() == [False, True, False]
    m = torch.quantile(x[:, 1], LOG_CONTEXT_QUANTILE)
    assert torch.allclose(encoder.log_context_unit, torch.tensor([1.0, m.item(), 1.0]))
    # the network sees asinh(x / m) standardized for the logged column, x standardized
    # for the others
    expected = x.clone()
    expected[:, 1] = torch.asinh(x[:, 1] / m)
    expected = (expected - expected.mean(0)) / expected.std(0)
    assert torch.allclose(_net_input(encoder, x), expected, atol=1e-5)


def test_auto_log_trigger_rates():
    # each column of one wide batch is decided alone: 2,000 batches at once
    g = torch.Generator().manual_seed(1)
    for mu in (1.0, 1.5, 2.0):
        for n, bound in ((16, 0.01), (64, 0.0)):
            encoder = ImplicitEncoder(2000, 2, hidden_dims=(4,))
            encoder(mu + torch.randn(n, 2000, generator=g))
            assert encoder.log_context_mask.float().mean() <= bound, (mu, n)
    encoder = ImplicitEncoder(2000, 2, hidden_dims=(4,))
    encoder(torch.rand(64, 2000, generator=g))
    assert encoder.log_context_mask.float().mean() < 0.02  # uniform: measured 0.4%
    encoder = ImplicitEncoder(2000, 2, hidden_dims=(4,))
    encoder(torch.empty(64, 2000).exponential_(generator=g))
    assert encoder.log_context_mask.float().mean() > 0.95  # exponential: measured 98%


def test_auto_log_state_dict_round_trip():
    x = _batch()
    trained = ImplicitEncoder(3, 2)
    trained(x)
    loaded = ImplicitEncoder(3, 2)
    loaded.load_state_dict(trained.state_dict())
    # a loaded encoder does not decide again, even on a batch that would decide otherwise
    gaussian = 5.0 + torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(_net_input(loaded, gaussian), _net_input(trained, gaussian))
    assert loaded.log_context_mask.tolist() == [False, True, False]
    # a state saved before the automatic log existed: no column logged
    old = {k: v for k, v in trained.state_dict().items() if "log_context" not in k}
    loaded.load_state_dict(old)
    assert not loaded.log_context_mask.any()
    assert torch.equal(loaded.log_context_unit, torch.ones(3))


def test_user_transform_and_switches():
    x = _batch()
    user = ImplicitEncoder(3, 2, context_transform=lambda c: c * 2.0)
    user(x)
    assert not hasattr(user, "log_context_mask")  # the user's transform replaces the log
    expected = (2.0 * x - (2.0 * x).mean(0)) / (2.0 * x).std(0)
    assert torch.allclose(_net_input(user, x), expected, atol=1e-5)
    off = ImplicitEncoder(3, 2, log_context=False)
    off(x)
    assert torch.allclose(_net_input(off, x), (x - x.mean(0)) / x.std(0), atol=1e-5)
    # True logs every column; each must be non-negative
    everything = ImplicitEncoder(2, 2, log_context=True)
    everything(x[:, :2])
    assert everything.log_context_mask.all()
    with pytest.raises(ValueError, match=r"log_context=True.*column\(s\) \[2\]"):
        ImplicitEncoder(3, 2, log_context=True)(x)
    with pytest.raises(ValueError, match="log_context must be"):
        ImplicitEncoder(3, 2, log_context="yes")
    with pytest.raises(ValueError, match="give one"):
        ImplicitEncoder(3, 2, context_transform=torch.log1p, log_context=True)
    with pytest.raises(ValueError, match="context_transform must be callable"):
        ImplicitEncoder(3, 2, context_transform="log1p")


def test_amortized_guide_fixes_the_context_from_all_observations():
    x = _batch(n=512, seed=3)[:, 1]  # exponential observations
    encoder = ImplicitEncoder(1, 2)
    guide = amortized_guide(encoder)
    pyro.clear_param_store()
    pyro.poutine.trace(guide).get_trace(x, subsample_size=8)
    m = torch.quantile(x, LOG_CONTEXT_QUANTILE)
    assert torch.allclose(encoder.log_context_unit, m.reshape(1))
    assert torch.allclose(encoder.context_loc, torch.asinh(x / m).mean().reshape(1), atol=1e-6)
