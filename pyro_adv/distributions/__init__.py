"""Distributions with no density: neural samplers usable as Pyro sample sites."""

from pyro_adv.distributions.hidden import HiddenDensity
from pyro_adv.distributions.implicit import (
    ImplicitDensityError,
    ImplicitDistribution,
    ImplicitValue,
    is_implicit,
    unwrap,
)

__all__ = [
    "HiddenDensity",
    "ImplicitDensityError",
    "ImplicitDistribution",
    "ImplicitValue",
    "is_implicit",
    "unwrap",
]
