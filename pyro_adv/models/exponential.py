r"""
The thesis's exponential-latent model (section 4.2.1) and its exact posterior.

.. math::

    z \in \mathbb{R}^2,\quad z \sim N(0, \sigma^2 I),\ \sigma^2 = 2,\qquad
    x \mid z \sim \mathrm{Exp}(1/\beta),\ \beta = 1 + |z|^2.

The posterior is rotation invariant, so with :math:`r = |z|`

.. math:: p(r \mid x) \propto r\, e^{-r^2 / (2\sigma^2)}\, \beta^{-1} e^{-x/\beta},
          \quad \beta = 1 + r^2,

and every moment is a 1-D integral over the radius: :math:`E|z| = E[r]`,
:math:`\mathrm{Var}(z_1) = E[r^2]/2`, :math:`E[z] = 0`.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import integrate

__all__ = [
    "PRIOR_VARIANCE",
    "exponential_model",
    "sample_training_observations",
    "spread_bank",
    "exponential_log_joint",
    "exact_posterior_moments",
    "exact_posterior_sample",
    "sample_prior_predictive",
    "posterior_summary",
]

#: the prior variance sigma^2 of each coordinate of z
PRIOR_VARIANCE = 2.0


def exponential_model(x=None, num_data=None, subsample_size=None):
    """
    The model as a Pyro program: ``z_i ~ N(0, 2 I)``, ``x_i ~ Exp(rate=1/(1+|z_i|^2))``
    for each of the ``len(x)`` observations (or ``num_data`` simulated ones).

    :param torch.Tensor x: observations, shape ``(N,)``, or ``None`` to simulate.
    :param int num_data: how many to simulate when ``x`` is ``None``.
    :param int subsample_size: minibatch size; the ELBO is scaled by ``N / size``.
    """
    if x is None and num_data is None:
        raise ValueError("exponential_model needs observations x or num_data")
    n = x.shape[0] if x is not None else num_data
    scale = math.sqrt(PRIOR_VARIANCE)
    zero = x.new_zeros(()) if x is not None else torch.zeros(())
    with pyro.plate("data", n, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(zero, scale).expand([2]).to_event(1))
        beta = 1.0 + z.pow(2).sum(-1)
        obs = x[idx] if x is not None else None
        return pyro.sample("x", dist.Exponential(1.0 / beta), obs=obs)


def sample_training_observations(num_data, x_max=40.0, generator=None):
    """
    Observations that cover the range of interest for an amortized posterior: half
    uniform on ``[0, x_max]``, half log-uniform on ``[0.25, x_max]``, so small ``x``
    (a compact posterior) and large ``x`` (a ring) are both well represented.
    """
    u = torch.rand(num_data, generator=generator)
    uniform = u * x_max
    log_uniform = 0.25 * torch.exp(u * math.log(x_max / 0.25))
    pick = torch.rand(num_data, generator=generator) < 0.5
    return torch.where(pick, uniform, log_uniform)


def exponential_log_joint(z, x):
    """``log p(x, z)`` (thesis eq. 33) for ``z`` of shape ``(..., 2)`` and broadcastable ``x``."""
    beta = 1.0 + z.pow(2).sum(-1)
    log_prior = -math.log(2 * math.pi * PRIOR_VARIANCE) - z.pow(2).sum(-1) / (2 * PRIOR_VARIANCE)
    return log_prior - torch.log(beta) - x / beta


def _radial_log_density(r, x):
    beta = 1.0 + r * r
    return np.log(np.maximum(r, 1e-300)) - r * r / (2 * PRIOR_VARIANCE) - np.log(beta) - x / beta


def exact_posterior_moments(x):
    """
    Exact posterior summaries for one observation ``x`` by quadrature over the radius.

    :returns: dict with ``mean`` (``[0, 0]``), ``var_z1``, ``mean_norm`` (E|z|),
        ``sd_norm`` (sd|z|) and ``mean_sq_norm`` (E|z|^2).
    """
    x = float(x)
    if not x >= 0:
        raise ValueError(f"x must be a non-negative number, got {x}")
    # peak of the radial density, to centre the integrand and avoid underflow
    grid = np.linspace(1e-6, 30.0, 30001)
    log_d = _radial_log_density(grid, x)
    shift = log_d.max()

    def density(r):
        return math.exp(_radial_log_density(r, x) - shift)

    opts = dict(limit=400, epsabs=0.0, epsrel=1e-11, points=[grid[np.argmax(log_d)]])
    upper = 40.0  # e^{-r^2/4} makes the tail beyond 40 negligible (< e^{-400})
    m0 = integrate.quad(density, 0.0, upper, **opts)[0]
    m1 = integrate.quad(lambda r: r * density(r), 0.0, upper, **opts)[0] / m0
    m2 = integrate.quad(lambda r: r * r * density(r), 0.0, upper, **opts)[0] / m0
    return {
        "mean": [0.0, 0.0],
        "var_z1": m2 / 2.0,
        "mean_norm": m1,
        "sd_norm": math.sqrt(max(m2 - m1 * m1, 0.0)),
        "mean_sq_norm": m2,
    }


def exact_posterior_sample(x, num_samples, generator=None, batch_size=1_000_000):
    """
    Exact posterior draws for one observation by rejection from the prior: propose
    ``z ~ N(0, 2I)`` and accept with probability ``L(z) / max L`` where
    ``L = beta^{-1} exp(-x/beta)`` is maximized at ``beta = max(x, 1)``.

    :param float x: the observation.
    :param int num_samples: how many draws.
    :param torch.Generator generator: source of randomness (seed it for reproducibility).
    :returns: tensor of shape ``(num_samples, 2)``.
    """
    x = float(x)
    if not x >= 0:
        raise ValueError(f"x must be a non-negative number, got {x}")
    beta_max = max(x, 1.0)
    log_l_max = -math.log(beta_max) - x / beta_max
    scale = math.sqrt(PRIOR_VARIANCE)
    accepted, total = [], 0
    while total < num_samples:
        z = torch.randn(batch_size, 2, generator=generator, dtype=torch.float64) * scale
        beta = 1.0 + z.pow(2).sum(-1)
        log_accept = -torch.log(beta) - x / beta - log_l_max
        keep = torch.rand(batch_size, generator=generator, dtype=torch.float64).log() < log_accept
        accepted.append(z[keep])
        total += int(keep.sum())
    return torch.cat(accepted)[:num_samples].float()


def spread_bank(bank, num_pairs, bins=16, x_max=60.0):
    """
    Resamples a bank of simulated ``(z, x)`` pairs (from
    :func:`pyro_adv.infer.simulate`, one simulation of many observations) so that
    ``log(1 + x)`` is spread evenly over ``bins`` bins up to ``x_max``. The weights
    depend on ``x`` alone, so the pairs still follow ``p(z | x)`` and ALI's optimum is
    unchanged, while ``x`` near 30 (1.5% of the prior predictive) gets about as many
    pairs as ``x`` near 1.

    :param dict bank: site name -> tensor with a leading simulation dim of size 1.
    :param int num_pairs: how many pairs to draw (with replacement).
    """
    log_x = torch.log1p(bank["x"][0])
    which = (log_x / torch.log1p(torch.tensor(x_max)) * bins).long().clamp(max=bins - 1)
    weights = (1.0 / torch.bincount(which, minlength=bins).float())[which]
    rows = torch.multinomial(weights, num_pairs, replacement=True)
    return {name: value[:, rows] for name, value in bank.items()}


def sample_prior_predictive(num_samples, generator=None):
    """Draws ``(z, x)`` pairs from the model: ``z ~ N(0, 2I)``, ``x ~ Exp(1/(1+|z|^2))``."""
    z = torch.randn(num_samples, 2, generator=generator) * math.sqrt(PRIOR_VARIANCE)
    beta = 1.0 + z.pow(2).sum(-1)
    u = torch.rand(num_samples, generator=generator)
    return z, -beta * torch.log1p(-u)


def posterior_summary(samples):
    """The thesis's summaries of posterior draws ``(n, 2)``: E[z], Var(z1), E|z|, sd|z|."""
    norm = samples.norm(dim=-1)
    return {
        "mean": samples.mean(0).tolist(),
        "var_z1": samples[:, 0].var().item(),
        "mean_norm": norm.mean().item(),
        "sd_norm": norm.std().item(),
    }
