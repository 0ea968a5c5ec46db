r"""
Five tasks of the simulation-based inference benchmark sbibm (Lueckmann, Boelts,
Greenberg, Gonçalves and Macke 2021, "Benchmarking Simulation-Based Inference",
AISTATS), rebuilt from the definitions in sbibm's ``tasks/<name>/task.py``:

* :data:`GAUSSIAN_LINEAR`: a 10-D Gaussian mean, Gaussian posterior in closed form;
* :data:`TWO_MOONS`: a 2-D parameter seen through a crescent-shaped simulator;
  the posterior is two thin crescents, sampled exactly by inverting the simulator;
* :data:`GAUSSIAN_MIXTURE`: a 2-D mean seen through a mixture of a broad and a
  narrow Gaussian; the posterior is that mixture truncated to the prior's box;
* :data:`SLCP`: 5 parameters of a 2-D Gaussian (mean, scales, correlation) seen
  through 4 draws; a simple likelihood, a complex posterior (four modes);
* :data:`BERNOULLI_GLM`: 10 weights of a Bernoulli GLM (a spiking neuron's filter)
  seen through its sufficient statistics; smooth, unimodal, exact log-likelihood.

Each task gives a Pyro model over a plate of observations (subsample-able, like
:func:`~pyro_adv.models.exponential_model`), a seeded prior/simulator sampler, the
likelihood (which AVB evaluates and ALI does not), an amortized guide around an
:class:`~pyro_adv.nn.ImplicitEncoder`, a reference posterior sampler where one is
exact (``gaussian_linear``, ``two_moons``, ``gaussian_mixture``), fixed observations
and the published C2ST of sbibm's baselines (:data:`PUBLISHED_C2ST`).

**Observations.** The simulators draw their random numbers in the order sbibm's do,
and :meth:`SBITask.observations` seeds them with sbibm's observation seeds, so they
reproduce sbibm's ten observations (to float rounding; checked against sbibm's files
in ``tests/models/test_sbibm_files.py``) without sbibm. sbibm's own files (the
observations and 10,000 reference posterior draws each, also for ``slcp`` and
``bernoulli_glm``, whose references are MCMC/rejection runs) are read by
:mod:`pyro_adv.models.sbibm_files` from an installed ``sbibm`` (``pip install sbibm
--no-deps``).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import biject_to, constraints

from pyro_adv.distributions.implicit import ImplicitDistribution

__all__ = [
    "BERNOULLI_GLM",
    "BernoulliGLM",
    "BernoulliGLMLikelihood",
    "GAUSSIAN_LINEAR",
    "GAUSSIAN_MIXTURE",
    "NPE_C2ST_10K",
    "OBSERVATION_SEED",
    "PUBLISHED_BUDGETS",
    "PUBLISHED_C2ST",
    "SBI_TASKS",
    "SLCP",
    "SBITask",
    "TWO_MOONS",
    "GaussianLinear",
    "GaussianMixture",
    "Slcp",
    "TwoMoons",
    "TwoMoonsLikelihood",
]

#: sbibm's default observation seeds: observation ``k`` (1-based) is drawn with seed
#: ``OBSERVATION_SEED + k - 1`` unless the task lists its own (two_moons, slcp)
OBSERVATION_SEED = 1_000_000

#: Published mean C2ST over sbibm's 10 observations at 10^3, 10^4 and 10^5 simulations:
#: NPE, SNPE, NLE, NRE (Lueckmann et al. 2021 and the sbibm results repository;
#: gaussian_mixture from its corrected rerun) and GATSBI, the adversarial method
#: (Ramesh et al. 2022; "GATSBI tuned": its best reported configuration). ``None``:
#: not published.
PUBLISHED_C2ST = {
    "two_moons": {
        "NPE": (0.725, 0.606, 0.542),
        "SNPE": (0.643, 0.554, 0.530),
        "NLE": (0.773, 0.713, 0.668),
        "NRE": (0.822, 0.761, 0.629),
        "GATSBI": (0.911, 0.876, 0.856),
        "GATSBI tuned": (0.854, 0.795, 0.788),
    },
    "gaussian_linear": {
        "NPE": (0.694, 0.552, 0.506),
        "SNPE": (0.652, 0.544, 0.507),
        "NLE": (0.650, 0.555, 0.515),
        "NRE": (0.672, 0.560, 0.536),
    },
    "gaussian_mixture": {"NPE": (0.716, 0.615, 0.548), "SNPE": (0.669, 0.551, 0.536)},
    "slcp": {
        "NPE": (0.975, 0.901, 0.831),
        "SNPE": (0.965, 0.845, 0.666),
        "NLE": (0.946, 0.771, 0.699),
        "NRE": (0.972, 0.947, 0.919),
        "GATSBI": (0.963, 0.933, 0.917),
    },
    "bernoulli_glm": {
        "NPE": (0.863, 0.678, 0.559),
        "SNPE": (0.855, 0.614, 0.525),
        "NLE": (0.740, 0.605, 0.545),
        "NRE": (0.899, 0.812, 0.751),
    },
}
#: the budgets of :data:`PUBLISHED_C2ST`'s columns
PUBLISHED_BUDGETS = (1_000, 10_000, 100_000)

#: NPE's mean C2ST over sbibm's 10 observations at a budget of 10,000 simulations
NPE_C2ST_10K = {name: rows["NPE"][1] for name, rows in PUBLISHED_C2ST.items()}


class SBITask:
    r"""
    A simulation-based inference task: a prior :math:`p(\theta)`, a simulator
    :math:`x \sim p(x \mid \theta)` and an exact reference posterior. Subclasses
    define :meth:`prior`, :meth:`sample_prior`, :meth:`likelihood`, :meth:`simulator` and
    :meth:`reference_posterior_sample`.

    :ivar str name: sbibm's name of the task.
    :ivar int dim_parameters: width of :math:`\theta`.
    :ivar int dim_data: width of :math:`x`.
    """

    name = None
    dim_parameters = None
    dim_data = None
    #: sbibm's seed of each of its 10 observations
    observation_seeds = tuple(OBSERVATION_SEED + k for k in range(10))

    @property
    def npe_c2st(self):
        """The published NPE C2ST at 10,000 simulations (:data:`NPE_C2ST_10K`)."""
        return NPE_C2ST_10K[self.name]

    def published_c2st(self, budget):
        """
        The published C2ST of each baseline at ``budget`` simulations (one of
        :data:`PUBLISHED_BUDGETS`): ``{method: value}`` from :data:`PUBLISHED_C2ST`.
        """
        if budget not in PUBLISHED_BUDGETS:
            raise ValueError(f"no published C2ST at {budget} simulations; {PUBLISHED_BUDGETS}")
        column = PUBLISHED_BUDGETS.index(budget)
        return {m: v[column] for m, v in PUBLISHED_C2ST[self.name].items()}

    def prior(self, like=None):
        """The prior as a distribution with event shape ``(dim_parameters,)``."""
        raise NotImplementedError

    def likelihood(self, theta):
        """:math:`p(x \\mid \\theta)` with event shape ``(dim_data,)``, batched like ``theta``."""
        raise NotImplementedError

    def sample_prior(self, num_samples, generator=None):
        """``num_samples`` prior draws, seeded by ``generator`` (Pyro's ``sample`` is not)."""
        raise NotImplementedError

    def simulator(self, theta, generator=None):
        """Draws ``x`` for each row of ``theta`` (shape ``(..., dim_parameters)``)."""
        raise NotImplementedError

    def reference_posterior_sample(self, x, num_samples, generator=None):
        """Exact draws of :math:`p(\\theta \\mid x)` for one observation ``x`` (``(dim_data,)``)."""
        raise NotImplementedError

    def model(self, x=None, num_data=None, subsample_size=None):
        r"""
        The task as a Pyro program over a plate of independent observations:
        ``theta_i ~ prior``, ``x_i ~ p(x | theta_i)`` (sites ``"theta"`` and ``"x"``).

        :param torch.Tensor x: observations, shape ``(N, dim_data)``, or ``None`` to simulate.
        :param int num_data: how many to simulate when ``x`` is ``None``.
        :param int subsample_size: minibatch size; the ELBO is scaled by ``N / size``.
        """
        if x is None and num_data is None:
            raise ValueError(f"{type(self).__name__}.model needs observations x or num_data")
        n = x.shape[0] if x is not None else num_data
        with pyro.plate("data", n, subsample_size=subsample_size) as idx:
            theta = pyro.sample("theta", self.prior(x))
            obs = x[idx] if x is not None else None
            return pyro.sample("x", self.likelihood(theta), obs=obs)

    def log_likelihood(self, theta, x):
        """:math:`\\log p(x \\mid \\theta)` for broadcastable ``theta`` and ``x``."""
        return self.likelihood(theta).log_prob(x)

    def sample_joint(self, num_samples, generator=None):
        """``num_samples`` pairs ``(theta, x)`` from the prior and the simulator."""
        theta = self.sample_prior(num_samples, generator)
        return theta, self.simulator(theta, generator)

    def observations(self, num_observations=10):
        """
        sbibm's fixed observations, regenerated: ``(theta_true, x_obs)`` of shapes
        ``(num_observations, dim_parameters)`` and ``(num_observations, dim_data)``,
        observation ``k`` drawn with sbibm's seed ``observation_seeds[k - 1]``. They
        equal sbibm's stored observations to float rounding (see the module notes).
        """
        if not 1 <= num_observations <= len(self.observation_seeds):
            raise ValueError(
                f"num_observations must be in 1..{len(self.observation_seeds)}, "
                f"got {num_observations}"
            )
        pairs = [
            self.sample_joint(1, torch.Generator().manual_seed(seed))
            for seed in self.observation_seeds[:num_observations]
        ]
        return torch.cat([t for t, _ in pairs]), torch.cat([x for _, x in pairs])

    def posterior(self, encoder, x):
        r"""
        The amortized posterior :math:`q(\theta \mid x)` of ``encoder`` (an
        :class:`~pyro_adv.nn.ImplicitEncoder` with ``input_dim=dim_data``,
        ``latent_dim=dim_parameters``) at contexts ``x`` (``(..., dim_data)``). The
        encoder's output lives in unconstrained space and is mapped onto the prior's
        support, so a bounded prior is never left.
        """
        q = encoder(x)
        support = self.prior(x).support
        transform = biject_to(support)
        posterior = ImplicitDistribution(
            lambda eps: transform(q.generator(eps)), q.base, q.event_shape, support=support
        )
        # the encoder draws in unconstrained space (Trace_ALI's regression base)
        posterior.encoder, posterior.context = encoder, q.context
        return posterior

    def guide(self, encoder):
        """The amortized guide of :meth:`model`: ``theta_i ~ q(theta | x_i)``, :meth:`posterior`."""

        def guide(x=None, num_data=None, subsample_size=None):
            pyro.module("encoder", encoder)
            with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
                pyro.sample("theta", self.posterior(encoder, x[idx]))

        return guide


def _like(like):
    return {"dtype": like.dtype, "device": like.device} if like is not None else {}


class GaussianLinear(SBITask):
    r"""
    sbibm's ``gaussian_linear``: the mean of a 10-D Gaussian,

    .. math:: \theta \sim N(0, \sigma_0^2 I),\qquad x \mid \theta \sim N(\theta, \sigma^2 I),
              \qquad \sigma_0^2 = \sigma^2 = 0.1.

    sbibm names 0.1 a "scale" but builds both Gaussians from the precision matrix
    ``inverse(0.1 * I)``: 0.1 is the *variance*. The posterior is

    .. math:: \theta \mid x \sim N\Big(\frac{\sigma_0^2}{\sigma_0^2 + \sigma^2}\, x,\;
              \frac{\sigma_0^2 \sigma^2}{\sigma_0^2 + \sigma^2} I\Big) = N(x / 2,\ 0.05\, I).
    """

    name = "gaussian_linear"

    def __init__(self, dim=10, prior_variance=0.1, noise_variance=0.1):
        self.dim_parameters = self.dim_data = int(dim)
        self.prior_variance = float(prior_variance)
        self.noise_variance = float(noise_variance)

    def prior(self, like=None):
        zero = torch.zeros((), **_like(like))
        fn = dist.Normal(zero, math.sqrt(self.prior_variance)).expand([self.dim_parameters])
        return fn.to_event(1)

    def likelihood(self, theta):
        return dist.Normal(theta, math.sqrt(self.noise_variance)).to_event(1)

    def simulator(self, theta, generator=None):
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return theta + math.sqrt(self.noise_variance) * noise

    def sample_prior(self, num_samples, generator=None):
        theta = torch.randn(num_samples, self.dim_parameters, generator=generator)
        return theta * math.sqrt(self.prior_variance)

    def posterior_moments(self, x):
        """The exact posterior ``(mean, covariance)`` for one observation ``x`` (``(dim,)``)."""
        shrink = self.prior_variance / (self.prior_variance + self.noise_variance)
        cov = shrink * self.noise_variance * torch.eye(self.dim_parameters, dtype=x.dtype)
        return shrink * x, cov

    def reference_posterior_sample(self, x, num_samples, generator=None):
        mean, cov = self.posterior_moments(torch.as_tensor(x, dtype=torch.float64))
        eps = torch.randn(num_samples, self.dim_parameters, generator=generator, dtype=mean.dtype)
        return (mean + eps @ torch.linalg.cholesky(cov).T).float()


class TwoMoonsLikelihood(TorchDistribution):
    r"""
    The likelihood of sbibm's ``two_moons`` simulator. With
    :math:`a \sim U(-\pi/2, \pi/2)` and :math:`r \sim N(0.1, 0.01^2)`,

    .. math:: p = (r\cos a + 0.25,\ r \sin a),\qquad
              x = p + \Big(-\frac{|\theta_1 + \theta_2|}{\sqrt 2},\
                  \frac{-\theta_1 + \theta_2}{\sqrt 2}\Big).

    The change of variables from :math:`(r, a)` to :math:`p` (Jacobian :math:`r`)
    gives the density of :math:`p` on the right half-plane :math:`u = p_1 - 0.25 \ge 0`,

    .. math:: f(p) = \frac{N(r;\, 0.1,\, 0.01^2)}{\pi r}\,\mathbb 1[u \ge 0],\qquad
              r = \|(u, p_2)\|,

    evaluated at :math:`p = x - (-|\theta_1 + \theta_2|, -\theta_1 + \theta_2)/\sqrt 2`.
    (sbibm's own ``_likelihood`` drops the :math:`1 / (\pi r)`; its reference
    posterior is sampled from the simulator and is exact.)

    ``boundary_width`` :math:`\tau > 0` replaces the indicator by the logistic
    :math:`\sigma(u / \tau)`. Because :math:`f` without the indicator is symmetric in
    :math:`u`, the result still integrates to one, and its log is finite everywhere,
    as AVB needs: a guide draw on the wrong side then costs :math:`\approx |u| / \tau`
    nats instead of an infinite ELBO. Draws always come from the exact simulator.

    :param torch.Tensor theta: parameters, shape ``batch_shape + (2,)``.
    :param float boundary_width: :math:`\tau` (0: the exact indicator).
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    R_LOC, R_SCALE, BASE_OFFSET = 0.1, 0.01, 0.25

    def __init__(self, theta, boundary_width=0.0, validate_args=None):
        self.theta = theta
        self.boundary_width = float(boundary_width)
        super().__init__(theta.shape[:-1], theta.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        theta = self.theta.expand(batch_shape + self.event_shape)
        return TwoMoonsLikelihood(theta, self.boundary_width)

    @staticmethod
    def shift(theta):
        r"""The offset :math:`(-|\theta_1 + \theta_2|, -\theta_1 + \theta_2) / \sqrt 2`."""
        z0 = (theta[..., 0] + theta[..., 1]) / math.sqrt(2)
        z1 = (theta[..., 1] - theta[..., 0]) / math.sqrt(2)
        return torch.stack([-z0.abs(), z1], -1)

    @classmethod
    def draw_p(cls, shape, generator=None, dtype=None):
        """Draws of the crescent ``p`` (``shape + (2,)``) from ``a`` and ``r``."""
        dtype = dtype or torch.get_default_dtype()
        a = (torch.rand(shape, generator=generator, dtype=dtype) - 0.5) * math.pi
        r = cls.R_LOC + cls.R_SCALE * torch.randn(shape, generator=generator, dtype=dtype)
        return torch.stack([r * torch.cos(a) + cls.BASE_OFFSET, r * torch.sin(a)], -1)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        p = self.draw_p(shape[:-1], dtype=self.theta.dtype).to(self.theta.device)
        return p + self.shift(self.theta).expand(shape)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        p = value - self.shift(self.theta)
        u, v = p[..., 0] - self.BASE_OFFSET, p[..., 1]
        r = torch.sqrt(u * u + v * v)
        log_normal = -0.5 * ((r - self.R_LOC) / self.R_SCALE) ** 2 - math.log(
            math.sqrt(2 * math.pi) * self.R_SCALE
        )
        log_f = log_normal - torch.log(math.pi * r)
        if self.boundary_width > 0:
            return log_f + torch.nn.functional.logsigmoid(u / self.boundary_width)
        return torch.where(u >= 0, log_f, torch.full_like(log_f, -math.inf))


class TwoMoons(SBITask):
    r"""
    sbibm's ``two_moons``: :math:`\theta \sim U(-1, 1)^2` and the crescent
    simulator of :class:`TwoMoonsLikelihood`. The posterior is two thin crescents
    (radius 0.1, width about 0.01), mirror images across the line
    :math:`\theta_1 + \theta_2 = 0`, because the simulator sees only
    :math:`|\theta_1 + \theta_2|`.

    **Exact reference** (the construction of sbibm's ``_sample_reference_posterior``,
    vectorized, plus a check sbibm omits): the map
    :math:`\theta \mapsto (z_0, z_1) = ((\theta_1 + \theta_2), (\theta_2 - \theta_1))/\sqrt 2`
    is a rotation, and given :math:`x` the simulator's :math:`p` fixes
    :math:`|z_0| = p_1 - x_1` and :math:`z_1 = x_2 - p_2`. So a draw of :math:`p`
    from the simulator, a fair sign for :math:`z_0` and the inverse rotation give
    :math:`\theta` with density proportional to :math:`f(p)`, the likelihood; keeping
    draws with :math:`p_1 \ge x_1` (else no :math:`\theta` produces that :math:`p`)
    and :math:`\theta` inside the prior's box multiplies by the flat prior.

    :param float boundary_width: softening :math:`\tau` of the likelihood's
        half-plane (:class:`TwoMoonsLikelihood`) in :meth:`model`; the simulator and
        the reference posterior are those of the exact task whatever its value.
    """

    name = "two_moons"
    dim_parameters = 2
    dim_data = 2
    PRIOR_BOUND = 1.0
    observation_seeds = (1000011, 1000001, 1000002, 1000003, 1000013) + tuple(
        range(1000005, 1000010)
    )

    def __init__(self, boundary_width=0.0):
        self.boundary_width = float(boundary_width)

    def prior(self, like=None):
        bound = torch.full((self.dim_parameters,), self.PRIOR_BOUND, **_like(like))
        return dist.Uniform(-bound, bound).to_event(1)

    def likelihood(self, theta):
        return TwoMoonsLikelihood(theta, self.boundary_width)

    def simulator(self, theta, generator=None):
        p = TwoMoonsLikelihood.draw_p(theta.shape[:-1], generator, theta.dtype)
        return p + TwoMoonsLikelihood.shift(theta)

    def sample_prior(self, num_samples, generator=None):
        u = torch.rand(num_samples, self.dim_parameters, generator=generator)
        return (2 * u - 1) * self.PRIOR_BOUND

    @staticmethod
    def minor_crescent_share(theta):
        r"""
        The share of draws ``theta`` (``(n, 2)``) in the less populated of the two
        mirror-image crescents, the sides of :math:`\theta_1 + \theta_2 = 0`: about 0.5
        for the exact posterior (less where the prior's box cuts one crescent), 0 for
        an approximation that found one crescent only.
        """
        share = (theta[..., 0] + theta[..., 1] > 0).double().mean().item()
        return min(share, 1.0 - share)

    def reference_posterior_sample(self, x, num_samples, generator=None, batch_size=100_000):
        x = torch.as_tensor(x, dtype=torch.float64).reshape(2)
        accepted, total, tries = [], 0, 0
        while total < num_samples:
            p = TwoMoonsLikelihood.draw_p((batch_size,), generator, torch.float64)
            sign = torch.randint(2, (batch_size,), generator=generator).double() * 2 - 1
            z0 = sign * (p[:, 0] - x[0])
            z1 = x[1] - p[:, 1]
            theta = torch.stack([z0 - z1, z0 + z1], -1) / math.sqrt(2)
            keep = (p[:, 0] >= x[0]) & (theta.abs() <= self.PRIOR_BOUND).all(-1)
            accepted.append(theta[keep])
            total += int(keep.sum())
            tries += 1
            if tries > 1000 and total == 0:
                raise ValueError(f"x = {x.tolist()} has no posterior mass inside the prior")
        return torch.cat(accepted)[:num_samples].float()


def _flat(theta, width):
    batch = theta.shape[:-1]
    return theta.reshape(-1, width), batch


def _uniform_box(bound, dim, like):
    bound = torch.full((dim,), float(bound), **_like(like))
    return dist.Uniform(-bound, bound).to_event(1)


def _sample_box(bound, num_samples, dim, generator):
    # Uniform(low, high).sample() is low + rand * (high - low): the same floats as sbibm's
    u = torch.rand(num_samples, dim, generator=generator)
    return -bound + u * (2 * bound)


class GaussianMixture(SBITask):
    r"""
    sbibm's ``gaussian_mixture``: the mean of a mixture of a broad and a narrow Gaussian,

    .. math:: \theta \sim U(-10, 10)^2,\qquad
              x \mid \theta \sim \tfrac12 N(\theta, I) + \tfrac12 N(\theta, 0.1^2 I).

    As a function of :math:`\theta` each component is a normalized Gaussian around
    :math:`x`, so the posterior is :math:`\tfrac12 N(x, I) + \tfrac12 N(x, 0.01 I)`
    truncated to the prior's box, sampled exactly by rejection (as sbibm does).
    """

    name = "gaussian_mixture"
    dim_parameters = 2
    dim_data = 2
    PRIOR_BOUND = 10.0
    SCALES = (1.0, 0.1)
    WEIGHTS = (0.5, 0.5)

    def prior(self, like=None):
        return _uniform_box(self.PRIOR_BOUND, self.dim_parameters, like)

    def sample_prior(self, num_samples, generator=None):
        return _sample_box(self.PRIOR_BOUND, num_samples, self.dim_parameters, generator)

    def likelihood(self, theta):
        scales = theta.new_tensor(self.SCALES)
        loc = theta.unsqueeze(-2).expand(theta.shape[:-1] + (2, self.dim_data))
        components = dist.Normal(loc, scales[:, None].expand(loc.shape)).to_event(1)
        mixture = dist.Categorical(theta.new_tensor(self.WEIGHTS).expand(loc.shape[:-1]))
        return dist.MixtureSameFamily(mixture, components)

    def simulator(self, theta, generator=None):
        flat, batch = _flat(theta, self.dim_parameters)
        n = flat.shape[0]
        # sbibm: Categorical(weights).expand_by([n]).sample(), then Normal(...).sample().
        # The torch of sbibm's files drew each category by inverting the CDF at one
        # float64 uniform per row (today's torch.multinomial draws differently): doing
        # the same reproduces sbibm's stored observations exactly
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        edges = torch.tensor(self.WEIGHTS, dtype=torch.float64).cumsum(0)[:-1]
        idx = (u >= edges).sum(-1)
        scale = torch.tensor(self.SCALES, dtype=flat.dtype)[idx, None].expand(flat.shape)
        x = torch.normal(flat, scale, generator=generator)
        return x.reshape(batch + (self.dim_data,))

    def reference_posterior_sample(self, x, num_samples, generator=None, batch_size=100_000):
        x = torch.as_tensor(x, dtype=torch.float64).reshape(self.dim_data)
        scales = torch.tensor(self.SCALES, dtype=torch.float64)
        weights = torch.tensor(self.WEIGHTS, dtype=torch.float64)
        accepted, total, tries = [], 0, 0
        while total < num_samples:
            idx = torch.multinomial(weights, batch_size, True, generator=generator)
            eps = torch.randn(batch_size, self.dim_parameters, generator=generator, dtype=x.dtype)
            theta = x + scales[idx, None] * eps
            keep = (theta.abs() <= self.PRIOR_BOUND).all(-1)
            accepted.append(theta[keep])
            total += int(keep.sum())
            tries += 1
            if tries > 1000 and total == 0:
                raise ValueError(f"x = {x.tolist()} has no posterior mass inside the prior")
        return torch.cat(accepted)[:num_samples].float()


class _SlcpLikelihood(TorchDistribution):
    """``num_draws`` i.i.d. 2-D Gaussians, flattened to one event of ``2 * num_draws``."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, loc, scale_tril, num_draws, validate_args=None):
        self.loc, self.scale_tril, self.num_draws = loc, scale_tril, num_draws
        self._base = dist.MultivariateNormal(loc.unsqueeze(-2), scale_tril=scale_tril.unsqueeze(-3))
        super().__init__(loc.shape[:-1], (2 * num_draws,), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _SlcpLikelihood(
            self.loc.expand(batch_shape + (2,)),
            self.scale_tril.expand(batch_shape + (2, 2)),
            self.num_draws,
        )

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape + (self.num_draws, 2)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        draws = self.loc.unsqueeze(-2) + (self.scale_tril.unsqueeze(-3) @ eps.unsqueeze(-1))[..., 0]
        return draws.reshape(shape[:-2] + (2 * self.num_draws,))

    def log_prob(self, value):
        value = value.reshape(value.shape[:-1] + (self.num_draws, 2))
        return self._base.log_prob(value).sum(-1)


class Slcp(SBITask):
    r"""
    sbibm's ``slcp`` (simple likelihood, complex posterior; Papamakarios, Sterratt and
    Murray 2019): four i.i.d. draws of a 2-D Gaussian whose mean, scales and
    correlation are functions of :math:`\theta \sim U(-3, 3)^5`,

    .. math:: x_j \sim N\Big((\theta_1, \theta_2),\,
              \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix}
              + 10^{-6} I\Big),\quad s_1 = \theta_3^2,\ s_2 = \theta_4^2,\,
              \rho = \tanh\theta_5,\quad j = 1..4,

    flattened to ``x = (x_1, x_2, x_3, x_4)`` (8-D). The signs of :math:`\theta_3` and
    :math:`\theta_4` are not identified: four symmetric posterior modes. There is no
    exact sampler; sbibm's reference draws (rejection sampling from a flow fitted to
    importance draws) are read by :mod:`pyro_adv.models.sbibm_files`.
    """

    name = "slcp"
    dim_parameters = 5
    num_draws = 4
    dim_data = 8
    PRIOR_BOUND = 3.0
    JITTER = 1e-6
    observation_seeds = (1000000, 1000001, 1000002, 1000003, 1000004, 1000005) + (
        1000010,
        1000012,
        1000008,
        1000009,
    )

    def prior(self, like=None):
        return _uniform_box(self.PRIOR_BOUND, self.dim_parameters, like)

    def sample_prior(self, num_samples, generator=None):
        return _sample_box(self.PRIOR_BOUND, num_samples, self.dim_parameters, generator)

    def mean_and_scale_tril(self, theta):
        """The Gaussian's mean ``(..., 2)`` and Cholesky factor ``(..., 2, 2)``."""
        s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
        rho = torch.tanh(theta[..., 4])
        cov = torch.stack(
            [s1**2 + self.JITTER, rho * s1 * s2, rho * s1 * s2, s2**2 + self.JITTER], -1
        ).reshape(theta.shape[:-1] + (2, 2))
        return theta[..., :2], torch.linalg.cholesky(cov)

    def likelihood(self, theta):
        loc, scale_tril = self.mean_and_scale_tril(theta)
        return _SlcpLikelihood(loc, scale_tril, self.num_draws)

    def simulator(self, theta, generator=None):
        flat, batch = _flat(theta, self.dim_parameters)
        loc, scale_tril = self.mean_and_scale_tril(flat)
        # sbibm: MultivariateNormal(...).expand((n, 4)).sample(): eps of shape (n, 4, 2)
        eps = torch.randn(flat.shape[0], self.num_draws, 2, generator=generator, dtype=flat.dtype)
        x = loc.unsqueeze(-2) + (scale_tril.unsqueeze(-3) @ eps.unsqueeze(-1))[..., 0]
        return x.reshape(batch + (self.dim_data,))


def _bernoulli_glm_design(duration=100, num_lags=9, seed=42):
    # sbibm's _setup: white-noise stimulus from numpy's RandomState(42), float32; the
    # design matrix's column j + 1 is the stimulus delayed by j steps, column 0 the offset
    stimulus = torch.from_numpy(np.random.RandomState(seed).randn(duration).astype(np.float32))
    design = torch.zeros(duration, num_lags)
    for j in range(num_lags):
        design[j:, j] = stimulus[: duration - j]
    return torch.cat([torch.ones(duration, 1), design], 1), stimulus


class BernoulliGLMLikelihood(TorchDistribution):
    r"""
    The likelihood of :class:`BernoulliGLM`'s summary :math:`x = X^\top y`. Spikes
    :math:`y_t \sim \mathrm{Bernoulli}(\sigma(\psi_t))`, :math:`\psi = X\theta`, have
    :math:`\log p(y \mid \theta) = \theta^\top X^\top y - \sum_t \log(1 + e^{\psi_t})`,
    a function of :math:`y` through :math:`x` alone, and distinct spike trains give
    distinct :math:`x` (the stimulus is continuous), so the probability mass of
    :math:`x` is

    .. math:: \log p(x \mid \theta) = \theta^\top x - \sum_t \log(1 + e^{(X\theta)_t}),

    exact for any ``x`` the simulator can produce (no check that ``x`` is one).
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(self, theta, design, validate_args=None):
        self.theta, self.design = theta, design
        super().__init__(theta.shape[:-1], design.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return BernoulliGLMLikelihood(self.theta.expand(batch_shape + (10,)), self.design)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        psi = self.theta.expand(shape + self.theta.shape[-1:]) @ self.design.T
        spikes = torch.rand(psi.shape, dtype=psi.dtype, device=psi.device) < torch.sigmoid(psi)
        return spikes.to(psi.dtype) @ self.design

    def log_prob(self, value):
        psi = self.theta @ self.design.T
        return (self.theta * value).sum(-1) - torch.nn.functional.softplus(psi).sum(-1)


class BernoulliGLM(SBITask):
    r"""
    sbibm's ``bernoulli_glm``: a spiking neuron as a Bernoulli GLM. Over 100 time
    steps with a white-noise stimulus :math:`I` (numpy's ``RandomState(42)``, as in
    sbibm), the design matrix :math:`X` has an offset column and 9 delayed copies of
    :math:`I`; spikes :math:`y_t \sim \mathrm{Bernoulli}(\sigma((X\theta)_t))`, and
    :math:`x = X^\top y` (spike count and spike-triggered sums: sufficient statistics).
    The prior is :math:`N(0, B^{-1})` with :math:`B_{00} = 0.5` on the offset and
    :math:`F^\top F` on the filter, :math:`F = D^2 + \mathrm{diag}(\sqrt{j / 9})`,
    :math:`D` the first-difference matrix: smooth filters. The likelihood is exact
    (:class:`BernoulliGLMLikelihood`); sbibm's reference draws (Pólya-Gamma Gibbs
    sampling) are read by :mod:`pyro_adv.models.sbibm_files`.
    """

    name = "bernoulli_glm"
    dim_parameters = 10
    dim_data = 10

    def __init__(self):
        self.design, self.stimulus = _bernoulli_glm_design()
        m = self.dim_parameters - 1
        d = torch.eye(m) - torch.diag(torch.ones(m - 1), -1)
        f = d @ d + torch.diag(torch.arange(m) / m) ** 0.5
        self.prior_precision = torch.zeros(m + 1, m + 1)
        self.prior_precision[0, 0] = 0.5
        self.prior_precision[1:, 1:] = f.T @ f
        # the Cholesky factor torch's MultivariateNormal(precision_matrix=...) samples with
        self.prior_scale_tril = torch.distributions.MultivariateNormal(
            torch.zeros(m + 1), precision_matrix=self.prior_precision
        ).scale_tril

    def prior(self, like=None):
        kw = _like(like)
        return dist.MultivariateNormal(
            torch.zeros(self.dim_parameters, **kw), scale_tril=self.prior_scale_tril.to(**kw)
        )

    def sample_prior(self, num_samples, generator=None):
        eps = torch.randn(num_samples, self.dim_parameters, generator=generator)
        return eps @ self.prior_scale_tril.T

    def likelihood(self, theta):
        return BernoulliGLMLikelihood(theta, self.design.to(theta))

    def simulator(self, theta, generator=None):
        flat, batch = _flat(theta, self.dim_parameters)
        design = self.design.to(flat)
        psi = flat @ design.T
        # sbibm draws torch.rand(100) per parameter row, in order: the same stream
        u = torch.rand(psi.shape, generator=generator, dtype=psi.dtype)
        spikes = (u < 1 / (1 + torch.exp(-psi))).to(psi.dtype)
        return (spikes @ design).reshape(batch + (self.dim_data,))


#: the tasks of Table 2, as used by the benchmark and the tests
GAUSSIAN_LINEAR = GaussianLinear()
TWO_MOONS = TwoMoons()
GAUSSIAN_MIXTURE = GaussianMixture()
SLCP = Slcp()
BERNOULLI_GLM = BernoulliGLM()
#: every task by sbibm's name
SBI_TASKS = {t.name: t for t in (TWO_MOONS, GAUSSIAN_LINEAR, GAUSSIAN_MIXTURE, SLCP, BERNOULLI_GLM)}
