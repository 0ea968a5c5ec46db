r"""
Targets of the thesis's GAN experiments (sections 3.2.1 and 3.3.2.1) and their
exact references.

* The bivariate normal of section 3.2.1:
  :math:`N\big((1, 1),\ \Sigma\big)` with standard deviations 0.7 and correlation 0.5,
  fitted by the MLP generator of :func:`bivariate_normal_gan`.
* The mixture of section 3.3.2.1, :math:`p = \tfrac12 N(1, 0.3^2) + \tfrac12 N(3, 0.3^2)`,
  fitted by the location-scale generator :math:`G(z) = \mu + \sigma z`,
  :math:`z \sim N(0, 1)`, i.e. :math:`q = N(\mu, \sigma^2)`.
* The mode-collapse benchmarks of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin
  et al. 2018): 8 Gaussians on a ring of radius 2 with sd 0.02
  (:func:`sample_ring`) and 25 on the grid :math:`\{-4, -2, 0, 2, 4\}^2` with sd
  0.05 (:func:`sample_grid`), equal weights; their mode centres feed
  :func:`pyro_adv.diagnostics.mode_coverage`.
* Exact divergences between one-dimensional densities by quadrature, and the exact
  minimizer over :math:`(\mu, \sigma)` of each divergence of
  :mod:`pyro_adv.infer.divergences` (:func:`exact_divergence_optimum`): the number a
  perfectly trained GAN with that divergence converges to (thesis Table 1); likewise
  for the energy distance (:func:`exact_energy_distance_optimum`), the proper scoring
  rule behind :class:`pyro.infer.EnergyDistance`.

The divergence formulas themselves live in :mod:`pyro_adv.infer.divergences`
(``Divergence.f``); this module only integrates them.
"""

import math
from collections import namedtuple
from functools import cache

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import optimize, special
from torch.distributions import constraints

from pyro_adv.distributions.implicit import ImplicitDistribution
from pyro_adv.infer.divergences import get_divergence
from pyro_adv.nn.generators import MLPGenerator

__all__ = [
    "BIVARIATE_MEAN",
    "BIVARIATE_SD",
    "BIVARIATE_CORRELATION",
    "BIVARIATE_COVARIANCE",
    "MIXTURE_LOCS",
    "MIXTURE_SCALE",
    "MIXTURE_WEIGHTS",
    "GRID_SD",
    "RING_RADIUS",
    "RING_SD",
    "DivergenceOptimum",
    "grid_centres",
    "ring_centres",
    "sample_grid",
    "sample_ring",
    "gan_2d",
    "bivariate_normal_target",
    "sample_bivariate_normal",
    "bivariate_normal_gan",
    "mixture_log_density",
    "mixture_cdf",
    "mixture_moments",
    "sample_mixture",
    "location_scale_gan",
    "gaussian_kl",
    "divergence_1d",
    "gaussian_divergence",
    "mixture_divergence",
    "exact_divergence_optimum",
    "mixture_energy_distance",
    "exact_energy_distance_optimum",
]

# ------------------------------------------------------------ bivariate normal
#: mean of the section 3.2.1 target
BIVARIATE_MEAN = (1.0, 1.0)
#: standard deviation of each marginal
BIVARIATE_SD = 0.7
#: correlation of the two coordinates
BIVARIATE_CORRELATION = 0.5
#: covariance matrix ``[[0.49, 0.245], [0.245, 0.49]]``
BIVARIATE_COVARIANCE = (
    (BIVARIATE_SD**2, BIVARIATE_CORRELATION * BIVARIATE_SD**2),
    (BIVARIATE_CORRELATION * BIVARIATE_SD**2, BIVARIATE_SD**2),
)


def bivariate_normal_target(dtype=None, device=None):
    """The target :math:`N(\\mu, \\Sigma)` of section 3.2.1 as a Pyro distribution."""
    dtype = dtype or torch.get_default_dtype()
    loc = torch.tensor(BIVARIATE_MEAN, dtype=dtype, device=device)
    cov = torch.tensor(BIVARIATE_COVARIANCE, dtype=dtype, device=device)
    return dist.MultivariateNormal(loc, covariance_matrix=cov)


def sample_bivariate_normal(n, dtype=None, device=None):
    """``n`` exact draws from the section 3.2.1 target, shape ``(n, 2)``."""
    return bivariate_normal_target(dtype, device).sample((n,))


def bivariate_normal_gan(generator=None):
    r"""
    The GAN sampler of section 3.2.1 as a Pyro model: :math:`x = G(\epsilon)`,
    :math:`\epsilon \sim N(0, I_2)`, with the thesis's generator (one hidden layer of
    20 softplus units) unless ``generator`` is given. The observed site ``"x"``
    carries an :class:`~pyro_adv.distributions.ImplicitDistribution`.

    Returns ``gan(data=None, n=1000, batch_size=None)``: it observes ``data`` of shape
    ``(n, 2)`` (a random minibatch of ``batch_size`` rows per call when given), or
    simulates ``n`` points when ``data`` is ``None``.

    :param torch.nn.Module generator: maps noise ``(..., 2)`` to points ``(..., 2)``.
    """
    if generator is None:
        generator = MLPGenerator(2, 2, hidden_dims=(20,), activation="softplus")

    def gan(data=None, n=1000, batch_size=None):
        pyro.module("generator", generator)
        n = data.shape[0] if data is not None else n
        with pyro.plate("data", n, subsample_size=batch_size) as ind:
            noise = dist.Normal(0.0, 1.0).expand([len(ind), 2]).to_event(1)
            pyro.sample(
                "x",
                ImplicitDistribution(generator, noise),
                obs=None if data is None else data[ind],
            )

    return gan


def gan_2d(generator, noise_dim=2):
    r"""
    A GAN sampler of points in the plane as a Pyro model: :math:`x = G(\epsilon)`,
    :math:`\epsilon \sim N(0, I)` of width ``noise_dim``, observed at site ``"x"``.
    Returns ``gan(data=None, n=1000, batch_size=None)`` as :func:`bivariate_normal_gan`.

    :param torch.nn.Module generator: maps noise ``(..., noise_dim)`` to points ``(..., 2)``.
    """

    def gan(data=None, n=1000, batch_size=None):
        pyro.module("generator", generator)
        n = data.shape[0] if data is not None else n
        with pyro.plate("data", n, subsample_size=batch_size) as ind:
            noise = dist.Normal(0.0, 1.0).expand([len(ind), noise_dim]).to_event(1)
            pyro.sample(
                "x",
                ImplicitDistribution(generator, noise),
                obs=None if data is None else data[ind],
            )

    return gan


# ------------------------------------------------------ ring and grid of modes
#: radius of the ring of 8 modes (VEEGAN, PacGAN)
RING_RADIUS = 2.0
#: standard deviation of each ring mode
RING_SD = 0.02
#: standard deviation of each grid mode
GRID_SD = 0.05


def ring_centres(num_modes=8, radius=RING_RADIUS, dtype=None, device=None):
    """The ``(num_modes, 2)`` centres of the ring, equally spaced from angle 0."""
    angle = torch.arange(num_modes, dtype=dtype or torch.get_default_dtype(), device=device)
    angle = angle * (2 * math.pi / num_modes)
    return radius * torch.stack([angle.cos(), angle.sin()], -1)


def grid_centres(dtype=None, device=None):
    r"""The ``(25, 2)`` centres of the grid :math:`\{-4, -2, 0, 2, 4\}^2`."""
    axis = torch.arange(-4.0, 5.0, 2.0, dtype=dtype or torch.get_default_dtype(), device=device)
    return torch.cartesian_prod(axis, axis)


def _sample_modes(centres, sd, n):
    k = torch.randint(len(centres), (n,), device=centres.device)
    return centres[k] + sd * torch.randn(
        n, centres.shape[-1], dtype=centres.dtype, device=centres.device
    )


def sample_ring(n, dtype=None, device=None):
    """``n`` draws from the equal mixture of 8 Gaussians (sd 0.02) on the ring of radius 2."""
    return _sample_modes(ring_centres(dtype=dtype, device=device), RING_SD, n)


def sample_grid(n, dtype=None, device=None):
    """``n`` draws from the equal mixture of 25 Gaussians (sd 0.05) on the 5 x 5 grid."""
    return _sample_modes(grid_centres(dtype=dtype, device=device), GRID_SD, n)


# ------------------------------------------------------------------- mixture
#: component means of the section 3.3.2.1 mixture
MIXTURE_LOCS = (1.0, 3.0)
#: common component standard deviation
MIXTURE_SCALE = 0.3
#: component weights
MIXTURE_WEIGHTS = (0.5, 0.5)


def mixture_log_density(x):
    """
    :math:`\\log p(x)` of the mixture, for a numpy array or a torch tensor ``x``.
    """
    if torch.is_tensor(x):
        locs = torch.tensor(MIXTURE_LOCS, dtype=x.dtype, device=x.device)
        logw = torch.tensor(MIXTURE_WEIGHTS, dtype=x.dtype, device=x.device).log()
        comp = dist.Normal(locs, MIXTURE_SCALE).log_prob(x.unsqueeze(-1))
        return torch.logsumexp(comp + logw, -1)
    x = np.asarray(x, dtype=float)[..., None]
    locs, w = np.array(MIXTURE_LOCS), np.array(MIXTURE_WEIGHTS)
    comp = -0.5 * ((x - locs) / MIXTURE_SCALE) ** 2 - math.log(
        MIXTURE_SCALE * math.sqrt(2 * math.pi)
    )
    return special.logsumexp(comp + np.log(w), axis=-1)


def mixture_cdf(x):
    """The mixture's cumulative distribution function (numpy)."""
    x = np.asarray(x, dtype=float)[..., None]
    z = (x - np.array(MIXTURE_LOCS)) / MIXTURE_SCALE
    return (special.ndtr(z) * np.array(MIXTURE_WEIGHTS)).sum(-1)


def mixture_moments():
    """``(mean, sd)`` of the mixture: ``(2, sqrt(1.09))``; the forward-KL optimum."""
    locs, w = np.array(MIXTURE_LOCS), np.array(MIXTURE_WEIGHTS)
    mean = float((w * locs).sum())
    var = float((w * (locs**2 + MIXTURE_SCALE**2)).sum() - mean**2)
    return mean, math.sqrt(var)


def sample_mixture(n, dtype=None, device=None):
    """``n`` exact draws from the mixture, shape ``(n,)``."""
    dtype = dtype or torch.get_default_dtype()
    weights = torch.tensor(MIXTURE_WEIGHTS, dtype=dtype, device=device)
    locs = torch.tensor(MIXTURE_LOCS, dtype=dtype, device=device)
    k = torch.multinomial(weights, n, replacement=True)
    return locs[k] + MIXTURE_SCALE * torch.randn(n, dtype=dtype, device=device)


def location_scale_gan(data=None, n=None, loc=0.0, scale=1.0, subsample_size=None):
    r"""
    The generator of section 3.3.2.1 as a Pyro model: :math:`x = \mu + \sigma z`,
    :math:`z \sim N(0, 1)`, with :math:`\mu` and :math:`\sigma` Pyro params
    ``"loc"`` and ``"scale"`` (initialized to ``loc`` and ``scale``). The observed
    site ``"x"`` carries an :class:`~pyro_adv.distributions.ImplicitDistribution`,
    so only :class:`~pyro_adv.infer.Trace_GAN` can fit it, although this one
    happens to be :math:`N(\mu, \sigma^2)`.

    :param torch.Tensor data: observations of shape ``(n,)``, or ``None``.
    :param int n: how many to simulate when ``data`` is ``None``.
    :param float loc: initial :math:`\mu`.
    :param float scale: initial :math:`\sigma`.
    :param int subsample_size: minibatch size: each call observes (or simulates)
        a random subsample of the plate.
    """
    if data is None and n is None:
        raise ValueError("location_scale_gan needs data or n")
    n = data.shape[0] if data is not None else n
    like = data if data is not None else torch.zeros(())
    mu = pyro.param("loc", like.new_tensor(loc))
    sigma = pyro.param("scale", like.new_tensor(scale), constraint=constraints.positive)
    with pyro.plate("data", n, subsample_size=subsample_size) as ind:
        noise = dist.Normal(like.new_zeros(len(ind)), 1.0)
        generated = ImplicitDistribution(lambda z: mu + sigma * z, noise, event_shape=())
        return pyro.sample("x", generated, obs=None if data is None else data[ind])


# -------------------------------------------------------- exact divergences
def gaussian_kl(loc_p, scale_p, loc_q, scale_q):
    r"""Closed form :math:`KL(N(\mu_p, \sigma_p^2) \| N(\mu_q, \sigma_q^2))` (floats)."""
    return (
        math.log(scale_q / scale_p) + (scale_p**2 + (loc_p - loc_q) ** 2) / (2 * scale_q**2) - 0.5
    )


# The log ratio is clipped where one density underflows far out in the tails: the
# clipped region carries no mass at any (mu, sigma) the optimizer visits near an optimum.
_LOG_RATIO_CLIP = 100.0


def divergence_1d(divergence, log_p, log_q, grid, cdf_p=None, cdf_q=None):
    r"""
    A divergence between two one-dimensional densities by quadrature on ``grid``
    (trapezoid rule), in the convention of :mod:`pyro_adv.infer.divergences`:
    :math:`D_f(p \| q) = \int q\, f(p / q)\, dx` with ``p`` the data and ``q`` the
    generator. Divergences with ``needs_cdfs`` (Wasserstein-1,
    :math:`\int |F_p - F_q|\, dx`) are computed from the CDFs instead.

    :param divergence: a name or :class:`~pyro_adv.infer.divergences.Divergence`.
    :param numpy.ndarray log_p: :math:`\log p` on ``grid``.
    :param numpy.ndarray log_q: :math:`\log q` on ``grid``.
    :param numpy.ndarray grid: increasing abscissae covering both densities.
    :param numpy.ndarray cdf_p: :math:`F_p` on ``grid`` (divergences with ``needs_cdfs`` only).
    :param numpy.ndarray cdf_q: :math:`F_q` on ``grid`` (divergences with ``needs_cdfs`` only).
    :rtype: float
    """
    divergence = get_divergence(divergence)
    grid = np.asarray(grid, dtype=float)
    if divergence.needs_cdfs:
        if cdf_p is None or cdf_q is None:
            raise ValueError(f"the {divergence.name} divergence needs cdf_p and cdf_q")
        cdfs = [torch.as_tensor(np.asarray(c, dtype=float)) for c in (cdf_p, cdf_q, grid)]
        return float(divergence.from_cdfs(*cdfs))
    log_p = torch.as_tensor(np.asarray(log_p, dtype=float))
    log_q = torch.as_tensor(np.asarray(log_q, dtype=float))
    log_ratio = (log_p - log_q).clamp(-_LOG_RATIO_CLIP, _LOG_RATIO_CLIP)
    integrand = (log_q.exp() * divergence.f(log_ratio)).numpy()
    return float(np.trapezoid(integrand, grid))


def _normal_log_density(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - math.log(scale * math.sqrt(2 * math.pi))


def _grid(lo, hi, num=20001):
    return np.linspace(lo, hi, num)


def gaussian_divergence(divergence, loc_p, scale_p, loc_q, scale_q, num=4001):
    r"""
    :func:`divergence_1d` between :math:`p = N(\mu_p, \sigma_p^2)` (real) and
    :math:`q = N(\mu_q, \sigma_q^2)` (fake), by quadrature over 12 standard
    deviations around both.
    """
    lo = min(loc_p - 12 * scale_p, loc_q - 12 * scale_q)
    hi = max(loc_p + 12 * scale_p, loc_q + 12 * scale_q)
    x = _grid(lo, hi, num)
    return divergence_1d(
        divergence,
        _normal_log_density(x, loc_p, scale_p),
        _normal_log_density(x, loc_q, scale_q),
        x,
        special.ndtr((x - loc_p) / scale_p),
        special.ndtr((x - loc_q) / scale_q),
    )


def mixture_divergence(divergence, loc, scale, num=2001):
    r"""
    The divergence between the mixture :math:`p` (real) and
    :math:`q = N(\mu, \sigma^2)` (the generator), by quadrature.
    """
    span = 12 * MIXTURE_SCALE
    lo = min(min(MIXTURE_LOCS) - span, loc - 12 * scale)
    hi = max(max(MIXTURE_LOCS) + span, loc + 12 * scale)
    x = _grid(lo, hi, num)
    return divergence_1d(
        divergence,
        mixture_log_density(x),
        _normal_log_density(x, loc, scale),
        x,
        mixture_cdf(x),
        special.ndtr((x - loc) / scale),
    )


#: the exact minimizer of a divergence over the generator's (mu, sigma)
DivergenceOptimum = namedtuple("DivergenceOptimum", ["loc", "scale", "divergence"])

_STARTS = ((2.0, 1.0), (1.0, 0.3), (1.5, 0.6))


def _minimize(distance, start):
    """Nelder-Mead on ``(mu, log sigma)`` of ``distance(mu, sigma)`` from ``start``."""

    def objective(theta):
        value = distance(theta[0], math.exp(theta[1]))
        return value if math.isfinite(value) else 1e10

    result = optimize.minimize(
        objective,
        np.array([start[0], math.log(start[1])]),
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000},
    )
    return DivergenceOptimum(float(result.x[0]), float(math.exp(result.x[1])), float(result.fun))


@cache
def _cached_optimum(name, start, num):
    def distance(loc, scale):
        return mixture_divergence(name, loc, scale, num)

    if start is not None:
        return _minimize(distance, start)
    best = None
    for s in _STARTS:
        candidate = _minimize(distance, s)
        # symmetric optima tie up to quadrature error: prefer the first found
        if best is None or candidate.divergence < best.divergence - 1e-7:
            best = candidate
    return best


def exact_divergence_optimum(divergence, init=None, num=2001):
    r"""
    The exact minimizer over :math:`(\mu, \sigma)` of the divergence between the
    mixture of section 3.3.2.1 and :math:`N(\mu, \sigma^2)`: the fixed point of a
    GAN trained with that divergence and a perfect discriminator. The divergence
    is integrated by quadrature (:func:`mixture_divergence`) and minimized with
    :func:`scipy.optimize.minimize` (Nelder-Mead on :math:`(\mu, \log\sigma)`).

    Mode-seeking divergences have two symmetric optima, one per mode. Without
    ``init`` the best of several starts is returned (the mode it lands on is an
    arbitrary but fixed choice); with ``init`` the optimum of the basin that
    ``init`` lies in, e.g. the mode a trained GAN collapsed onto.

    Example::

        >>> exact_divergence_optimum("kl")          # moment matching
        DivergenceOptimum(loc=2.0, scale=1.044..., divergence=...)

    :param divergence: a divergence name (see :data:`~pyro_adv.infer.divergences.DIVERGENCES`).
    :param tuple init: optional start ``(mu, sigma)``.
    :param int num: quadrature points (the default gives about four correct
        decimals; the kinks of total variation and Wasserstein cost the most).
    :rtype: DivergenceOptimum
    """
    name = get_divergence(divergence).name
    if init is not None:
        init = (float(init[0]), float(init[1]))
        if not init[1] > 0:
            raise ValueError(f"init sigma must be positive, got {init[1]}")
    return _cached_optimum(name, init, int(num))


def mixture_energy_distance(loc, scale, num=4001):
    r"""
    The energy distance (Székely and Rizzo 2013) between the mixture and
    :math:`N(\mu, \sigma^2)`. In one dimension
    :math:`2\,\mathbb{E}|X - Y| - \mathbb{E}|X - X'| - \mathbb{E}|Y - Y'|
    = 2 \int (F_p - F_q)^2\, dx`, integrated by the trapezoid rule; the same
    quantity as :func:`pyro_adv.diagnostics.energy_distance` estimates from samples.
    """
    span = 12 * MIXTURE_SCALE
    lo = min(min(MIXTURE_LOCS) - span, loc - 12 * scale)
    hi = max(max(MIXTURE_LOCS) + span, loc + 12 * scale)
    x = _grid(lo, hi, num)
    gap = mixture_cdf(x) - special.ndtr((x - loc) / scale)
    return float(2.0 * np.trapezoid(gap * gap, x))


@cache
def exact_energy_distance_optimum(num=4001):
    r"""
    The minimizer over :math:`(\mu, \sigma)` of :func:`mixture_energy_distance`:
    where a generator trained on the energy score of one observation at a time
    (:class:`pyro.infer.EnergyDistance` on a minibatch of one) converges. It is
    :math:`N(2, 1.219^2)`, wider than moment matching (forward KL's 1.044): the
    energy distance is unimodal here, so one start suffices.

    :rtype: DivergenceOptimum
    """
    return _minimize(lambda loc, scale: mixture_energy_distance(loc, scale, num), (2.0, 1.0))
