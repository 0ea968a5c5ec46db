"""Built-in weight averaging: the averages are an exact EMA, and sampling uses them."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive
from pyro.optim import Adam

from pyro_adv.infer import Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.nn import ImplicitEncoder, MLPGenerator
from pyro_adv.nn.averaging import ParameterEMA, raw_weights


def _model(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def _train_autoimplicit(steps, ema_decay=0.9, callback=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(20, 2) + torch.tensor([1.0, -1.0])
    guide = AutoImplicit(_model, hidden_dims=(8,))
    avb = TraceAVB_ELBO(num_particles=4, moment_particles=16, ema_decay=ema_decay)
    svi = SVI(_model, guide, Adam({"lr": 0.05}), avb)
    for step in range(steps):
        svi.step(x)
        if callback is not None:
            callback(step)
    return guide, avb, x


def test_averages_are_the_hand_computed_ema():
    history = []
    store = pyro.get_param_store()

    def record(step):
        history.append({k: v.detach().clone() for k, v in store.named_parameters()})

    guide, avb, _ = _train_autoimplicit(12, ema_decay=0.9, callback=record)
    state = avb.averages.state_dict()
    assert state["num_updates"] == 12
    names = [n for n in history[0] if not n.startswith("discriminator")]
    assert names and all(n in state["shadows"] for n in names)
    assert not any(n.startswith("discriminator") for n in state["shadows"])
    for name in names:
        expected = history[0][name]
        for t in range(1, 12):
            rho = min(0.9, (1 + t) / (10 + t))
            expected = rho * expected + (1 - rho) * history[t][name]
        assert torch.allclose(state["shadows"][name], expected, atol=1e-6), name
        # after a real run the average differs from the last weights
        assert not torch.allclose(expected, history[-1][name])


def test_sampling_uses_the_averages_and_raw_weights_on_request():
    guide, avb, x = _train_autoimplicit(10)
    pyro.set_rng_seed(1)
    averaged = Predictive(_model, guide=guide, num_samples=50)(x)["loc"]
    pyro.set_rng_seed(1)
    with raw_weights():
        raw = Predictive(_model, guide=guide, num_samples=50)(x)["loc"]
    # by hand: the sampler with the shadows substituted for its weights
    shadows = avb.averages.state_dict()["shadows"]
    pyro.set_rng_seed(1)
    saved = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    with torch.no_grad():
        for name, p in pyro.get_param_store().named_parameters():
            if name in shadows:
                p.copy_(shadows[name])
        with raw_weights():
            by_hand = Predictive(_model, guide=guide, num_samples=50)(x)["loc"]
        for name, p in pyro.get_param_store().named_parameters():
            p.copy_(saved[name])
    assert torch.allclose(averaged, by_hand, atol=1e-6)
    assert not torch.allclose(averaged, raw, atol=1e-4)
    guide.use_averages = False
    pyro.set_rng_seed(1)
    assert torch.allclose(Predictive(_model, guide=guide, num_samples=50)(x)["loc"], raw)


def test_encoder_and_generator_sample_with_averages():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    encoder = ImplicitEncoder(1, 2, hidden_dims=(8,))
    generator = MLPGenerator(2, 2, hidden_dims=(8,))
    ema = ParameterEMA(0.5, warmup=2.0)  # rho_1 = min(0.5, 2 / 3)
    params = dict(encoder.named_parameters(prefix="encoder"))
    params.update(generator.named_parameters(prefix="generator"))
    encoder(torch.rand(5, 1))  # fixes the context standardization
    ema.track(params)
    ema.update()
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)
    ema.track(params)  # a second step: the shadows are now halfway
    context, noise = torch.rand(3, 1), torch.randn(3, 8)
    averaged_out = encoder.generate(context, noise)
    gen_out = generator(noise[:, :2])
    with torch.no_grad():
        for p in params.values():
            p.sub_(0.5)
    with raw_weights():
        assert torch.allclose(averaged_out, encoder.generate(context, noise), atol=1e-6)
        assert torch.allclose(gen_out, generator(noise[:, :2]), atol=1e-6)
    ema.reset()
    with torch.no_grad():
        plain = encoder.generate(context, noise)
    with raw_weights():
        assert torch.equal(plain, encoder.generate(context, noise))


def test_averaging_off():
    guide, avb, x = _train_autoimplicit(3, ema_decay=None)
    assert avb.averages is None
    pyro.set_rng_seed(1)
    a = Predictive(_model, guide=guide, num_samples=20)(x)["loc"]
    pyro.set_rng_seed(1)
    with raw_weights():
        b = Predictive(_model, guide=guide, num_samples=20)(x)["loc"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ema_decay"):
        Trace_GAN(ema_decay=1.5)


def test_averaged_generator_is_steadier_than_the_raw_one():
    # a GAN's players circle the equilibrium: over the last steps of a short run at a
    # constant rate, the averaged generator's sample sd moves far less than the raw one's
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = 2.0 + 0.5 * torch.randn(4000, 1)
    generator = MLPGenerator(1, 1, hidden_dims=(16,))

    def gan(data, batch_size=None):
        pyro.module("generator", generator)
        with pyro.plate("data", len(data), subsample_size=batch_size) as ind:
            pyro.sample("x", generator.distribution(len(ind)), obs=data[ind])

    gan_loss = Trace_GAN(discriminator_hidden_dims=(16,), ema_decay=0.99)
    svi = SVI(gan, lambda *a, **k: None, Adam({"lr": 5e-3, "betas": (0.5, 0.999)}), gan_loss)
    noise = torch.randn(2000, 1)
    averaged, raw = [], []
    for step in range(400):
        svi.step(data, batch_size=64)
        if step >= 300:
            with torch.no_grad():
                averaged.append(generator(noise).std().item())
                with raw_weights():
                    raw.append(generator(noise).std().item())
    averaged, raw = torch.tensor(averaged), torch.tensor(raw)
    assert averaged.var() < 0.25 * raw.var(), (averaged.var(), raw.var())
    # and it follows the run, not a frozen early state
    assert abs(averaged.mean() - raw.mean()) < 2 * raw.std()
