"""Networks for adversarial inference: generators, implicit encoders, discriminators."""

from pyro_adv.nn.averaging import ParameterEMA, raw_weights
from pyro_adv.nn.discriminators import (
    Discriminator,
    ModeFeatureDiscriminator,
    PackedDiscriminator,
    PairDiscriminator,
)
from pyro_adv.nn.generators import ImplicitEncoder, MLPGenerator
from pyro_adv.nn.mixture import MixtureMLP, component_index
from pyro_adv.nn.mlp import MLP, get_activation

__all__ = [
    "MLP",
    "Discriminator",
    "ImplicitEncoder",
    "MLPGenerator",
    "MixtureMLP",
    "ModeFeatureDiscriminator",
    "PackedDiscriminator",
    "PairDiscriminator",
    "ParameterEMA",
    "component_index",
    "get_activation",
    "raw_weights",
]
