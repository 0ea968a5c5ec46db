"""Plumbing shared by the diagnostics: seeding, vectorized draws, per-draw sums."""

import contextlib
import random

import numpy as np
import pyro
import torch
from pyro.poutine.util import site_is_subsample

from pyro_adv.distributions.implicit import ImplicitDensityError

__all__ = [
    "DRAW_PLATE",
    "as_numpy",
    "guess_max_plate_nesting",
    "latent_and_observed_sites",
    "per_draw",
    "per_draw_log_prob",
    "seeded",
    "vectorized",
]

#: name of the plate that vectorizes independent draws
DRAW_PLATE = "_diagnostic_draws"


@contextlib.contextmanager
def seeded(seed):
    """
    Runs the block with torch, numpy and Python seeded by ``seed`` and restores
    the previous random states afterwards, so a diagnostic with a seed neither
    depends on nor perturbs the caller's random stream. ``None``: no-op.
    """
    if seed is None:
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(int(seed))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def as_numpy(x, name="samples", ndim=None):
    """``x`` (tensor or array-like) as a float64 numpy array, with an optional rank check."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {x.shape}")
    return x


def latent_and_observed_sites(trace):
    """Names of the non-observed and observed sample sites of a model trace, in order."""
    latent, observed = [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        (observed if site["is_observed"] else latent).append(name)
    return latent, observed


def guess_max_plate_nesting(*traces):
    """The deepest vectorized plate nesting seen in ``traces``."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
                nesting = max([nesting] + dims)
    return nesting


def vectorized(fn, num_draws, max_plate_nesting):
    """``fn`` run under an outermost plate of ``num_draws`` independent draws."""

    def wrapped(*args, **kwargs):
        with pyro.plate(DRAW_PLATE, num_draws, dim=-max_plate_nesting - 1):
            return fn(*args, **kwargs)

    return wrapped


def per_draw(value, num_draws, shape):
    """
    A value of a vectorized trace (draw dim leftmost, padding dims of size 1) as
    ``(num_draws,) + shape``, where ``shape`` is the value's shape in one draw.
    """
    numel = int(np.prod(shape, dtype=np.int64))
    if value.numel() == num_draws * numel:
        return value.reshape((num_draws,) + tuple(shape))
    if value.numel() == numel:  # the same in every draw (e.g. a site that ignores its plate)
        return value.reshape(shape).expand((num_draws,) + tuple(shape))
    raise ValueError(
        f"cannot arrange a value of shape {tuple(value.shape)} as {num_draws} draws of "
        f"shape {tuple(shape)}; make every batch dimension a pyro.plate"
    )


def _sum_over_draw(log_prob, draw_dim, num_draws):
    if log_prob.dim() < -draw_dim or log_prob.shape[draw_dim] == 1:
        return log_prob.sum().expand(num_draws)
    return log_prob.movedim(draw_dim, 0).reshape(num_draws, -1).sum(-1)


def per_draw_log_prob(trace, num_draws, max_plate_nesting, sites=None):
    """
    ``sum_site log p(site)`` of a vectorized trace, one total per draw, with
    Pyro's scales and masks applied. Returns ``None`` when a site is implicit
    (has no density).

    :rtype: torch.Tensor of shape ``(num_draws,)`` or None
    """

    def site_filter(name, site):
        return not site_is_subsample(site) and (sites is None or name in sites)

    try:
        trace.compute_log_prob(site_filter)
    except ImplicitDensityError:
        return None
    except ValueError as e:
        # Pyro re-raises a site's error as ValueError with the site name attached
        if isinstance(e.__cause__, ImplicitDensityError) or "is implicit" in str(e):
            return None
        raise
    total = None  # made from the first site's, on its device and dtype
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_filter(name, site):
            lp = _sum_over_draw(site["log_prob"].detach(), -max_plate_nesting - 1, num_draws)
            total = lp if total is None else total + lp
    return torch.zeros(num_draws) if total is None else total
