"""Convergence signals and the stopping rule of fit (issue 12, item 3)."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive

from pyro_adv.convergence import SmoothedLoss, TwoSampleCheck
from pyro_adv.infer import Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models.conjugate import ConjugateGaussian
from pyro_adv.models.random_families import gaussian_errors, random_gaussian_target
from pyro_adv.nn import MLPGenerator
from pyro_adv.optim import two_timescale_adam
from pyro_adv.training import fit


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _feed(monitor, losses):
    for step, loss in enumerate(losses):
        monitor.update(step, float(loss), {})
    return monitor


# ------------------------------------------------------------------ SmoothedLoss
def test_smoothed_loss_trend_separates_flat_from_falling():
    torch.manual_seed(0)
    noise = torch.randn(2000)
    # flat noise: the trend is within 2 standard errors at most checks
    flat, trends = SmoothedLoss(window=100), []
    for step, loss in enumerate(5.0 + noise):
        out = flat.update(step, float(loss), {})
        if "loss_trend" in out:
            trends.append(out["loss_trend"])
    assert len(trends) == 19
    assert sum(abs(t) < 2 for t in trends) >= 15, trends
    assert abs(flat.ema - 5.0) < 0.3
    # a loss falling by 1 sd per window (z about -7) is noticed
    falling = _feed(SmoothedLoss(window=100), 5.0 - 0.01 * torch.arange(2000.0) + noise)
    assert falling.trend < -4 and not falling.settled
    # an independent-noise standard error that were wrong by 3x either way would fail one
    # of the two checks above (flat: too small; falling: too large)


def test_smoothed_loss_validation():
    with pytest.raises(ValueError, match="window"):
        SmoothedLoss(window=1)
    with pytest.raises(ValueError, match="threshold"):
        SmoothedLoss(threshold=0)


def _conjugate_svi(lr):
    model = ConjugateGaussian(noise_scale=2.0)
    _, x = model.simulate(10, torch.Generator().manual_seed(1))
    guide = AutoImplicit(model.model)
    svi = SVI(model.model, guide, two_timescale_adam(lr), TraceAVB_ELBO())
    return model, x, guide, svi


def _conjugate_errors(model, x, guide):
    with torch.no_grad(), pyro.plate("draws", 2000, dim=-2):
        z = guide(x)["z"].reshape(2000, -1)
    return gaussian_errors(z, *model.posterior(x))


@pytest.mark.slow
def test_stop_rule_on_the_smoothed_elbo():
    # a converged AVB run stops well before its budget, with an accurate posterior
    model, x, guide, svi = _conjugate_svi(5e-3)
    history = fit(
        svi, 4000, x, progress=False, monitor=SmoothedLoss(window=100), stop_when="converged"
    )
    assert "stopped" in history, "a converged run did not stop"
    stop = history["stopped"]["step"]
    assert stop < 3000 and len(history["step"]) == stop + 1
    errors = _conjugate_errors(model, x, guide)
    assert errors["mean (sd)"] < 0.2 and errors["sd ratio - 1"] < 0.3, errors
    # a run that is still improving is not stopped: 50x slower (400 steps, checked
    # every 100: trends about -59, -37, -36 standard errors)
    pyro.clear_param_store()
    model, x, guide, svi = _conjugate_svi(1e-4)
    history = fit(
        svi, 400, x, progress=False, monitor=SmoothedLoss(window=100), stop_when="converged"
    )
    assert "stopped" not in history and len(history["step"]) == 400
    trends = [t for t in history["loss_trend"] if not math.isnan(t)]
    assert len(trends) == 3 and max(trends) < -2, trends  # the negative ELBO is still falling
    errors = _conjugate_errors(model, x, guide)
    assert errors["mean (sd)"] > 0.2, errors  # and the fit is not done (about 0.47)


# ----------------------------------------------------------------- TwoSampleCheck
def _gan(dim):
    generator = MLPGenerator(dim, dim)

    def gan(data=None, n=1000, batch_size=None):
        pyro.module("generator", generator)
        size = n if data is None else len(data)
        with pyro.plate("data", size, subsample_size=batch_size) as ind:
            pyro.sample(
                "x", generator.distribution(len(ind)), obs=None if data is None else data[ind]
            )

    return gan, generator


def _sampler(gan, shift=0.0):
    return lambda n: Predictive(gan, num_samples=1)(n=n)["x"][0] + shift


@pytest.mark.slow
def test_two_sample_check_and_stop_rule_on_a_gan():
    target = random_gaussian_target(seed=0, dim=2)
    data = target.sample(12000, torch.Generator().manual_seed(0))
    train, valid = data[:10000], data[10000:]
    gan, _ = _gan(2)
    steps = 3000
    optim = two_timescale_adam(1e-3, 4e-3, num_steps=steps, decay=0.1, decay_discriminator=False)
    svi = SVI(gan, lambda *a, **k: None, optim, Trace_GAN())

    # before training: far from chance
    check = TwoSampleCheck(valid, _sampler(gan), every=250, num_samples=1000)
    assert check.check() > 0.8

    history = fit(
        svi, steps, train, batch_size=256, progress=False, monitor=check, stop_when="converged"
    )
    assert "stopped" in history, "a converged GAN did not stop"
    assert history["stopped"]["step"] < steps - 1
    c2sts = [c for c in history["c2st"] if not math.isnan(c)]
    assert max(c2sts[-3:]) < check.chance_bound and len(c2sts) >= 3
    # the signal is trustworthy: the fit is accurate where it says chance ...
    with torch.no_grad():
        samples = _sampler(gan)(5000)
    errors = gaussian_errors(samples, target.loc, target.covariance)
    assert errors["mean (sd)"] < 0.15 and errors["sd ratio - 1"] < 0.15, errors
    # ... and far from chance for a deliberately broken generator (shifted by 1 sd)
    broken = TwoSampleCheck(valid, _sampler(gan, target.covariance.diagonal().sqrt()))
    assert broken.check() > 0.7


@pytest.mark.slow
def test_two_sample_stop_rule_does_not_stop_a_frozen_generator():
    target = random_gaussian_target(seed=1, dim=2)
    data = target.sample(11000, torch.Generator().manual_seed(1))
    gan, _ = _gan(2)
    # the generator's learning rate is ~0: it never converges, whatever its discriminator says
    svi = SVI(gan, lambda *a, **k: None, two_timescale_adam(1e-9, 4e-3), Trace_GAN())
    check = TwoSampleCheck(data[10000:], _sampler(gan), every=100, num_samples=300)
    history = fit(
        svi,
        400,
        data[:10000],
        batch_size=256,
        progress=False,
        monitor=check,
        stop_when="converged",
        patience=1,
    )
    assert "stopped" not in history and len(history["step"]) == 400
    assert min(c for c in history["c2st"] if not math.isnan(c)) > 0.8


def test_two_sample_check_validation():
    valid = torch.randn(100, 2)
    with pytest.raises(TypeError, match="sampler"):
        TwoSampleCheck(valid, None)
    with pytest.raises(ValueError, match="every"):
        TwoSampleCheck(valid, lambda n: torch.randn(n, 2), every=0)
    with pytest.raises(ValueError, match="shape"):
        TwoSampleCheck(valid, lambda n: torch.randn(n, 3)).check()
    # non-finite draws are never at chance
    assert TwoSampleCheck(valid, lambda n: torch.full((n, 2), math.nan)).check() == 1.0
    # the same distribution is at chance
    check = TwoSampleCheck(torch.randn(1000, 2), lambda n: torch.randn(n, 2))
    assert check.check() < check.chance_bound


def test_fit_monitor_options():
    model, x, guide, svi = _conjugate_svi(5e-3)
    history = fit(svi, 40, x, progress=False)
    # the default monitor: the smoothed loss over clamp(40 // 20, 20, 200) = 20 steps
    assert len(history["loss_ema"]) == 40 and not math.isnan(history["loss_trend"][39])
    assert math.isnan(history["loss_trend"][0])
    history = fit(svi, 5, x, progress=False, monitor=None)
    assert "loss_ema" not in history
    with pytest.raises(ValueError, match="needs a monitor"):
        fit(svi, 5, x, progress=False, monitor=None, stop_when="converged")
    with pytest.raises(ValueError, match="stop_when"):
        fit(svi, 5, x, progress=False, stop_when="early")
    with pytest.raises(TypeError, match="Monitor"):
        fit(svi, 5, x, progress=False, monitor=[object()])
    with pytest.raises(ValueError, match="patience"):
        fit(svi, 5, x, progress=False, stop_when="converged", patience=0)
    # a callable rule
    history = fit(svi, 50, x, progress=False, stop_when=lambda h: len(h["step"]) >= 7)
    assert len(history["step"]) == 7 and history["stopped"]["step"] == 6
