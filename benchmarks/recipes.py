r"""
The benchmarks' and accuracy tests' experiments (moved out of the package: nothing
here is a library default). The headline accuracy tasks in one place: how each
accuracy test trains (its
*recipe*: model, data, guide or generator, objective, optimizer, steps) and what it
checks (its *tolerances*). ``tests/infer`` train with these recipes and assert these
tolerances; Table 5 of the benchmarks (``benchmarks/robustness.py``) reruns every
recipe over several seeds and counts how often the tolerances hold.

* ``fit_<task>(seed=0, ...)`` clears the param store, seeds Pyro with ``seed`` and
  trains with the test's settings; ``seed=0`` is the test's own run. Data that a
  test fixes with its own ``torch.Generator`` stay fixed; everything drawn from the
  global random state (initialization, minibatches, noise, GAN data sets, ALI's
  simulation bank) changes with the seed. Keyword budgets (``steps``, ...) shrink a
  run for smoke tests.
* ``evaluate_<task>(fitted, ...)`` draws from the fit and returns ``(errors, draws)``:
  ``errors`` maps each criterion to its value.
* :data:`TOLERANCES` holds, per task, each criterion's bound: a number ``b`` (the
  criterion passes when its error is below ``b``) or an interval ``(lo, hi)`` (it
  passes when ``lo <= value <= hi``); :func:`failures` lists the criteria missed.

The exponential posterior (thesis 4.2.1) recipes are the ones Table 1 of the
benchmarks runs, beside :func:`fit_exponential_avb_defaults` and
:func:`fit_exponential_ali_defaults`, which train as ``examples/exponential_posterior.py``
does: the library's defaults, only the model-specific data handling added.
"""

import math
from types import SimpleNamespace

import pyro
import torch
from pyro.infer import SVI, Predictive
from torch.optim.swa_utils import AveragedModel

from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO, simulate
from pyro_adv.infer.autoguide import AutoImplicit, amortized_guide
from pyro_adv.models.conjugate import ConjugateGaussian, GammaPoisson
from pyro_adv.models.exponential import (
    exact_posterior_moments,
    exponential_model,
    posterior_summary,
    sample_training_observations,
    spread_bank,
)
from pyro_adv.models.exponential import (
    sample_training_observations as _training_observations,
)
from pyro_adv.models.gan_targets import (
    BIVARIATE_COVARIANCE,
    BIVARIATE_MEAN,
    bivariate_normal_gan,
    exact_divergence_optimum,
    location_scale_gan,
    sample_bivariate_normal,
    sample_mixture,
)
from pyro_adv.nn import ImplicitEncoder
from pyro_adv.optim import two_timescale_adam
from pyro_adv.training import fit

__all__ = [
    "TOLERANCES",
    "failures",
    "describe_tolerance",
    "no_guide",
    "draw_guide",
    "draw_encoder",
    "avb_default_adam",
    "ali_adam",
    "gan_adam",
    "fit_conjugate_gaussian",
    "evaluate_conjugate_gaussian",
    "fit_gamma_poisson",
    "evaluate_gamma_poisson",
    "EXPONENTIAL_X",
    "evaluate_exponential",
    "EXPONENTIAL_AVB_HIDDEN",
    "fit_exponential_avb",
    "fit_exponential_ali",
    "fit_exponential_avb_defaults",
    "fit_exponential_ali_defaults",
    "GAN_BIVARIATE_SETTINGS",
    "fit_gan_bivariate",
    "evaluate_gan_bivariate",
    "GAN_MIXTURE_SETTINGS",
    "fit_gan_mixture",
    "evaluate_gan_mixture",
]

#: the observations at which the amortized exponential posteriors are checked
EXPONENTIAL_X = (1.0, 30.0)
_EXPONENTIAL_RATIOS = ("var_z1", "mean_norm", "sd_norm")


def _exponential_tolerances(ratio, mean_bounds):
    tolerances = {}
    for x in EXPONENTIAL_X:
        for key in _EXPONENTIAL_RATIOS:
            tolerances[f"{key} x={x:g}"] = ratio
        tolerances[f"|E[z]| x={x:g}"] = mean_bounds[x]
    return tolerances


_GAN_BIVARIATE_TOLERANCES = {"mean": 0.1, "covariance": 0.1}

#: task -> criterion -> bound (error below it) or (lo, hi) interval (value inside it)
TOLERANCES = {
    # posterior mean within 0.1 posterior sd, variances within 15%, correlation within 0.1
    "conjugate_gaussian": {"mean (sd)": 0.1, "variance ratio - 1": 0.15, "correlation": 0.1},
    # posterior mean and sd within 10%
    "gamma_poisson": {"mean ratio - 1": 0.1, "sd ratio - 1": 0.1},
    # Var(z1), E|z|, sd|z| within 10%; E[z] = 0 within 0.15 (the x=30 ring's centre is
    # the tight one: 0.07-0.14 over 4 seeds)
    "exponential_avb": _exponential_tolerances(0.1, {1.0: 0.15, 30.0: 0.15}),
    # ALI from a simulation bank: within 15%, E[z] within 0.2
    "exponential_ali": _exponential_tolerances(0.15, {1.0: 0.2, 30.0: 0.2}),
    # largest error of the mean and of the covariance entries (absolute)
    "gan_bivariate_nonsaturating": _GAN_BIVARIATE_TOLERANCES,
    "gan_bivariate_wasserstein": _GAN_BIVARIATE_TOLERANCES,
    # thesis Table 1: 2.095 / 0.952; the exact optimum matches moments: 2 / 1.044
    "gan_mixture_kl": {"|mu - 2|": 0.2, "|sigma - 1.04|": 0.2},
    # thesis Table 1: 2.998 / 0.301: on a mode, with the mode's width, at the exact
    # reverse-KL optimum of the basin the fit ended in
    "gan_mixture_reverse_kl": {
        "mu to nearest mode": 0.15,
        "sigma": (0.2, 0.45),
        "mu to basin optimum": 0.15,
    },
}


def _passes(value, bound):
    if isinstance(bound, tuple):
        return bound[0] <= value <= bound[1]
    return value < bound


def describe_tolerance(bound):
    """``"< 0.1"`` for a bound, ``"in [0.2, 0.45]"`` for an interval."""
    if isinstance(bound, tuple):
        return f"in [{bound[0]:g}, {bound[1]:g}]"
    return f"< {bound:g}"


def failures(task, errors):
    """
    The criteria of ``task`` that ``errors`` misses (NaN misses every bound).

    :param str task: a key of :data:`TOLERANCES`.
    :param dict errors: criterion -> value, from ``evaluate_<task>``.
    :returns: a list of ``"criterion = value, needs < bound"`` strings; empty if all pass.
    """
    missed = []
    for name, bound in TOLERANCES[task].items():
        value = errors[name]
        if not _passes(value, bound):
            missed.append(f"{name} = {value:.4g}, needs {describe_tolerance(bound)}")
    return missed


# ------------------------------------------------------------------------ helpers
def no_guide(*args, **kwargs):
    """The empty guide of a GAN: ``Trace_GAN`` infers no latents."""


def _reset(seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)


def draw_guide(guide, *args, num_samples=4000):
    """``num_samples`` joint draws of a guide with global latents (a plate at dim -2)."""
    with torch.no_grad(), pyro.plate("draws", num_samples, dim=-2):
        return guide(*args)


def draw_encoder(encoder, x, num_samples):
    """``num_samples`` draws of an amortized :class:`~pyro_adv.nn.ImplicitEncoder` at ``x``."""
    with torch.no_grad():
        return encoder(torch.tensor([[float(x)]])).sample((num_samples,)).squeeze(1)


def avb_default_adam(steps):
    """AVB's default schedule: Adam at 5e-3 for both players, decayed 20-fold over ``steps``."""
    return two_timescale_adam(5e-3, num_steps=steps, decay=0.05)


def ali_adam(lr, steps, discriminator_ratio):
    """
    Both players' Adam with GAN momentum (beta1 = 0.5), decaying 20-fold over the run so
    the game settles; the discriminator is faster, so that its logit stays close to the
    log density ratio the guide descends.
    """
    return two_timescale_adam(
        lr,
        discriminator_lr=discriminator_ratio * lr,
        num_steps=steps,
        decay=0.05,
        betas=(0.5, 0.9),
    )


def gan_adam(lr, discriminator_lr, steps, decay=1.0, clip_norm=1e6):
    """
    Adam with a faster discriminator (TTUR), GAN momentum (beta1 = 0.5) and the
    generator's rate decayed by ``decay``; ``clip_norm`` is ClippedAdam's gradient clamp
    (the tests' 1e6 leaves gradients alone, the examples keep Pyro's default 10).
    """
    return two_timescale_adam(
        lr,
        discriminator_lr=discriminator_lr,
        num_steps=steps,
        decay=decay,
        decay_discriminator=False,
        betas=(0.5, 0.999),
        clip_norm=clip_norm,
    )


# ------------------------------------------------ AVB on conjugate models, defaults
def _fit_avb_defaults(model, guide, x, steps):
    svi = SVI(model, guide, avb_default_adam(steps), TraceAVB_ELBO())
    loss = None
    for _ in range(steps):
        loss = svi.step(x)
    return loss


def fit_conjugate_gaussian(seed=0, steps=600):
    """
    ``AutoImplicit`` + ``TraceAVB_ELBO()`` with default settings on the correlated
    2-D conjugate Gaussian (noise sd 2, 10 observations fixed by seed 1).

    :returns: namespace with ``model`` (the :class:`ConjugateGaussian`), ``x``,
        ``guide`` and the last ``loss``.
    """
    _reset(seed)
    model = ConjugateGaussian(noise_scale=2.0)
    _, x = model.simulate(10, torch.Generator().manual_seed(1))
    guide = AutoImplicit(model.model)
    loss = _fit_avb_defaults(model.model, guide, x, steps)
    return SimpleNamespace(model=model, x=x, guide=guide, loss=loss)


def evaluate_conjugate_gaussian(fitted, num_samples=4000):
    """Errors of the posterior mean (in posterior sds), variances and correlation."""
    mean, cov = fitted.model.posterior(fitted.x)
    z = draw_guide(fitted.guide, fitted.x, num_samples=num_samples)["z"].squeeze(-2)
    sd = cov.diag().sqrt()
    # the correlation is learned too (exact: -0.74)
    corr = torch.corrcoef(z.T)[0, 1]
    errors = {
        "mean (sd)": ((z.mean(0) - mean).abs() / sd).max().item(),
        "variance ratio - 1": (z.var(0) / cov.diag() - 1).abs().max().item(),
        "correlation": (corr - cov[0, 1] / sd.prod()).abs().item(),
    }
    return errors, z


#: the Gamma-Poisson test's counts
GAMMA_POISSON_COUNTS = (3.0, 7.0, 4.0, 6.0, 5.0, 2.0, 8.0, 4.0)


def fit_gamma_poisson(seed=0, steps=600):
    """
    ``AutoImplicit`` + ``TraceAVB_ELBO()`` with default settings on a positive latent:
    Gamma(2, 0.5) prior, 8 Poisson counts.

    :returns: namespace with ``model`` (the :class:`GammaPoisson`), ``x``, ``guide``.
    """
    _reset(seed)
    model = GammaPoisson(concentration=2.0, rate=0.5)
    x = torch.tensor(GAMMA_POISSON_COUNTS)
    guide = AutoImplicit(model.model)
    loss = _fit_avb_defaults(model.model, guide, x, steps)
    return SimpleNamespace(model=model, x=x, guide=guide, loss=loss)


def evaluate_gamma_poisson(fitted, num_samples=4000):
    """Relative errors of the posterior mean and sd; the draws are the rates."""
    exact = fitted.model.posterior(fitted.x)
    rate = draw_guide(fitted.guide, fitted.x, num_samples=num_samples)["rate"].reshape(-1)
    errors = {
        "mean ratio - 1": abs(rate.mean().item() / exact.mean.item() - 1),
        "sd ratio - 1": abs(rate.std().item() / exact.stddev.item() - 1),
    }
    return errors, rate


# ------------------------------------------------- the exponential posterior (4.2.1)
def evaluate_exponential(encoder, num_samples):
    """
    Errors of an amortized posterior of :func:`~pyro_adv.models.exponential_model` at
    ``x`` = 1 and 30: relative errors of Var(z1), E|z| and sd|z|, and the largest
    ``|E[z_i]|`` (exactly 0).

    :returns: ``(errors, {x: draws})``.
    """
    errors, draws = {}, {}
    for x in EXPONENTIAL_X:
        draws[x] = z = draw_encoder(encoder, x, num_samples)
        got, exact = posterior_summary(z), exact_posterior_moments(x)
        for key in _EXPONENTIAL_RATIOS:
            errors[f"{key} x={x:g}"] = abs(got[key] / exact[key] - 1)
        errors[f"|E[z]| x={x:g}"] = max(abs(m) for m in got["mean"])
    return errors, draws


#: the amortized AVB encoder's hidden widths: a third layer and 3000 steps brought the
#: largest |E[z]| at x = 30 from 0.16-0.23 (two layers, 1500 steps) to 0.07-0.14 (4 seeds)
EXPONENTIAL_AVB_HIDDEN = (64, 64, 64)


def fit_exponential_avb(
    seed=0,
    steps=3000,
    num_data=4096,
    batch_size=32,
    num_particles=32,
    noise_dim=8,
    hidden_dims=EXPONENTIAL_AVB_HIDDEN,
    lr=5e-3,
    adaptive_contrast=True,
    progress=False,
):
    """
    ``TraceAVB_ELBO`` amortized over ``num_data`` observations from
    :func:`~pyro_adv.models.sample_training_observations` (fixed by their own
    generator, seed 0): an :class:`~pyro_adv.nn.ImplicitEncoder` fed ``log(1 + x)``
    and ``noise_dim`` noise dims, a 128 x 128 discriminator at twice the encoder's
    learning rate, both decayed 20-fold, ``batch_size`` observations and
    ``num_particles`` draws each per step.

    :returns: namespace with ``encoder``, ``objective`` and ``history`` (of
        :func:`~pyro_adv.training.fit`).
    """
    data = sample_training_observations(num_data, generator=torch.Generator().manual_seed(0))
    _reset(seed)
    # the recipe as tuned: log(1 + x) in, no first-batch standardization on top of it
    encoder = ImplicitEncoder(
        1,
        2,
        noise_dim=noise_dim,
        hidden_dims=hidden_dims,
        context_transform=torch.log1p,
        standardize_context=False,
    )
    avb = TraceAVB_ELBO(
        num_particles=num_particles,
        adaptive_contrast=adaptive_contrast,
        discriminator_hidden_dims=(128, 128),
    )
    optim = two_timescale_adam(lr, discriminator_lr=2 * lr, num_steps=steps, decay=0.05)
    svi = SVI(exponential_model, amortized_guide(encoder), optim, avb)
    desc = "avb" if adaptive_contrast else "avb-plain"
    history = fit(svi, steps, data, subsample_size=batch_size, desc=desc, progress=progress)
    return SimpleNamespace(encoder=encoder, objective=avb, history=history)


def fit_exponential_ali(
    seed=0,
    steps=2500,
    num_simulations=1_000_000,
    num_pairs=100_000,
    batch_size=512,
    lr=3e-3,
    progress=False,
):
    """
    ``Trace_ALI`` from a fixed bank of prior-predictive simulations, spread over
    ``log(1 + x)``: the thesis's 3 x 20 tanh encoder with 3 noise dims, the default
    discriminator (the thesis's 3 x 20 tanh one measured worse: Var(z1) at x = 1 off
    by 10-30% across seeds) at 4 times the encoder's learning rate, the encoder's
    weights averaged over the last third of the run.

    :returns: namespace with ``encoder`` (the averaged encoder), ``objective`` and
        ``history``.
    """
    _reset(seed)
    bank = spread_bank(simulate(exponential_model, 1, num_data=num_simulations), num_pairs)
    encoder = ImplicitEncoder(
        1,
        2,
        noise_dim=3,
        hidden_dims=(20, 20, 20),
        activation="tanh",
        context_transform=torch.log1p,
    )
    ali = Trace_ALI(simulations=bank, context_transform=torch.log1p)
    svi = SVI(exponential_model, amortized_guide(encoder), ali_adam(lr, steps, 4.0), ali)
    # the players circle the equilibrium: average the guide's weights over the last third
    average = AveragedModel(encoder)

    def callback(step, loss, stats):
        if step >= 2 * steps // 3:
            average.update_parameters(encoder)

    history = fit(
        svi,
        steps,
        bank["x"][0],
        subsample_size=batch_size,
        desc="ali",
        progress=progress,
        callback=callback,
    )
    return SimpleNamespace(encoder=average.module, objective=ali, history=history)


def fit_exponential_avb_defaults(
    seed=0, steps=3000, num_data=4096, batch_size=32, adaptive_contrast=True, progress=False
):
    """
    ``TraceAVB_ELBO`` with the library's defaults, as ``examples/exponential_posterior.py``
    trains it: ``ImplicitEncoder(1, 2)``, ``TraceAVB_ELBO()`` and its ``default_optim``,
    on the data of :func:`fit_exponential_avb`.

    :returns: namespace with ``encoder``, ``objective`` and ``history``.
    """
    data = _training_observations(num_data, generator=torch.Generator().manual_seed(0))
    _reset(seed)
    encoder = ImplicitEncoder(1, 2)
    avb = TraceAVB_ELBO(adaptive_contrast=adaptive_contrast)
    svi = SVI(exponential_model, amortized_guide(encoder), avb.default_optim(steps), avb)
    history = fit(svi, steps, data, subsample_size=batch_size, desc="avb", progress=progress)
    return SimpleNamespace(encoder=encoder, objective=avb, history=history)


def fit_exponential_ali_defaults(
    seed=0,
    steps=2500,
    num_simulations=1_000_000,
    num_pairs=100_000,
    batch_size=512,
    progress=False,
):
    """
    ``Trace_ALI`` with the library's defaults, as ``examples/exponential_posterior.py``
    trains it: ``ImplicitEncoder(1, 2)``, ``Trace_ALI``'s ``default_optim``, on the
    spread bank of :func:`fit_exponential_ali`, the discriminator seeing ``log(1 + x)``
    (both specific to this model).

    :returns: namespace with ``encoder``, ``objective`` and ``history``.
    """
    _reset(seed)
    bank = spread_bank(simulate(exponential_model, 1, num_data=num_simulations), num_pairs)
    encoder = ImplicitEncoder(1, 2)
    ali = Trace_ALI(simulations=bank, context_transform=torch.log1p)
    svi = SVI(exponential_model, amortized_guide(encoder), ali.default_optim(steps), ali)
    history = fit(
        svi, steps, bank["x"][0], subsample_size=batch_size, desc="ali", progress=progress
    )
    return SimpleNamespace(encoder=encoder, objective=ali, history=history)


# ------------------------------------------------------- GAN samplers (3.2.1, 3.3.2.1)
#: the bivariate-normal tests' optimizer settings per divergence
GAN_BIVARIATE_SETTINGS = {
    "nonsaturating": {"lr": 1e-3, "discriminator_lr": 4e-3, "steps": 700, "decay": 0.3},
    "wasserstein": {"lr": 1e-3, "discriminator_lr": 3e-3, "steps": 1000, "decay": 0.05},
}
#: the mixture tests' optimizer settings per divergence
GAN_MIXTURE_SETTINGS = {
    "kl": {"lr": 1e-2, "discriminator_lr": 3e-3, "steps": 1000, "decay": 0.1},
    "reverse_kl": {"lr": 5e-3, "discriminator_lr": 5e-3, "steps": 800, "decay": 0.3},
}
_GAN_DATA, _GAN_BATCH = 20000, 256


def _fit_gan(model, data, divergence, settings, steps):
    steps = settings["steps"] if steps is None else steps
    objective = Trace_GAN(
        divergence, discriminator_hidden_dims=(40, 40), discriminator_activation="tanh"
    )
    optim = gan_adam(settings["lr"], settings["discriminator_lr"], steps, settings["decay"])
    svi = SVI(model, no_guide, optim, loss=objective)
    for _ in range(steps):
        svi.step(data[torch.randint(len(data), (_GAN_BATCH,))])
    return objective


def fit_gan_bivariate(divergence, seed=0, steps=None):
    """
    The thesis's bivariate-normal GAN (section 3.2.1) with ``divergence`` (a key of
    :data:`GAN_BIVARIATE_SETTINGS`), minibatches of 256 from 20000 target draws.

    :returns: namespace with the fitted model ``gan`` and the ``objective``.
    """
    _reset(seed)
    gan = bivariate_normal_gan()
    data = sample_bivariate_normal(_GAN_DATA)
    objective = _fit_gan(gan, data, divergence, GAN_BIVARIATE_SETTINGS[divergence], steps)
    return SimpleNamespace(gan=gan, objective=objective)


def evaluate_gan_bivariate(fitted, num_samples=20000):
    """Largest absolute errors of the sample mean and covariance; draws ``(1, n, 2)``."""
    samples = Predictive(fitted.gan, num_samples=1)(n=num_samples)["x"]
    x = samples[0]
    errors = {
        "mean": (x.mean(0) - torch.tensor(BIVARIATE_MEAN)).abs().max().item(),
        "covariance": (torch.cov(x.T) - torch.tensor(BIVARIATE_COVARIANCE)).abs().max().item(),
    }
    return errors, samples


def fit_gan_mixture(divergence, seed=0, steps=None):
    """
    The location-scale generator fitted to the two-Gaussian mixture (section
    3.3.2.1) with ``divergence`` (a key of :data:`GAN_MIXTURE_SETTINGS`).

    :returns: namespace with the fitted ``loc`` and ``scale`` and the ``divergence``.
    """
    _reset(seed)
    data = sample_mixture(_GAN_DATA)
    _fit_gan(location_scale_gan, data, divergence, GAN_MIXTURE_SETTINGS[divergence], steps)
    store = pyro.get_param_store()
    return SimpleNamespace(
        loc=store["loc"].item(), scale=store["scale"].item(), divergence=divergence
    )


def evaluate_gan_mixture(fitted):
    """
    Forward KL: distance of ``(mu, sigma)`` to moment matching. Reverse KL: distance
    of ``mu`` to the nearest mode and to the exact optimum of the basin the fit ended
    in, and ``sigma``. The draws are ``(mu, sigma)``.
    """
    loc, scale = fitted.loc, fitted.scale
    if fitted.divergence == "kl":
        errors = {"|mu - 2|": abs(loc - 2.0), "|sigma - 1.04|": abs(scale - 1.04)}
    elif fitted.divergence == "reverse_kl":
        # a diverged fit (NaN, sigma <= 0) has no basin: its error is NaN, a miss
        finite = math.isfinite(loc) and scale > 0
        basin = exact_divergence_optimum("reverse_kl", init=(loc, scale)) if finite else None
        errors = {
            "mu to nearest mode": min(abs(loc - 1.0), abs(loc - 3.0)),
            "sigma": scale,
            "mu to basin optimum": abs(basin.loc - loc) if finite else math.nan,
        }
    else:
        raise ValueError(f"no mixture tolerances for {fitted.divergence!r}")
    return errors, (loc, scale)
