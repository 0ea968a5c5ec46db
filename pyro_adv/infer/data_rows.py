"""
Observed sites as the rows a :class:`~pyro_adv.infer.Trace_GAN` discriminator sees.

A GAN compares examples of the data with examples of the model's simulation. In a
Pyro model an *example* is one element of the outermost :class:`~pyro.plate` over
the observed sites (the whole data set when no plate encloses them): everything
inside it, inner plates and event dims, is flattened into the example's features.
Every value is laid out as ``(particles, plate elements, features)``; a site's
``mask`` drops elements (an element is kept only if all of it is).
"""

from typing import NamedTuple

import torch

from pyro_adv.infer.util import pad_batch, plate_frames

__all__ = ["RowLayout", "and_masks", "cat_rows", "row_mask", "site_rows"]


class RowLayout(NamedTuple):
    """How one evaluation lays out its rows."""

    #: Pyro's bound on plate nesting (the particle plate included)
    nesting: int
    #: whether particles are vectorized under a leftmost plate
    particles: bool
    #: the objective's name, for error messages
    owner: str


class _EventDim:
    """Stands in for a site's distribution where only its event dim is read."""

    def __init__(self, event_dim):
        self.event_dim = event_dim


def site_rows(site, value, site_name, outer, side, layout):
    """
    ``value`` of ``site`` as ``(particles, plate elements, features)``: the elements of
    the plate ``outer`` (a ``CondIndepStackFrame``, or ``None``: one element) are the
    examples, everything inside them is flattened into features.

    :raises ValueError: for a batch dimension that no plate declares, naming the site.
    """
    owner, fn = layout.owner, site["fn"]
    try:
        value = pad_batch(value, fn.event_dim, layout.nesting)
    except ValueError:
        raise ValueError(
            f"{owner}: {side} value of site '{site_name}' has shape "
            f"{tuple(value.shape)}, with more batch dims than plates; declare every "
            "batch dimension with pyro.plate (or move it into the event with .to_event)"
        ) from None
    if not layout.particles:
        value = value.unsqueeze(0)
    batch_dims = value.dim() - fn.event_dim
    plate_positions = {batch_dims + f.dim for f in plate_frames(site)}
    for pos in range(1, batch_dims):
        if value.shape[pos] > 1 and pos not in plate_positions:
            raise ValueError(
                f"{owner}: site '{site_name}' has a batch dimension of size "
                f"{value.shape[pos]} at dim {pos - batch_dims} that no pyro.plate declares "
                f"(value shape {tuple(value.shape[1:])}); wrap it in a plate or use .to_event"
            )
    value = value.reshape(value.shape[:batch_dims] + (-1,))
    if outer is None:
        return value.reshape(value.shape[0], 1, -1)
    outer_pos = batch_dims + outer.dim
    order = [0, outer_pos] + [d for d in range(1, batch_dims + 1) if d != outer_pos]
    value = value.permute(order)
    return value.reshape(value.shape[0], value.shape[1], -1)


def row_mask(site, site_name, outer, rows, layout):
    """The rows of ``site`` its mask keeps (shaped like ``rows.shape[:2]``), or ``None``."""
    mask = site["mask"]
    if mask is None or mask is True:
        return None
    if mask is False:
        mask = torch.zeros((), dtype=torch.bool, device=rows.device)
    mask = mask.expand(site["fn"].batch_shape).unsqueeze(-1)
    # a mask is an extra one-feature site: an element is kept only if all of it is
    stand_in = {"fn": _EventDim(1), "cond_indep_stack": site["cond_indep_stack"]}
    keep = site_rows(stand_in, mask, site_name, outer, "mask", layout)
    return keep.all(-1).expand(rows.shape[:2])


def and_masks(a, b):
    """``a & b`` where ``None`` keeps everything."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def cat_rows(parts):
    """Row tensors ``(particles, elements, features)`` joined along features (broadcast)."""
    shape = torch.broadcast_shapes(*(p.shape[:2] for p in parts))
    return torch.cat([p.expand(shape + p.shape[2:]) for p in parts], -1)
