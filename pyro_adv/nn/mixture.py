r"""Samplers that can put their mass on separated modes: a mixture of networks.

A continuous map :math:`G` of unimodal noise must stretch a thin bridge of noise
across the gap between two separated modes; every draw that lands on the bridge is
a draw between the modes, and gradient training rarely builds it at all (Salmona et
al. 2022). A *mixture* of networks does not need the bridge: one noise coordinate,
cut into ``K`` equal-probability bins, picks a component :math:`k`, and each
component has its own first-layer bias and its own output offset:

.. math::

    k = \lfloor K\,\Phi(\epsilon_s) \rfloor, \qquad
    G(\epsilon) = \mathrm{MLP}\big([\epsilon, e_k]\big) + o_k,

so :math:`G` is discontinuous exactly between components (a mixture of
generators sharing their hidden layers, Hoang et al. 2018, with equal weights
:math:`1/K`). The noise stays :math:`N(0, I)`: the component index is a function of
the noise, so every sampler built on it remains a reparameterized
:class:`~pyro_adv.distributions.ImplicitDistribution` and every objective works
unchanged (AVB's discriminator estimates the mixture's density from its samples).

The offsets :math:`o_k` start *spread out*, in antithetic pairs
:math:`\pm s\,v_j` (:math:`v_j \sim N(0, I)`), so that the components start in
different places and gradient descent carries them into different basins: a
reverse-KL objective such as AVB's pays :math:`\log 2` for two components on one of
two equal modes, but its gradient cannot move a component across the gap, so the
spread at the start is what finds the second mode.
"""

import math

import torch
from torch import nn

from pyro_adv.nn.averaging import averaged_value
from pyro_adv.nn.mlp import MLP

__all__ = ["MixtureMLP", "component_index", "kmeans", "kmeans_plus_plus"]


def component_index(u, num_components):
    r"""The component :math:`\lfloor K\,\Phi(u) \rfloor` picked by standard-normal noise ``u``."""
    p = 0.5 * torch.erfc(-u / math.sqrt(2.0))
    return (p * num_components).long().clamp_(0, num_components - 1)


def kmeans_plus_plus(x, num_centres):
    r"""
    k-means++ seeds (Arthur and Vassilvitskii 2007): the first centre is a uniform
    draw, each next one a draw with probability proportional to its squared distance
    to the nearest centre so far, so the seeds spread over separated clusters.

    :param torch.Tensor x: points, shape ``(n, B, d)``: ``B`` independent sets.
    :param int num_centres: :math:`K`.
    :returns: seeds, shape ``(B, K, d)``.
    """
    n, B, _ = x.shape
    rows = torch.arange(B, device=x.device)
    means = x[torch.randint(n, (B,), device=x.device), rows].unsqueeze(1)  # (B, 1, d)
    for _ in range(num_centres - 1):
        d2 = (x.unsqueeze(2) - means).pow(2).sum(-1).min(-1).values  # (n, B)
        d2 = d2.T + 1e-12 * d2.T.amax(-1, keepdim=True).clamp_min(1e-30)
        pick = torch.multinomial(d2, 1).squeeze(-1)
        means = torch.cat([means, x[pick, rows].unsqueeze(1)], 1)
    return means


@torch.no_grad()
def kmeans(x, num_centres, iterations=20, restarts=10):
    r"""
    The centres of :math:`K` clusters of the rows of ``x`` (shape ``(n, d)``), by
    Lloyd's iterations from :func:`kmeans_plus_plus` seeds (a centre that loses all
    its points stays where it is); of ``restarts`` runs, batched, the one with the
    least within-cluster sum of squares (as scikit-learn's ``n_init``), since a single
    run can settle with two centres on one cluster and one between two.

    :returns: centres, shape ``(K, d)``.
    """
    x = x.detach()
    runs = x.unsqueeze(1).expand(-1, restarts, -1)  # (n, R, d)
    centres = kmeans_plus_plus(runs, num_centres)  # (R, K, d)
    xr = runs.transpose(0, 1)  # (R, n, d)
    for _ in range(iterations):
        nearest = torch.cdist(xr, centres).argmin(-1)  # (R, n)
        counts = torch.zeros(restarts, num_centres, 1, dtype=x.dtype, device=x.device)
        counts.scatter_add_(1, nearest.unsqueeze(-1), torch.ones_like(xr[..., :1]))
        sums = torch.zeros_like(centres).scatter_add_(1, nearest.unsqueeze(-1).expand_as(xr), xr)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    inertia = torch.cdist(xr, centres).min(-1).values.pow(2).sum(-1)
    return centres[inertia.argmin()]


class MixtureMLP(nn.Module):
    r"""
    An :class:`~pyro_adv.nn.MLP` that is a mixture of ``num_components`` networks
    sharing their hidden layers: input column ``selector`` (standard-normal noise)
    picks component :math:`k = \lfloor K \Phi(x_s) \rfloor`, whose one-hot code is
    appended to the input (a first-layer bias per component) and whose output
    offset :math:`o_k` is added to the output (see the module docstring).

    :param int input_dim: input width (noise, and context for encoders).
    :param int output_dim: output width.
    :param int num_components: ``K >= 1``; with 1 this is a plain MLP.
    :param tuple hidden_dims: widths of the hidden layers.
    :param activation: hidden activation.
    :param int selector: the input column whose value picks the component (it must
        be ``N(0, 1)`` noise; default the last column).
    :param float spread: scale :math:`s` of the initial offsets (in output units).
    :param float output_scale: as :class:`~pyro_adv.nn.MLP`'s.
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        num_components,
        hidden_dims=(64, 64),
        activation="elu",
        selector=-1,
        spread=1.0,
        output_scale=1.0,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if isinstance(num_components, bool) or not isinstance(num_components, int):
            raise ValueError(
                f"MixtureMLP: num_components must be a positive integer, got {num_components!r}"
            )
        if num_components < 1:
            raise ValueError(
                f"MixtureMLP: num_components must be a positive integer, got {num_components!r}"
            )
        if not -input_dim <= selector < input_dim:
            raise ValueError(
                f"MixtureMLP: selector {selector} is not a column of an input of width {input_dim}"
            )
        if not spread >= 0:
            raise ValueError(f"MixtureMLP: spread must be non-negative, got {spread!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.num_components = num_components
        self.selector = selector
        extra = num_components if num_components > 1 else 0
        self.net = MLP(
            input_dim + extra,
            output_dim,
            hidden_dims,
            activation,
            output_scale=output_scale,
            device=device,
            dtype=dtype,
        )
        if num_components > 1:
            p = self.net.net[0].weight
            # antithetic pairs +-s v_j: the components start on opposite sides
            half = torch.randn(
                (num_components + 1) // 2, output_dim, dtype=p.dtype, device=p.device
            )
            offsets = torch.cat([half, -half])[:num_components] * spread
            self.offsets = nn.Parameter(offsets.to(p.device))
        else:
            self.offsets = None

    @property
    def use_averages(self):
        """Sample with the weight averages an objective keeps (see :mod:`pyro_adv.nn.averaging`)."""
        return self.net.use_averages

    @use_averages.setter
    def use_averages(self, value):
        self.net.use_averages = value

    def component(self, x):
        """The component index of each input row."""
        return component_index(x[..., self.selector], self.num_components)

    def forward(self, x, component=None):
        """
        :param torch.Tensor x: inputs, shape ``batch + (input_dim,)``.
        :param torch.Tensor component: optional component indices (integers in
            ``[0, K)``, broadcastable to ``batch``) drawn elsewhere, e.g. from learned
            mixture weights (:class:`~pyro_adv.infer.autoguide.AutoImplicit`); by
            default the selector column picks the component (equal weights).
        """
        if self.num_components == 1:
            return self.net(x)
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"MixtureMLP: expected inputs with {self.input_dim} features, "
                f"got shape {tuple(x.shape)}"
            )
        if component is None:
            k = self.component(x)
        else:
            k = torch.as_tensor(component, device=x.device).long()
            k = k.expand(torch.broadcast_shapes(k.shape, x.shape[:-1]))
            x = x.expand(k.shape + x.shape[-1:])
        dtype = self.net.net[0].weight.dtype
        code = nn.functional.one_hot(k, self.num_components).to(dtype)
        offsets = averaged_value(self.offsets) if self.use_averages else self.offsets
        return self.net(torch.cat([x.to(dtype), code], -1)) + offsets[k]
