"""Distributions defined by a sampler alone.

An *implicit* distribution can be sampled, and samples can be differentiated with
respect to the sampler's parameters, but its density is unknown (thesis section
2.1, eq. 1): ``x = G(eps)`` with ``eps ~ base``. Pyro's density-based objectives
(:class:`~pyro.infer.Trace_ELBO` and friends) cannot score such a site; the
objectives in :mod:`pyro_adv.infer` can.
"""

import weakref

import torch
from pyro.distributions import (
    ExpandedDistribution,
    Independent,
    MaskedDistribution,
    TorchDistribution,
)
from torch.distributions import constraints

__all__ = [
    "ImplicitDensityError",
    "ImplicitDistribution",
    "ImplicitValue",
    "is_implicit",
    "record_choice",
    "unwrap",
]

_OBJECTIVES = "pyro_adv.infer.TraceAVB_ELBO, pyro_adv.infer.Trace_ALI or pyro_adv.infer.Trace_GAN"


class ImplicitDensityError(NotImplementedError, ValueError):
    """Raised when the density of an implicit distribution is asked for.

    It derives from :class:`ValueError` too, so that Pyro's trace machinery adds
    the name of the offending sample site to the message.
    """


def _density_error(what):
    return ImplicitDensityError(
        f"{what} is implicit: it can be sampled but has no density, so it cannot be "
        f"scored by a density-based objective such as pyro.infer.Trace_ELBO. Train "
        f"models and guides that contain it with {_OBJECTIVES}."
    )


class ImplicitDistribution(TorchDistribution):
    r"""
    The distribution of ``generator(eps)`` with ``eps ~ base``: a neural sampler
    with no tractable density (Goodfellow et al. 2014; Mohamed and
    Lakshminarayanan 2017):

    .. math:: x = G_\theta(\epsilon), \qquad \epsilon \sim p(\epsilon).

    Samples are reparameterized (``rsample``), so gradients flow into the
    generator's parameters. ``log_prob`` raises :class:`ImplicitDensityError`.

    Example::

        generator = MLPGenerator(noise_dim=2, output_dim=2)
        base = dist.Normal(0.0, 1.0).expand([n, 2]).to_event(1)
        with pyro.plate("data", n):
            pyro.sample("x", ImplicitDistribution(generator, base), obs=data)

    :param callable generator: maps a noise tensor of shape
        ``sample_shape + batch_shape + base.event_shape`` to a value of shape
        ``sample_shape + batch_shape + event_shape``; it must broadcast over
        leading dimensions.
    :param ~torch.distributions.Distribution base: the noise distribution; its
        batch shape is this distribution's batch shape. It must be
        reparameterizable.
    :param torch.Size event_shape: the shape of one generated value. Inferred when
        omitted from the generator's output on noise of the full batch shape
        (``base.batch_shape + base.event_shape``, zeros, so no randomness is used):
        the output's shape minus the batch shape. Generators that close over a
        batch of parameters or contexts work without it; pass it when that
        output does not start with the batch shape.
    :param constraints.Constraint support: the support of the generated values
        (``real`` by default); used only for documentation and validation.
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(
        self, generator, base, event_shape=None, support=constraints.real, validate_args=None
    ):
        if not callable(generator):
            raise TypeError(
                f"ImplicitDistribution: generator must be callable, got {type(generator)}"
            )
        if not isinstance(base, torch.distributions.Distribution):
            raise TypeError(
                f"ImplicitDistribution: base must be a torch Distribution, got {type(base)}"
            )
        if not base.has_rsample:
            raise ValueError(
                f"ImplicitDistribution: base {type(base).__name__} is not reparameterizable "
                "(has_rsample=False); use a continuous noise distribution such as Normal."
            )
        self.generator = generator
        self.base = base
        self._support = support
        if event_shape is None:
            event_shape = _infer_event_shape(generator, base)
        super().__init__(base.batch_shape, torch.Size(event_shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(self._support, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(ImplicitDistribution, _instance)
        new.generator = self.generator
        new.base = self.base.expand(batch_shape)
        new._support = self._support
        for name in ("encoder", "context"):  # provenance an objective may read
            if name in self.__dict__:
                setattr(new, name, self.__dict__[name])
        super(ImplicitDistribution, new).__init__(batch_shape, self.event_shape, False)
        return new

    def rsample(self, sample_shape=torch.Size()):
        noise = self.base.rsample(sample_shape)
        value = self.generator(noise)
        if _LAST_CHOICE[0] is noise:
            log_prob = _LAST_CHOICE[1]
            _LAST_CHOICE[0] = _LAST_CHOICE[1] = None
            # kept by the draw's identity, as Pyro's Rejector keeps its acceptance
            # probability, for choice_log_prob to find from the traced value
            self._last_choice = (value, log_prob)
        expected = self._extended_shape(sample_shape)
        if value.shape != expected:
            # never broadcast: that would copy one draw across the batch
            raise ValueError(
                f"ImplicitDistribution: the generator returned shape {tuple(value.shape)} "
                f"for noise of shape {tuple(noise.shape)}; expected {tuple(expected)} "
                f"(sample_shape + batch_shape {tuple(self.batch_shape)} + event_shape "
                f"{tuple(self.event_shape)})."
            )
        return value

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def choice_log_prob(self, value):
        r"""
        :math:`\log q(k)` of the discrete choice :math:`k` made in drawing ``value``
        (a mixture's component with learned weights), with the batch shape of
        ``value``, or ``None`` when the sampler makes no such choice or ``value`` is
        not this distribution's last draw. A generator reports a choice with
        :func:`record_choice` for the noise it was called with
        (:class:`~pyro_adv.nn.ImplicitEncoder` with learned mixture weights does), so
        a distribution whose generator wraps another's, passing the noise through
        (``lambda eps: transform(q.generator(eps))``), keeps it. The choice is not
        reparameterized: the
        objectives train what it depends on by the score function
        :math:`\nabla\,\mathbb{E}[f] = \mathbb{E}[f\,\nabla \log q(k)]` (Williams
        1992), as Pyro's ``score_parts`` does for partly reparameterized
        distributions such as ``Rejector``.
        """
        last = self.__dict__.get("_last_choice")
        return last[1] if last is not None and last[0] is value else None

    def log_prob(self, value):
        raise _density_error(f"{type(self).__name__}")

    @property
    def mean(self):
        raise _density_error(f"The mean of {type(self).__name__}")

    @property
    def variance(self):
        raise _density_error(f"The variance of {type(self).__name__}")

    def entropy(self):
        raise _density_error(f"The entropy of {type(self).__name__}")

    def cdf(self, value):
        raise _density_error(f"The cdf of {type(self).__name__}")

    def icdf(self, value):
        raise _density_error(f"The icdf (quantiles) of {type(self).__name__}")


#: the last reported choice, ``[noise, log_prob]``, until the ImplicitDistribution that
#: drew ``noise`` collects it (see record_choice); one slot: a draw's generator runs
#: between its rsample's noise and the collection, and a newer report replaces an
#: uncollected one (a generator called outside any rsample)
_LAST_CHOICE = [None, None]


def record_choice(noise, log_prob):
    r"""
    Reports that a generator, called on ``noise``, made a discrete choice (e.g. a
    mixture component) of log-probability ``log_prob`` (batch-shaped, differentiable
    in what the choice depends on). The :class:`ImplicitDistribution` whose
    ``rsample`` drew ``noise`` collects it, and
    :meth:`ImplicitDistribution.choice_log_prob` returns it for the drawn value.
    """
    _LAST_CHOICE[0], _LAST_CHOICE[1] = noise, log_prob


class ImplicitValue(ImplicitDistribution):
    """
    One site's share of a joint draw from an implicit distribution: a point mass
    at ``value`` that refuses to be scored. :class:`~pyro_adv.infer.autoguide.AutoImplicit`
    draws all latents jointly and gives each model site one of these, so the
    sites stay correlated and the adversarial objectives see them as one group.

    :param torch.Tensor value: the drawn (constrained) value.
    :param int event_dim: how many rightmost dims of ``value`` are event dims.
    :param str joint: the name of the joint draw this value belongs to; sites
        with the same ``joint`` are discriminated together.
    :param torch.Tensor unconstrained_value: the same draw in unconstrained
        space, so objectives need not invert the bijection.
    """

    def __init__(self, value, event_dim=0, joint=None, unconstrained_value=None):
        self.value = value
        self.joint = joint
        self.unconstrained_value = unconstrained_value
        self._support = constraints.real
        batch_dim = value.dim() - event_dim
        TorchDistribution.__init__(
            self, value.shape[:batch_dim], value.shape[batch_dim:], validate_args=False
        )

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(ImplicitValue, _instance)
        new.value = self.value.expand(batch_shape + self.event_shape)
        new.joint = self.joint
        new.unconstrained_value = None
        if self.unconstrained_value is not None and batch_shape == self.batch_shape:
            new.unconstrained_value = self.unconstrained_value
        new._support = self._support
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        return new

    def rsample(self, sample_shape=torch.Size()):
        return self.value.expand(self._extended_shape(sample_shape))


#: event shapes found by running a module generator, per (batch shape, noise event
#: shape, dtype, device): a model that builds ``ImplicitDistribution(generator, noise)``
#: on every call would otherwise run its generator twice a step. A stale entry (a module
#: changed to produce another shape) cannot pass silently: ``rsample`` checks the shape
#: it generates, and the objectives check observed values against the site's shape.
_EVENT_SHAPES = weakref.WeakKeyDictionary()


def _infer_event_shape(generator, base):
    """``generator``'s output shape on one full batch of noise, minus the batch shape."""
    if not isinstance(generator, torch.nn.Module):
        return _probe_event_shape(generator, base)
    try:
        mean = base.mean
        key = (base.batch_shape, base.event_shape, mean.dtype, mean.device)
    except NotImplementedError:  # a base without a mean
        return _probe_event_shape(generator, base)
    known = _EVENT_SHAPES.setdefault(generator, {})
    if key not in known:
        known[key] = _probe_event_shape(generator, base)
    return known[key]


def _probe_event_shape(generator, base):
    batch_shape = base.batch_shape
    try:
        zeros = base.mean.new_zeros(batch_shape + base.event_shape)
    except NotImplementedError:  # a base without a mean
        zeros = base.sample().new_zeros(batch_shape + base.event_shape)
    with torch.no_grad():
        shape = generator(zeros).shape
    n = len(batch_shape)
    if len(shape) < n or torch.Size(shape[:n]) != batch_shape:
        raise ValueError(
            f"ImplicitDistribution: cannot infer the event shape: on noise of shape "
            f"{tuple(zeros.shape)} (batch shape {tuple(batch_shape)}) the generator returned "
            f"shape {tuple(shape)}, which does not start with the batch shape; pass "
            "event_shape= explicitly"
        )
    return shape[n:]


def unwrap(fn):
    """Strips Pyro's shape wrappers (``to_event``, ``mask``, ``expand``) off a distribution.

    :returns: ``(base_distribution, extra_event_dims)``.
    """
    extra = 0
    while True:
        if isinstance(fn, Independent):
            extra += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, MaskedDistribution):
            fn = fn.base_dist
        elif isinstance(fn, ExpandedDistribution):
            fn = fn.base_dist
        else:
            return fn, extra


def is_implicit(fn):
    """Whether ``fn`` (possibly wrapped by ``to_event``/``mask``) has no density."""
    return isinstance(unwrap(fn)[0], ImplicitDistribution)
