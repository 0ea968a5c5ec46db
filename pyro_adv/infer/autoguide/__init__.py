"""Automatic guides with implicit posteriors."""

from pyro_adv.infer.autoguide.amortized import amortized_guide
from pyro_adv.infer.autoguide.implicit import AutoImplicit

__all__ = ["AutoImplicit", "amortized_guide"]
