"""Discriminators (critics): networks whose logit estimates a log density ratio."""

import torch
from torch import nn

from pyro_adv.nn.mlp import MLP

__all__ = ["Discriminator", "PackedDiscriminator", "PairDiscriminator"]


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
    :param input_gain: multiplies the standardized inputs; ``"auto"``: the first
        batch's :func:`~pyro_adv.nn.mlp.fine_structure_gain` (1 for Gaussian-like
        data, up to 8 for sharply clustered data), the default of
        :class:`~pyro_adv.infer.Trace_GAN`'s own discriminators.
    """

    def __init__(
        self, hidden_dims=(64, 64), activation="elu", standardize_input=True, input_gain=1.0
    ):
        super().__init__(None, 1, hidden_dims, activation, standardize_input, input_gain=input_gain)

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


class PackedDiscriminator(nn.Module):
    r"""
    A *packed* discriminator (PacGAN, Lin et al. 2018): the rows of a batch are
    shuffled and grouped into packs of ``pack``, and ``inner`` sees each pack as
    one input of ``pack`` times the width, so it judges ``pack`` draws jointly.
    A generator that has dropped modes makes packs that look alike, which one
    draw at a time cannot show; packing turns the divergence between :math:`p`
    and :math:`q` into one between :math:`p^m` and :math:`q^m`, which penalizes
    missing mass more (Lin et al. 2018).

    Each pack's logit is returned for every row of the pack, so losses that are
    means over rows are means over packs. A batch whose size is not a multiple of
    ``pack`` is completed with rows drawn again from the batch. Use it as the
    ``discriminator=`` of :class:`~pyro_adv.infer.Trace_GAN`::

        Trace_GAN(discriminator=lambda key: PackedDiscriminator(pack=2))

    :param int pack: draws per pack (``m``; 1 is no packing).
    :param nn.Module inner: the discriminator of packs (default a lazily sized
        :class:`Discriminator` with ``hidden_dims`` and ``activation``).
    :param tuple hidden_dims: hidden widths of the default inner discriminator.
    :param activation: its hidden activation.
    """

    def __init__(self, pack=2, inner=None, hidden_dims=(64, 64), activation="elu"):
        super().__init__()
        if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
            raise ValueError(f"PackedDiscriminator: pack must be a positive integer, got {pack!r}")
        self.pack = pack
        self.inner = Discriminator(hidden_dims, activation) if inner is None else inner

    def _packed(self, x):
        if x.dim() < 2:
            raise ValueError(
                "PackedDiscriminator expects inputs of shape (..., rows, features), "
                f"got shape {tuple(x.shape)}"
            )
        n, m = x.shape[-2], self.pack
        order = torch.randperm(n, device=x.device)
        extra = (-n) % m
        if extra:
            # complete the last pack with other rows of the batch
            order = torch.cat([order, order[torch.randint(n, (extra,), device=x.device)]])
        packs = x.index_select(-2, order)
        packs = packs.reshape(x.shape[:-2] + (len(order) // m, m * x.shape[-1]))
        return packs, order

    def initialize(self, x):
        """Sizes the inner discriminator (and its input standardization) on packs of ``x``."""
        if hasattr(self.inner, "initialize"):
            self.inner.initialize(self._packed(x.detach())[0])
        return self

    def forward(self, x):
        packs, order = self._packed(x)
        logits = self.inner(packs).repeat_interleave(self.pack, -1)
        # back to the rows' order; the rows that completed the last pack are dropped
        n = x.shape[-2]
        return logits[..., :n][..., torch.argsort(order[:n])]
