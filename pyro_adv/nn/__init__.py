"""Networks for adversarial inference: generators, implicit encoders, discriminators."""

from pyro_adv.nn.averaging import ParameterEMA, raw_weights
from pyro_adv.nn.discriminators import Discriminator, PairDiscriminator
from pyro_adv.nn.generators import ImplicitEncoder, MLPGenerator
from pyro_adv.nn.mlp import MLP, get_activation

__all__ = [
    "MLP",
    "Discriminator",
    "ImplicitEncoder",
    "MLPGenerator",
    "PairDiscriminator",
    "ParameterEMA",
    "get_activation",
    "raw_weights",
]
