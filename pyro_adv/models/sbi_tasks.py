r"""
Two tasks of the simulation-based inference benchmark sbibm (Lueckmann, Boelts,
Greenberg, Gonçalves and Macke 2021, "Benchmarking Simulation-Based Inference",
AISTATS), rebuilt from the definitions in sbibm's ``tasks/<name>/task.py``, with
exact reference posteriors:

* :data:`GAUSSIAN_LINEAR`: a 10-D Gaussian mean, Gaussian posterior in closed form;
* :data:`TWO_MOONS`: a 2-D parameter seen through a crescent-shaped simulator;
  the posterior is two thin crescents, sampled exactly by inverting the simulator.

Each task gives a Pyro model over a plate of observations (subsample-able, like
:func:`~pyro_adv.models.exponential_model`), a seeded prior/simulator sampler, the
likelihood (which AVB evaluates and ALI does not), an amortized guide around an
:class:`~pyro_adv.nn.ImplicitEncoder`, the reference posterior sampler, fixed
observations and the published NPE C2ST at 10,000 simulations.

**Observations.** sbibm's ten observations per task come from its own seeded
pipeline and are stored in its repository; they are not reproduced here.
Observation ``k`` (1-based) of this module is ``theta ~ prior``, ``x ~ simulator``
drawn with ``torch.Generator().manual_seed(OBSERVATION_SEED + k)``, so C2ST values
are comparable with sbibm's in distribution over observations, not observation by
observation.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import biject_to, constraints

from pyro_adv.distributions.implicit import ImplicitDistribution

__all__ = [
    "GAUSSIAN_LINEAR",
    "NPE_C2ST_10K",
    "OBSERVATION_SEED",
    "SBITask",
    "TWO_MOONS",
    "GaussianLinear",
    "TwoMoons",
    "TwoMoonsLikelihood",
]

#: observation ``k`` (1-based) is drawn with seed ``OBSERVATION_SEED + k``
OBSERVATION_SEED = 1_000_000

#: NPE's mean C2ST over sbibm's 10 observations at a budget of 10,000 simulations
#: (Lueckmann et al. 2021, Fig. 2 and the sbibm results, sbi-benchmark.github.io)
NPE_C2ST_10K = {"gaussian_linear": 0.552, "two_moons": 0.606}


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

    @property
    def npe_c2st(self):
        """The published NPE C2ST at 10,000 simulations (:data:`NPE_C2ST_10K`)."""
        return NPE_C2ST_10K[self.name]

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

    def observations(self, num_observations=5):
        """
        The fixed observations: ``(theta_true, x_obs)`` of shapes
        ``(num_observations, dim_parameters)`` and ``(num_observations, dim_data)``,
        observation ``k`` drawn with seed ``OBSERVATION_SEED + k`` (see the module notes).
        """
        pairs = [
            self.sample_joint(1, torch.Generator().manual_seed(OBSERVATION_SEED + k))
            for k in range(1, num_observations + 1)
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
        return ImplicitDistribution(
            lambda eps: transform(q.generator(eps)), q.base, q.event_shape, support=support
        )

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


#: the tasks of Table 2, as used by the benchmark and the tests
GAUSSIAN_LINEAR = GaussianLinear()
TWO_MOONS = TwoMoons()
