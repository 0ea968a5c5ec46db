"""A distribution with a known density, presented as implicit: the yardstick of estimators."""

import torch
from pyro.distributions import TorchDistribution

from pyro_adv.distributions.implicit import ImplicitDistribution

__all__ = ["HiddenDensity"]


class HiddenDensity(ImplicitDistribution):
    """
    Wraps a reparameterizable distribution so that it samples as before but
    refuses ``log_prob``, like any :class:`ImplicitDistribution`. An adversarial
    objective must then estimate the density the wrapped distribution knows, so a
    guide built from these can be scored twice, by
    :class:`~pyro_adv.infer.TraceAVB_ELBO` with the wrapper and by
    :class:`~pyro.infer.Trace_ELBO` without it: the two must agree. The tests and
    the importance-diagnostics benchmark use it that way.

    Example::

        def guide(x, hide=True):
            fn = dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0)
            pyro.sample("z", HiddenDensity(fn) if hide else fn)

    :param ~torch.distributions.Distribution fn: the distribution to hide; it must
        have ``rsample``.
    """

    def __init__(self, fn):
        if not fn.has_rsample:
            raise ValueError(
                f"HiddenDensity: {type(fn).__name__} has no rsample; AVB needs pathwise draws"
            )
        self.fn = fn
        self._support = fn.support
        TorchDistribution.__init__(self, fn.batch_shape, fn.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return HiddenDensity(self.fn.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.fn.rsample(sample_shape)

    @property
    def support(self):
        return self.fn.support
