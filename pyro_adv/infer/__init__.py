"""Adversarial objectives for :class:`pyro.infer.SVI`."""

from pyro_adv.infer import divergences
from pyro_adv.infer.adversarial import AdversarialObjective, is_discriminator_param
from pyro_adv.infer.checks import (
    NonFiniteLossError,
    ObjectiveMismatchWarning,
    ObjectiveRebuiltWarning,
    ZeroGradientWarning,
)
from pyro_adv.infer.divergences import get_divergence
from pyro_adv.infer.simulation import simulate
from pyro_adv.infer.trace_ali import Trace_ALI
from pyro_adv.infer.trace_avb_elbo import TraceAVB_ELBO
from pyro_adv.infer.trace_gan import Trace_GAN

__all__ = [
    "TraceAVB_ELBO",
    "Trace_GAN",
    "Trace_ALI",
    "simulate",
    "AdversarialObjective",
    "NonFiniteLossError",
    "ObjectiveMismatchWarning",
    "ObjectiveRebuiltWarning",
    "ZeroGradientWarning",
    "divergences",
    "get_divergence",
    "is_discriminator_param",
]
