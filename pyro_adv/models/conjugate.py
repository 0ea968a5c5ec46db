r"""Conjugate models with exact posteriors, the yardsticks of the accuracy tests."""

import pyro
import pyro.distributions as dist
import torch

__all__ = ["ConjugateGaussian", "GammaPoisson"]


class ConjugateGaussian:
    r"""
    A linear-Gaussian model with correlated posterior:

    .. math:: z \sim N(\mu_0, \Sigma_0),\qquad x_i \mid z \sim N(A z, \sigma^2 I),\ i = 1..N.

    The posterior is Gaussian with precision :math:`\Sigma_0^{-1} + N A^\top A / \sigma^2`
    and mean :math:`\Sigma_{post} (\Sigma_0^{-1}\mu_0 + A^\top \sum_i x_i / \sigma^2)`.

    :param torch.Tensor prior_loc: :math:`\mu_0`, shape ``(d,)``.
    :param torch.Tensor prior_cov: :math:`\Sigma_0`, shape ``(d, d)``.
    :param torch.Tensor design: :math:`A`, shape ``(m, d)``.
    :param float noise_scale: :math:`\sigma`.
    """

    def __init__(self, prior_loc=None, prior_cov=None, design=None, noise_scale=1.0):
        self.prior_loc = torch.zeros(2) if prior_loc is None else torch.as_tensor(prior_loc)
        d = self.prior_loc.shape[0]
        self.prior_cov = torch.eye(d) if prior_cov is None else torch.as_tensor(prior_cov)
        if design is None:
            # a design whose rows nearly align makes the posterior strongly correlated
            design = torch.tensor([[1.0, 0.8], [0.6, 1.0]]) if d == 2 else torch.eye(d)
        self.design = torch.as_tensor(design)
        self.noise_scale = float(noise_scale)

    @property
    def latent_dim(self):
        return self.prior_loc.shape[0]

    @property
    def obs_dim(self):
        return self.design.shape[0]

    def model(self, x=None, num_data=None):
        """Pyro model: latent site ``"z"`` (global), observed site ``"x"`` in plate ``"data"``."""
        n = x.shape[0] if x is not None else num_data
        z = pyro.sample("z", dist.MultivariateNormal(self.prior_loc, scale_tril=self._prior_tril()))
        with pyro.plate("data", n):
            loc = z @ self.design.T  # batch dims of z broadcast against the plate
            return pyro.sample("x", dist.Normal(loc, self.noise_scale).to_event(1), obs=x)

    def _prior_tril(self):
        # the Cholesky factor MultivariateNormal(covariance_matrix=) would compute on every
        # call (the same tensor, so the same log-densities), once per prior_cov and version
        key = (self.prior_cov, self.prior_cov._version)
        cached = getattr(self, "_tril_cache", None)
        if cached is None or cached[0][0] is not key[0] or cached[0][1] != key[1]:
            cached = self._tril_cache = (key, torch.linalg.cholesky(self.prior_cov))
        return cached[1]

    def simulate(self, num_data, generator=None):
        """Draws ``(z, x)`` from the model."""
        chol = torch.linalg.cholesky(self.prior_cov)
        z = self.prior_loc + chol @ torch.randn(self.latent_dim, generator=generator)
        noise = torch.randn(num_data, self.obs_dim, generator=generator) * self.noise_scale
        return z, z @ self.design.T + noise

    def posterior(self, x):
        """Exact posterior ``(mean, covariance)`` given observations ``x`` of shape ``(N, m)``."""
        prior_prec = torch.linalg.inv(self.prior_cov)
        n = x.shape[0]
        prec = prior_prec + n * self.design.T @ self.design / self.noise_scale**2
        cov = torch.linalg.inv(prec)
        mean = cov @ (prior_prec @ self.prior_loc + self.design.T @ x.sum(0) / self.noise_scale**2)
        return mean, cov

    def log_evidence(self, x):
        r"""
        Exact :math:`\log p(x)` of observations ``x`` of shape ``(N, m)`` that share
        one :math:`z`: the stacked :math:`x` is Gaussian with mean :math:`1_N \otimes A\mu_0`
        and covariance :math:`(1_N 1_N^\top) \otimes A \Sigma_0 A^\top + \sigma^2 I`.
        """
        n, m = x.shape
        loc = (self.design @ self.prior_loc).repeat(n)
        block = self.design @ self.prior_cov @ self.design.T
        cov = torch.kron(torch.ones(n, n, dtype=block.dtype), block)
        cov = cov + self.noise_scale**2 * torch.eye(n * m, dtype=block.dtype)
        return dist.MultivariateNormal(loc, cov).log_prob(x.reshape(-1))


class GammaPoisson:
    r"""
    A positive latent: :math:`\lambda \sim \mathrm{Gamma}(\alpha, \beta)`,
    :math:`x_i \mid \lambda \sim \mathrm{Poisson}(\lambda)`; the posterior is
    :math:`\mathrm{Gamma}(\alpha + \sum_i x_i, \beta + N)`.
    """

    def __init__(self, concentration=2.0, rate=0.5):
        self.concentration = float(concentration)
        self.rate = float(rate)

    def model(self, x):
        """Pyro model: latent ``"rate"`` (positive), observed ``"x"`` in plate ``"data"``."""
        lam = pyro.sample("rate", dist.Gamma(self.concentration, self.rate))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("x", dist.Poisson(lam), obs=x)

    def posterior(self, x):
        """The exact posterior distribution (a ``Gamma``)."""
        return dist.Gamma(self.concentration + x.sum(), self.rate + x.shape[0])
