r"""
Randomized task families with exact references: tasks drawn by a seeded generator,
so that a method's defaults can be checked on problems nobody tuned them for
(Table 5 of the benchmarks, ``benchmarks/robustness.py``).

Every family is a function of an integer ``seed`` (and optionally its size) that
returns a task with an exact answer; the task's parameters are drawn with
:class:`numpy.random.Generator` from that seed alone, so they do not depend on, and
do not change, torch's or Pyro's global random state.

* :func:`random_gaussian_target`: a Gaussian :math:`N(\mu, \Sigma)` in ``dim``
  dimensions with random mean, scales and correlation, the data of a GAN
  (:class:`~pyro_adv.infer.Trace_GAN`).
* :func:`random_conjugate_gaussian`: a linear-Gaussian model with a global latent of
  dimension 2-10, a random design matrix and random data, for a non-amortized guide
  (:class:`~pyro_adv.infer.autoguide.AutoImplicit` with
  :class:`~pyro_adv.infer.TraceAVB_ELBO`); its posterior is exact by conjugacy
  (:class:`~pyro_adv.models.conjugate.ConjugateGaussian`).
* :func:`random_linear_simulator`: a simulator :math:`x = A\theta + b + \sigma\epsilon`
  with a Gaussian prior, as an :class:`~pyro_adv.models.sbi_tasks.SBITask` for an
  amortized encoder (:class:`~pyro_adv.infer.Trace_ALI`, or amortized AVB); the
  posterior at every :math:`x` is exact by conjugacy.
* :func:`random_exponential_observations`: observations of the thesis's exponential
  model (:mod:`pyro_adv.models.exponential`, exact posterior moments by quadrature)
  drawn across its range.

:func:`gaussian_errors` scores draws against a Gaussian reference with the two
criteria Table 5 states tolerances for: the mean error in reference sds and the sd
ratio along the worst direction.
"""

import math
from collections import namedtuple

import numpy as np
import pyro.distributions as dist
import torch

from pyro_adv.models.conjugate import ConjugateGaussian
from pyro_adv.models.sbi_tasks import SBITask

__all__ = [
    "GaussianTarget",
    "LinearGaussianSimulator",
    "RandomConjugateGaussian",
    "gaussian_errors",
    "random_conjugate_gaussian",
    "random_correlation",
    "random_exponential_observations",
    "random_gaussian_target",
    "random_linear_simulator",
]


def _rng(seed, salt):
    # one stream per family, so the same seed gives unrelated tasks across families
    return np.random.default_rng([int(seed), salt])


def _tensor(array, dtype=None):
    return torch.as_tensor(np.asarray(array), dtype=dtype or torch.get_default_dtype())


def random_correlation(dim, rng, max_condition=10.0):
    r"""
    A random ``dim x dim`` correlation matrix: a uniformly random rotation :math:`Q`
    of eigenvalues drawn log-uniformly in ``[1, max_condition]``, rescaled to a unit
    diagonal, :math:`R = D^{-1/2} Q \Lambda Q^\top D^{-1/2}`. The condition number
    of the unscaled matrix is at most ``max_condition``, which keeps every
    correlation away from :math:`\pm 1` (in two dimensions :math:`|\rho| \le 0.82`
    for the default).

    :param int dim: dimension.
    :param numpy.random.Generator rng: the random stream.
    :param float max_condition: largest ratio of eigenvalues before rescaling.
    :rtype: numpy.ndarray
    """
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))  # Haar-distributed rotation
    eigenvalues = np.exp(rng.uniform(0.0, math.log(max_condition), dim))
    cov = (q * eigenvalues) @ q.T
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    return 0.5 * (corr + corr.T)


# ------------------------------------------------------------------- Gaussian targets
class GaussianTarget(namedtuple("GaussianTarget", ["loc", "covariance"])):
    r"""A Gaussian target :math:`N(\mu, \Sigma)`: ``loc`` ``(d,)``, ``covariance`` ``(d, d)``."""

    __slots__ = ()

    @property
    def dim(self):
        return self.loc.shape[-1]

    @property
    def distribution(self):
        """The target as a :class:`pyro.distributions.MultivariateNormal`."""
        return dist.MultivariateNormal(self.loc, covariance_matrix=self.covariance)

    def sample(self, num_samples, generator=None):
        """``num_samples`` exact draws, shape ``(num_samples, d)``, seeded by ``generator``."""
        eps = torch.randn(num_samples, self.dim, generator=generator, dtype=self.loc.dtype)
        return self.loc + eps @ torch.linalg.cholesky(self.covariance).T


def random_gaussian_target(seed, dim=2, dtype=None):
    r"""
    A random Gaussian target for a GAN: mean uniform in :math:`[-2, 2]^d`, standard
    deviations log-uniform in :math:`[0.5, 2]` and the correlation of
    :func:`random_correlation`.

    :param int seed: the task's seed.
    :param int dim: dimension (Table 5 uses 2 and 5).
    :rtype: GaussianTarget
    """
    rng = _rng(seed, 1)
    loc = rng.uniform(-2.0, 2.0, dim)
    sd = np.exp(rng.uniform(math.log(0.5), math.log(2.0), dim))
    corr = random_correlation(dim, rng)
    return GaussianTarget(_tensor(loc, dtype), _tensor(corr * np.outer(sd, sd), dtype))


# --------------------------------------------------------- conjugate linear Gaussian
RandomConjugateGaussian = namedtuple(
    "RandomConjugateGaussian", ["model", "data", "posterior_loc", "posterior_covariance"]
)
RandomConjugateGaussian.__doc__ = (
    "A conjugate task: ``model`` (a ConjugateGaussian), its ``data`` and the exact "
    "posterior ``(posterior_loc, posterior_covariance)``."
)


def random_conjugate_gaussian(seed, dim=None, dtype=None):
    r"""
    A random conjugate linear-Gaussian model with a global latent (a Bayesian
    linear regression with a random design):

    .. math:: z \sim N(\mu_0, \mathrm{diag}(s_0^2)),\qquad
              x_i \mid z \sim N(A z, \sigma^2 I_m),\ i = 1..N,

    with :math:`d` uniform in 2-10 unless given, :math:`m` uniform in
    :math:`1..d`, :math:`N` uniform in 3-20, :math:`\mu_0 \sim N(0, I)`, :math:`s_0`
    and :math:`\sigma` log-uniform in :math:`[0.5, 2]`, and :math:`A` with
    independent :math:`N(0, 1/d)` entries. The data are drawn from the model (a
    true :math:`z` from the prior). The posterior is Gaussian and exact
    (:meth:`ConjugateGaussian.posterior`); with :math:`m N` rows in all the
    design is often rank-deficient in some directions, where the posterior
    stays close to the prior, and its correlations are those of the design.

    :param int seed: the task's seed.
    :param int dim: latent dimension (drawn in 2-10 when omitted).
    :returns: ``(model, data, posterior_loc, posterior_covariance)``: a
        :class:`~pyro_adv.models.conjugate.ConjugateGaussian` (``model.model(data)``
        is the Pyro program, latent site ``"z"``) and its exact posterior.
    """
    rng = _rng(seed, 2)
    d = int(rng.integers(2, 11)) if dim is None else int(dim)
    m = int(rng.integers(1, d + 1))
    n = int(rng.integers(3, 21))
    prior_loc = rng.standard_normal(d)
    prior_sd = np.exp(rng.uniform(math.log(0.5), math.log(2.0), d))
    noise = float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))
    design = rng.standard_normal((m, d)) / math.sqrt(d)
    z = prior_loc + prior_sd * rng.standard_normal(d)
    data = z @ design.T + noise * rng.standard_normal((n, m))
    model = ConjugateGaussian(
        _tensor(prior_loc, dtype),
        _tensor(np.diag(prior_sd**2), dtype),
        _tensor(design, dtype),
        noise_scale=noise,
    )
    data = _tensor(data, dtype)
    loc, cov = model.posterior(data)
    return RandomConjugateGaussian(model, data, loc, cov)


# ---------------------------------------------------------- linear Gaussian simulator
class LinearGaussianSimulator(SBITask):
    r"""
    A linear-Gaussian simulator as an :class:`~pyro_adv.models.sbi_tasks.SBITask`:

    .. math:: \theta \sim N(\mu_0, \mathrm{diag}(s_0^2)),\qquad
              x \mid \theta \sim N(A\theta + b, \sigma^2 I).

    The posterior at each :math:`x` is Gaussian, by conjugacy
    (:meth:`posterior_moments`, through
    :meth:`~pyro_adv.models.conjugate.ConjugateGaussian.posterior` with one
    observation of :math:`x - b`).

    :param torch.Tensor prior_loc: :math:`\mu_0`, ``(d,)``.
    :param torch.Tensor prior_scale: :math:`s_0`, ``(d,)``.
    :param torch.Tensor design: :math:`A`, ``(m, d)``.
    :param torch.Tensor offset: :math:`b`, ``(m,)``.
    :param float noise_scale: :math:`\sigma`.
    """

    name = "random_linear_gaussian"

    def __init__(self, prior_loc, prior_scale, design, offset, noise_scale):
        self.prior_loc = torch.as_tensor(prior_loc)
        self.prior_scale = torch.as_tensor(prior_scale)
        self.design = torch.as_tensor(design)
        self.offset = torch.as_tensor(offset)
        self.noise_scale = float(noise_scale)
        self.dim_data, self.dim_parameters = self.design.shape
        self._conjugate = ConjugateGaussian(
            self.prior_loc, torch.diag(self.prior_scale**2), self.design, self.noise_scale
        )

    def _on(self, like):
        if like is None:
            return self.prior_loc, self.prior_scale
        return (
            self.prior_loc.to(like.device, like.dtype),
            self.prior_scale.to(like.device, like.dtype),
        )

    def prior(self, like=None):
        loc, scale = self._on(like)
        return dist.Normal(loc, scale).to_event(1)

    def likelihood(self, theta):
        design = self.design.to(theta.device, theta.dtype)
        offset = self.offset.to(theta.device, theta.dtype)
        return dist.Normal(theta @ design.T + offset, self.noise_scale).to_event(1)

    def sample_prior(self, num_samples, generator=None):
        eps = torch.randn(num_samples, self.dim_parameters, generator=generator)
        return self.prior_loc + self.prior_scale * eps.to(self.prior_loc.dtype)

    def simulator(self, theta, generator=None):
        noise = torch.randn(theta.shape[:-1] + (self.dim_data,), generator=generator)
        return theta @ self.design.T + self.offset + self.noise_scale * noise.to(theta.dtype)

    def posterior_moments(self, x):
        """The exact posterior ``(mean, covariance)`` at one observation ``x`` (``(m,)``)."""
        x = torch.as_tensor(x, dtype=self.prior_loc.dtype)
        return self._conjugate.posterior((x - self.offset).unsqueeze(0))

    def reference_posterior_sample(self, x, num_samples, generator=None):
        mean, cov = self.posterior_moments(x)
        return GaussianTarget(mean, cov).sample(num_samples, generator)


def random_linear_simulator(seed, dim_parameters=None, dim_data=None):
    r"""
    A random :class:`LinearGaussianSimulator`: :math:`d` uniform in 2-4 and
    :math:`m` in :math:`d..d+3` unless given, :math:`\mu_0 \sim N(0, I)`,
    :math:`s_0` log-uniform in :math:`[0.5, 2]`, :math:`A` with independent
    :math:`N(0, 1)` entries, :math:`b \sim N(0, I)` and :math:`\sigma` log-uniform
    in :math:`[0.3, 1]`, so that the data are informative and the posterior is
    correlated and several times narrower than the prior in some directions.

    :param int seed: the task's seed.
    :rtype: LinearGaussianSimulator
    """
    rng = _rng(seed, 3)
    d = int(rng.integers(2, 5)) if dim_parameters is None else int(dim_parameters)
    m = int(rng.integers(d, d + 4)) if dim_data is None else int(dim_data)
    return LinearGaussianSimulator(
        _tensor(rng.standard_normal(d)),
        _tensor(np.exp(rng.uniform(math.log(0.5), math.log(2.0), d))),
        _tensor(rng.standard_normal((m, d))),
        _tensor(rng.standard_normal(m)),
        float(np.exp(rng.uniform(math.log(0.3), math.log(1.0)))),
    )


# ------------------------------------------------------------------ exponential model
def random_exponential_observations(seed, num=3, x_max=40.0):
    r"""
    ``num`` observations of the exponential model
    (:func:`~pyro_adv.models.exponential.exponential_model`) spread across its
    range: one log-uniform draw in each of ``num`` equal slices of
    :math:`\log x \in [\log 0.2, \log x_{max}]`, so small x (a posterior near the
    prior's centre) and large x (a ring) both appear. Exact references:
    :func:`~pyro_adv.models.exponential.exact_posterior_moments` and
    :func:`~pyro_adv.models.exponential.exact_posterior_sample`.

    :param int seed: the task's seed.
    :param int num: how many observations.
    :param float x_max: the largest.
    :rtype: list of float
    """
    rng = _rng(seed, 4)
    edges = np.linspace(math.log(0.2), math.log(x_max), num + 1)
    return [float(math.exp(rng.uniform(lo, hi))) for lo, hi in zip(edges[:-1], edges[1:])]


# ------------------------------------------------------------------------- scoring
def gaussian_errors(samples, loc, covariance):
    r"""
    Scores draws against a Gaussian reference :math:`N(\mu, \Sigma)`:

    * ``"mean (sd)"``: :math:`\max_i |\hat\mu_i - \mu_i| / \sqrt{\Sigma_{ii}}`, the
      worst coordinate's mean error in reference standard deviations;
    * ``"sd ratio - 1"``: :math:`\max_j |\sqrt{\lambda_j} - 1|` over the eigenvalues
      :math:`\lambda_j` of :math:`L^{-1}\hat\Sigma L^{-\top}` (:math:`\Sigma = LL^\top`):
      the sd ratio of the draws to the reference along the worst direction, which
      also catches a wrong correlation (a marginal check would not);
    * ``"marginal sd ratio - 1"``: the same for the coordinates alone.

    :param torch.Tensor samples: draws, shape ``(n, d)``.
    :param torch.Tensor loc: :math:`\mu`, ``(d,)``.
    :param torch.Tensor covariance: :math:`\Sigma`, ``(d, d)``.
    :rtype: dict
    """
    x = samples.detach().reshape(samples.shape[0], -1).double()
    loc, covariance = loc.double().reshape(-1), covariance.double()
    if not torch.isfinite(x).all():
        return {"mean (sd)": math.inf, "sd ratio - 1": math.inf, "marginal sd ratio - 1": math.inf}
    sd = covariance.diagonal().sqrt()
    fitted = torch.atleast_2d(torch.cov(x.T))
    chol = torch.linalg.cholesky(covariance)
    white = torch.linalg.solve_triangular(chol, fitted, upper=False)
    white = torch.linalg.solve_triangular(chol, white.T, upper=False)
    ratios = torch.linalg.eigvalsh(0.5 * (white + white.T)).clamp_min(0.0).sqrt()
    return {
        "mean (sd)": ((x.mean(0) - loc) / sd).abs().max().item(),
        "sd ratio - 1": (ratios - 1).abs().max().item(),
        "marginal sd ratio - 1": (fitted.diagonal().sqrt() / sd - 1).abs().max().item(),
    }
