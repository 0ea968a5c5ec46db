"""Discriminators (critics): networks whose logit estimates a log density ratio."""

import torch

from pyro_adv.nn.mlp import MLP

__all__ = ["Discriminator", "PairDiscriminator"]


class Discriminator(MLP):
    r"""
    A discriminator ``T(z)`` with one logit per input row. Trained with a
    divergence's discriminator loss, its logit estimates the log density ratio
    :math:`\log p(z) / q(z)` of the two samples it separates (thesis eq. 5 and
    16; Nowozin et al. 2016).

    Its input width is inferred on the first call and its layers are built on
    that input's device and dtype; the first batch also fixes an input
    standardization, so inputs of any scale work.

    :param tuple hidden_dims: widths of the hidden layers.
    :param activation: hidden activation (name or module class).
    :param bool standardize_input: standardize inputs with first-batch statistics.
    """

    def __init__(self, hidden_dims=(64, 64), activation="elu", standardize_input=True):
        super().__init__(None, 1, hidden_dims, activation, standardize_input)

    def forward(self, z):
        return super().forward(z).squeeze(-1)


class PairDiscriminator(Discriminator):
    r"""
    A discriminator ``T(x, z)`` on pairs (thesis section 4.2; Mescheder et al.
    2017; Dumoulin et al. 2016): ``x`` and ``z`` are concatenated on their last
    dimension after broadcasting their batch dimensions.
    """

    def forward(self, x, z):
        if x.dtype != z.dtype:
            # float64 or integer observations beside float32 latents
            x = x.to(z.dtype if z.is_floating_point() else torch.get_default_dtype())
        shape = torch.broadcast_shapes(x.shape[:-1], z.shape[:-1])
        pair = torch.cat([x.expand(shape + x.shape[-1:]), z.expand(shape + z.shape[-1:])], -1)
        return super().forward(pair)
