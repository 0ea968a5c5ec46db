r"""
A model zoo for checking that :class:`~pyro_adv.infer.autoguide.AutoImplicit` +
:class:`~pyro_adv.infer.TraceAVB_ELBO` is a drop-in replacement for ``AutoNormal`` +
``Trace_ELBO``: seven posteriors that Pyro users meet in practice, each with a
reference sampler.

======================================  ====  ==========================================
name                                     dim   reference
======================================  ====  ==========================================
``eight_schools_centered``               10    exact: 2-D grid over ``(mu, log tau)``
``eight_schools_noncentered``            10    exact: the same grid, ``theta_tilde``
``funnel``                               10    exact: the prior (no data)
``correlated_gaussian``                  50    exact: conjugate Gaussian
``bimodal``                               1    exact: 1-D quadrature, inverse CDF
``logistic_regression``                  31    stored NUTS draws (breast cancer)
``hierarchical_poisson``                 11    stored NUTS draws (seeded counts)
======================================  ====  ==========================================

Every entry is a :class:`ZooModel`: ``model(*args)`` is a plain Pyro model over the
stored data ``args``; ``reference(num_samples, seed)`` returns a dict of site name ->
posterior draws (leading dimension ``num_samples``), and ``flat(samples)`` stacks any
such dict (reference draws, guide draws under a ``pyro.plate`` at dim -2, MCMC
samples) into an ``(n, dim)`` matrix in the fixed order of ``sites`` for C2ST.
:data:`ZOO` maps each name to its constructor; :func:`get_model` builds one.

The NUTS references are made by ``benchmarks/make_zoo_references.py`` (seeded; it
prints R-hat and ESS) and stored in ``pyro_adv/models/references/<name>.npz``.
``logistic_regression`` needs scikit-learn (the ``dev`` extra) for its data set.
"""

import math
import pathlib

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyro_adv.models.conjugate import ConjugateGaussian

__all__ = [
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "REFERENCE_DIR",
    "ZOO",
    "AmortizedBimodal",
    "Bimodal",
    "CorrelatedGaussian",
    "EightSchools",
    "HierarchicalPoisson",
    "LogisticRegression",
    "NealsFunnel",
    "ZooModel",
    "get_model",
]

#: Rubin's (1981) eight schools: estimated coaching effects and their standard errors
EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)

#: where the stored NUTS references live (package data)
REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "references"


class ZooModel:
    r"""
    One zoo entry: a Pyro model, its data and a reference posterior sampler.

    :ivar str name: the key in :data:`ZOO`.
    :ivar tuple sites: latent site names, in the order :meth:`flat` stacks them.
    :ivar dict site_dims: site name -> number of scalar coordinates.
    :ivar tuple args: the data, passed as ``model(*args)``.
    :ivar str reference_kind: ``"exact"`` or ``"nuts"`` (stored draws).
    :ivar bool unimodal: ``False`` where the posterior has several modes.
    """

    name = None
    sites = ()
    site_dims = {}
    reference_kind = "exact"
    unimodal = True

    def __init__(self):
        self.args = ()

    def model(self, *args):
        raise NotImplementedError

    @property
    def dim(self):
        """Total number of scalar latent coordinates."""
        return sum(self.site_dims[s] for s in self.sites)

    def reference(self, num_samples=10_000, seed=0):
        """
        ``num_samples`` reference posterior draws, as a dict site name -> float32 tensor
        of shape ``(num_samples,) + site shape``.
        """
        raise NotImplementedError

    def flat(self, samples):
        """
        Stacks draws of every site into an ``(n, dim)`` tensor in the order of
        :attr:`sites`. Each value's leading dimension is the draw; any singleton
        dimensions (a ``pyro.plate`` of draws at dim -2, say) are flattened away.
        """
        n = None
        columns = []
        for site in self.sites:
            value = torch.as_tensor(samples[site])
            n = value.shape[0] if n is None else n
            if value.shape[0] != n:
                raise ValueError(f"{self.name}: site {site!r} has {value.shape[0]} draws, not {n}")
            value = value.reshape(n, -1)
            if value.shape[1] != self.site_dims[site]:
                raise ValueError(
                    f"{self.name}: site {site!r} has {value.shape[1]} coordinates per draw, "
                    f"expected {self.site_dims[site]}"
                )
            columns.append(value.to(torch.get_default_dtype()))
        return torch.cat(columns, dim=-1)

    def labels(self):
        """Column names of :meth:`flat`: ``site`` or ``site[i]``."""
        out = []
        for site in self.sites:
            d = self.site_dims[site]
            out += [site] if d == 1 else [f"{site}[{i}]" for i in range(d)]
        return out

    def _stored(self, num_samples, seed):
        # stored NUTS draws: a seeded subset, so that two seeds give two (overlapping)
        # subsets and num_samples below the stored count is a uniform subsample
        path = REFERENCE_DIR / f"{self.name}.npz"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing; run `python -m benchmarks.make_zoo_references`"
            )
        with np.load(path) as data:
            arrays = {site: data[site] for site in self.sites}
        total = next(iter(arrays.values())).shape[0]
        if num_samples > total:
            raise ValueError(
                f"{self.name}: {total} stored reference draws, asked for {num_samples}"
            )
        idx = np.random.default_rng(seed).permutation(total)[:num_samples]
        return {site: torch.as_tensor(a[idx], dtype=torch.float32) for site, a in arrays.items()}


class EightSchools(ZooModel):
    r"""
    Eight schools (Rubin 1981; Gelman et al. 2013, *Bayesian Data Analysis*, 5.5) in
    plate form, centred or non-centred:

    .. math::

        \mu \sim N(0, 5^2),\quad \tau \sim \mathrm{HalfCauchy}(5),\quad
        \theta_j \sim N(\mu, \tau^2),\quad y_j \sim N(\theta_j, \sigma_j^2),\ j = 1..8;

    non-centred: :math:`\tilde\theta_j \sim N(0, 1)`, :math:`\theta_j = \mu + \tau\tilde\theta_j`.

    **Exact reference.** Integrating out :math:`\theta`,
    :math:`p(\mu, \tau \mid y) \propto p(\mu)p(\tau)\prod_j N(y_j; \mu, \sigma_j^2 + \tau^2)`
    (BDA eq. 5.20), evaluated on a 1200 x 1200 grid over :math:`(\mu, \log\tau)` with
    the Jacobian :math:`\tau`; a cell is drawn by its mass and a point uniformly inside
    it. Then :math:`\theta_j \mid \mu, \tau, y` is Gaussian with precision
    :math:`1/\sigma_j^2 + 1/\tau^2` (BDA eq. 5.17), and
    :math:`\tilde\theta_j \mid \mu, \tau, y \sim N\big((y_j - \mu)\tau/(\sigma_j^2 + \tau^2),\
    \sigma_j^2/(\sigma_j^2 + \tau^2)\big)`, written directly so that small :math:`\tau`
    loses no precision.

    :param bool centered: the centred (``theta``) or non-centred (``theta_tilde``) form.
    """

    #: grid bounds: mu within 7 sds of its posterior (sd about 3.3, wider when tau is
    #: large); log tau from exp(-12) (where the density in log tau has fallen like tau)
    #: to 300 (where the tail, like tau^-9, is negligible)
    MU_RANGE = (-25.0, 35.0)
    LOG_TAU_RANGE = (-12.0, math.log(300.0))
    GRID = 1200

    def __init__(self, centered=True):
        super().__init__()
        self.centered = centered
        self.name = "eight_schools_centered" if centered else "eight_schools_noncentered"
        local = "theta" if centered else "theta_tilde"
        self.sites = ("mu", "tau", local)
        self.site_dims = {"mu": 1, "tau": 1, local: 8}
        self.y = torch.tensor(EIGHT_SCHOOLS_Y)
        self.sigma = torch.tensor(EIGHT_SCHOOLS_SIGMA)
        self.args = (self.y, self.sigma)

    def model(self, y, sigma):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", len(sigma)):
            if self.centered:
                theta = pyro.sample("theta", dist.Normal(mu, tau))
            else:
                theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
                theta = pyro.deterministic("theta", mu + tau * theta_tilde)
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    def log_marginal(self, mu, log_tau):
        """:math:`\\log p(\\mu, \\log\\tau \\mid y)` up to a constant (numpy, broadcasting)."""
        y = np.asarray(EIGHT_SCHOOLS_Y)
        s2 = np.asarray(EIGHT_SCHOOLS_SIGMA) ** 2
        mu = np.asarray(mu, np.float64)[..., None]
        log_tau = np.asarray(log_tau, np.float64)[..., None]
        tau = np.exp(log_tau)
        var = s2 + tau**2
        loglik = -0.5 * (np.log(var) + (y - mu) ** 2 / var).sum(-1)
        log_prior_mu = -0.5 * (mu[..., 0] / 5.0) ** 2
        # HalfCauchy(5) density in tau, times the Jacobian tau of log tau
        log_prior_tau = -np.log1p((tau[..., 0] / 5.0) ** 2) + log_tau[..., 0]
        return loglik + log_prior_mu + log_prior_tau

    def reference(self, num_samples=10_000, seed=0):
        rng = np.random.default_rng(seed)
        mu_edges = np.linspace(*self.MU_RANGE, self.GRID + 1)
        lt_edges = np.linspace(*self.LOG_TAU_RANGE, self.GRID + 1)
        mu_mid = 0.5 * (mu_edges[1:] + mu_edges[:-1])
        lt_mid = 0.5 * (lt_edges[1:] + lt_edges[:-1])
        logp = self.log_marginal(mu_mid[:, None], lt_mid[None, :])
        p = np.exp(logp - logp.max()).ravel()
        cells = rng.choice(p.size, size=num_samples, p=p / p.sum())
        i, j = np.unravel_index(cells, (self.GRID, self.GRID))
        mu = mu_edges[i] + rng.random(num_samples) * (mu_edges[1] - mu_edges[0])
        log_tau = lt_edges[j] + rng.random(num_samples) * (lt_edges[1] - lt_edges[0])
        tau = np.exp(log_tau)[:, None]
        y = np.asarray(EIGHT_SCHOOLS_Y)
        s2 = np.asarray(EIGHT_SCHOOLS_SIGMA) ** 2
        eps = rng.standard_normal((num_samples, 8))
        out = {"mu": mu, "tau": tau[:, 0]}
        if self.centered:
            prec = 1.0 / s2 + 1.0 / tau**2
            mean = (y / s2 + mu[:, None] / tau**2) / prec
            out["theta"] = mean + eps / np.sqrt(prec)
        else:
            var = s2 + tau**2
            out["theta_tilde"] = (y - mu[:, None]) * tau / var + eps * np.sqrt(s2 / var)
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}


class LogisticRegression(ZooModel):
    r"""
    Bayesian logistic regression on scikit-learn's breast cancer data (Wisconsin
    diagnostic; 569 tumours, 30 features, standardized to mean 0 and sd 1), written
    in the ``X @ w`` form:

    .. math:: w \sim N(0, I_{30}),\quad b \sim N(0, 1),\quad
              y_i \sim \mathrm{Bernoulli}(\mathrm{logits} = x_i^\top w + b).

    ``w`` is one 30-D ``.to_event(1)`` site. The reference is stored NUTS draws.
    """

    name = "logistic_regression"
    sites = ("w", "b")
    site_dims = {"w": 30, "b": 1}
    reference_kind = "nuts"

    def __init__(self):
        super().__init__()
        from sklearn.datasets import load_breast_cancer

        X, y = load_breast_cancer(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
        self.X = torch.as_tensor(X, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.float32)
        self.args = (self.X, self.y)

    def model(self, X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)

    def reference(self, num_samples=10_000, seed=0):
        return self._stored(num_samples, seed)


class HierarchicalPoisson(ZooModel):
    r"""
    A Poisson GLMM: group intercepts around a global mean, one fixed slope,

    .. math::

        \mu \sim N(0, 2^2),\ \sigma \sim \mathrm{HalfNormal}(1),\ \beta \sim N(0, 1),\quad
        \alpha_j \sim N(\mu, \sigma^2),\ j = 1..8,\quad
        y_i \sim \mathrm{Poisson}(\exp(\alpha_{g_i} + \beta x_i)),

    with 5 observations per group (40 counts), simulated once from
    :math:`\mu = 1, \sigma = 0.5, \beta = 0.3` and standard normal ``x`` with
    ``torch.Generator().manual_seed(DATA_SEED)``. Centred, so there is a mild funnel
    between :math:`\sigma` and the :math:`\alpha_j`. The reference is stored NUTS draws.
    """

    name = "hierarchical_poisson"
    sites = ("mu", "sigma", "beta", "alpha")
    site_dims = {"mu": 1, "sigma": 1, "beta": 1, "alpha": 8}
    reference_kind = "nuts"
    DATA_SEED = 2024
    NUM_GROUPS, PER_GROUP = 8, 5

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(self.DATA_SEED)
        group = torch.arange(self.NUM_GROUPS).repeat_interleave(self.PER_GROUP)
        alpha = 1.0 + 0.5 * torch.randn(self.NUM_GROUPS, generator=g)
        x = torch.randn(group.shape[0], generator=g)
        counts = torch.poisson((alpha[group] + 0.3 * x).exp(), generator=g)
        self.args = (x, group, counts)

    def model(self, x, group, counts):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", self.NUM_GROUPS):
            alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
        with pyro.plate("data", len(counts)):
            # index the group dim (the last) so batched alpha broadcasts
            rate = (alpha[..., group] + beta * x).exp()
            pyro.sample("y", dist.Poisson(rate), obs=counts)

    def reference(self, num_samples=10_000, seed=0):
        return self._stored(num_samples, seed)


class NealsFunnel(ZooModel):
    r"""
    Neal's (2003, "Slice sampling", *Ann. Statist.* 31, 705) funnel in 10 dimensions,
    with no data, so the posterior is the prior:

    .. math:: v \sim N(0, 3^2),\qquad x_k \mid v \sim N(0, e^{v}),\ k = 1..9

    (sd :math:`e^{v/2}`). The exact reference samples it directly.
    """

    name = "funnel"
    sites = ("v", "x")
    site_dims = {"v": 1, "x": 9}

    def model(self):
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(torch.zeros(9), (v / 2).exp().unsqueeze(-1)).to_event(1))

    def reference(self, num_samples=10_000, seed=0):
        g = torch.Generator().manual_seed(seed)
        v = 3.0 * torch.randn(num_samples, generator=g)
        x = torch.randn(num_samples, 9, generator=g) * (v / 2).exp().unsqueeze(-1)
        return {"v": v, "x": x}


class CorrelatedGaussian(ZooModel):
    r"""
    A 50-D Gaussian posterior with strong correlations and a spread of scales, from a
    conjugate model (:class:`~pyro_adv.models.ConjugateGaussian` with identity design):

    .. math:: z \sim N(0, \Sigma_0),\quad (\Sigma_0)_{kl} = s_k s_l\,0.9^{|k - l|},\quad
              x_i \mid z \sim N(z, 3^2 I),\ i = 1..10,

    with scales :math:`s_k` log-spaced over :math:`[10^{-1/2}, 10^{1/2}]` and ``x``
    simulated with seed ``DATA_SEED``. The posterior (exact, computed in float64) has
    sds 0.26-0.81, correlations up to 0.85 (54 pairs above 0.5) and a condition
    number of 131.
    """

    name = "correlated_gaussian"
    sites = ("z",)
    site_dims = {"z": 50}
    DATA_SEED = 7

    def __init__(self, dim=50, rho=0.9, num_data=10, noise_scale=3.0):
        super().__init__()
        i = torch.arange(dim, dtype=torch.float64)
        scales = torch.logspace(-0.5, 0.5, dim, dtype=torch.float64)
        prior_cov = scales[:, None] * rho ** (i[:, None] - i[None]).abs() * scales[None]
        self._conjugate64 = ConjugateGaussian(
            torch.zeros(dim, dtype=torch.float64),
            prior_cov,
            torch.eye(dim, dtype=torch.float64),
            noise_scale,
        )
        self.conjugate = ConjugateGaussian(
            torch.zeros(dim), prior_cov.float(), torch.eye(dim), noise_scale
        )
        _, x = self.conjugate.simulate(num_data, torch.Generator().manual_seed(self.DATA_SEED))
        self.x = x
        self.site_dims = {"z": dim}
        self.args = (x,)

    def model(self, x):
        return self.conjugate.model(x)

    def posterior(self):
        """The exact posterior ``(mean, covariance)`` in float64."""
        return self._conjugate64.posterior(self.x.double())

    def reference(self, num_samples=10_000, seed=0):
        mean, cov = self.posterior()
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(num_samples, mean.shape[0], generator=g, dtype=torch.float64)
        z = mean + eps @ torch.linalg.cholesky(cov).T
        return {"z": z.float()}


class Bimodal(ZooModel):
    r"""
    A posterior with two separated modes: the data see only :math:`z^2`,

    .. math:: z \sim N(m, 2^2),\qquad y_i \mid z \sim N(z^2, 1),\ i = 1..20,

    with ``y`` simulated at :math:`z = 1` from seed ``DATA_SEED``; modes near
    :math:`\pm 1`, each with sd about 0.1, of equal mass for the default prior mean
    :math:`m = 0`; a prior mean ``prior_loc`` :math:`= m` tilts the masses to
    :math:`e^{\pm m a / 4}` at modes :math:`\pm a` (0.70 on :math:`z > 0` at
    :math:`m = 1.5`). The exact reference inverts the CDF,
    computed by the trapezoid rule on a 200,001-point grid over :math:`[-6, 6]`
    (so the density is constant within each of the 200,000 cells).
    """

    name = "bimodal"
    sites = ("z",)
    site_dims = {"z": 1}
    unimodal = False
    DATA_SEED = 11
    GRID = 200_001
    RANGE = (-6.0, 6.0)

    def __init__(self, num_data=20, z_true=1.0, prior_loc=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(self.DATA_SEED)
        self.y = z_true**2 + torch.randn(num_data, generator=g)
        self.args = (self.y,)
        self.prior_loc = float(prior_loc)

    def model(self, y):
        z = pyro.sample("z", dist.Normal(self.prior_loc, 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(z**2, 1.0), obs=y)

    def log_density(self, z):
        """Unnormalized :math:`\\log p(z \\mid y)` (numpy, float64)."""
        z = np.asarray(z, np.float64)
        y = self.y.double().numpy()
        prior = -0.5 * ((z - self.prior_loc) / 2.0) ** 2
        return prior - 0.5 * ((y - z[..., None] ** 2) ** 2).sum(-1)

    def reference(self, num_samples=10_000, seed=0):
        grid = np.linspace(*self.RANGE, self.GRID)
        logp = self.log_density(grid)
        p = np.exp(logp - logp.max())
        # trapezoid CDF, inverted linearly: within a cell the density is the cell's mean
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
        cdf /= cdf[-1]
        u = np.random.default_rng(seed).random(num_samples)
        return {"z": torch.as_tensor(np.interp(u, cdf, grid), dtype=torch.float32)}


class AmortizedBimodal:
    r"""
    An amortized posterior with two modes whose masses depend on the observation:

    .. math:: z \sim N(m, s^2),\qquad x \mid z \sim N(z^2, \sigma^2),

    one :math:`(x, z)` pair per element of plate ``"data"`` (the latent ``"z"`` and
    the observation ``"x"``, both of event shape ``(1,)``, so that
    :func:`~pyro_adv.infer.autoguide.amortized_guide` and
    :class:`~pyro_adv.nn.ImplicitEncoder` fit it as they are). Given :math:`x` the
    modes sit near :math:`\pm\sqrt{x}`; the prior's mean :math:`m > 0` gives the
    positive mode the larger mass, the more so the larger :math:`x` (0.59 / 0.64 /
    0.71 / 0.79 at :math:`x` = 0.5 / 1 / 2 / 4 for the defaults). A mixture with
    equal weights cannot match that at any :math:`x`. :meth:`exact` computes the
    share and each mode's mean and sd by quadrature (a 20,001-point grid on
    :math:`[-8, 8]`).
    """

    def __init__(self, prior_loc=0.75, prior_scale=1.5, noise_scale=0.5):
        self.prior_loc, self.prior_scale = float(prior_loc), float(prior_scale)
        self.noise_scale = float(noise_scale)

    def model(self, x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            prior = dist.Normal(self.prior_loc, self.prior_scale).expand([1]).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z**2, self.noise_scale).to_event(1), obs=x[idx])

    def simulate(self, num_data, seed=0):
        """``num_data`` observations ``x`` of shape ``(num_data, 1)`` from the prior predictive."""
        g = torch.Generator().manual_seed(seed)
        z = self.prior_loc + self.prior_scale * torch.randn(num_data, 1, generator=g)
        return z**2 + self.noise_scale * torch.randn(num_data, 1, generator=g)

    def exact(self, x):
        """
        :returns: a dict of floats: ``share`` (the posterior mass on :math:`z > 0`),
            ``mean_pos``, ``sd_pos``, ``mean_neg``, ``sd_neg`` (each mode's moments).
        """
        z = np.linspace(-8.0, 8.0, 20_001)
        logp = -0.5 * ((z - self.prior_loc) / self.prior_scale) ** 2
        logp = logp - 0.5 * ((float(x) - z**2) / self.noise_scale) ** 2
        p = np.exp(logp - logp.max())
        p /= p.sum()
        out = {"share": float(p[z > 0].sum())}
        for name, side in (("pos", z > 0), ("neg", z < 0)):
            w = p[side] / p[side].sum()
            mean = float((w * z[side]).sum())
            out[f"mean_{name}"] = mean
            out[f"sd_{name}"] = float(np.sqrt((w * (z[side] - mean) ** 2).sum()))
        return out


#: name -> constructor of every zoo model
ZOO = {
    "eight_schools_centered": lambda: EightSchools(centered=True),
    "eight_schools_noncentered": lambda: EightSchools(centered=False),
    "funnel": NealsFunnel,
    "correlated_gaussian": CorrelatedGaussian,
    "bimodal": Bimodal,
    "logistic_regression": LogisticRegression,
    "hierarchical_poisson": HierarchicalPoisson,
}


def get_model(name):
    """Builds the zoo model ``name`` (a key of :data:`ZOO`)."""
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
    return ZOO[name]()
