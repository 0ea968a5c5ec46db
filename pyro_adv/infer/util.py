"""Trace plumbing shared by the adversarial objectives.

Latent sites are gathered into *groups*, each seen by one discriminator:

* the sites of one joint implicit draw (:class:`~pyro_adv.distributions.ImplicitValue`
  with the same ``joint``, as :class:`~pyro_adv.infer.autoguide.AutoImplicit` emits)
  form one group whose whole flattened value is discriminated;
* other implicit sites are grouped by the plates they live in: sites outside every
  plate form the *global* group, seen as ``T(z)``; sites inside plates form a *local*
  group seen as ``T(x_i, z_i)``, where ``x_i`` are the observed values that share
  the plates (the plate declares the ``z_i`` conditionally independent given ``x_i``).

Tensors are handled in a *padded* layout: batch dims left-padded to
``max_plate_nesting`` (the particle plate included), then one flat feature dim.
"""

import re
from collections import OrderedDict

import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from torch.distributions.transforms import (
    ComposeTransform,
    IndependentTransform,
    identity_transform,
)

from pyro_adv.distributions.implicit import ImplicitValue, is_implicit, unwrap

__all__ = [
    "group_value",
    "upstream_value",
    "DISCRIMINATOR_PREFIX",
    "PARTICLE_PLATE",
    "LatentGroup",
    "check_latents",
    "group_implicit_sites",
    "is_discriminator_param",
    "depends_on_parameters",
    "pad_batch",
    "plate_frames",
    "flat_features",
    "join_features",
    "latent_features",
    "module_key",
    "particle_sum",
    "per_particle_features",
    "unconstrained",
]

PARTICLE_PLATE = "num_particles_vectorized"


#: Default prefix of discriminator modules in the param store.
DISCRIMINATOR_PREFIX = "discriminator"


def is_discriminator_param(name, prefix=DISCRIMINATOR_PREFIX):
    """
    Whether a param-store name belongs to a discriminator, for per-player
    optimizer settings through Pyro's per-parameter callable::

        def per_param(name):
            return {"lr": 1e-3 if is_discriminator_param(name) else 3e-4}
        svi = SVI(model, guide, pyro.optim.Adam(per_param), loss=TraceAVB_ELBO())
    """
    return name.startswith(prefix)


def plate_frames(site):
    """The vectorized plate frames of a site, the particle plate excluded."""
    return tuple(f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE)


def depends_on_parameters(fn):
    """Whether a distribution (``to_event``/``mask`` stripped) holds tensors with gradients."""
    base = unwrap(fn)[0]
    return any(torch.is_tensor(v) and v.requires_grad for v in vars(base).values())


def pad_batch(value, event_dim, nesting):
    """Left-pads the batch dims of ``value`` to ``nesting`` dims (event dims untouched)."""
    batch_dim = value.dim() - event_dim
    if batch_dim > nesting:
        raise ValueError(
            f"a value of shape {tuple(value.shape)} has {batch_dim} batch dims, more than "
            f"max_plate_nesting={nesting}; declare every batch dimension with pyro.plate"
        )
    return value.reshape((1,) * (nesting - batch_dim) + value.shape)


def flat_features(value, event_dim, nesting):
    """``value`` in padded layout: ``nesting`` batch dims then its event flattened to one dim."""
    value = pad_batch(value, event_dim, nesting)
    return value.reshape(value.shape[:nesting] + (-1,))


def particle_sum(value, nesting, particle_dim):
    """
    Sums a padded batch tensor (``nesting`` dims, no feature dim) over all dims but
    the particle dim (an index into the padded layout, ``None`` without particles);
    returns shape ``(num_particles,)`` (or ``(1,)``).
    """
    value = value.reshape((1,) * (nesting - value.dim()) + value.shape)
    if particle_dim is None:
        return value.sum().reshape(1)
    dims = [d for d in range(nesting) if d != particle_dim]
    return value.sum(dims) if dims else value


def unconstrained(guide_site, model_site):
    """
    The unconstrained value of a latent and ``log |dz/du|`` summed over its event
    dims, for the bijection onto the model site's support. AVB and ALI work in
    this space: the KL divergence is invariant under the bijection, and the
    discriminator sees an unbounded vector.

    :returns: ``(u, event_dim_of_u, log_abs_det_jacobian)``, the last ``None`` where
        the bijection is the identity (a real-valued latent: the Jacobian term is zero).
    """
    fn = model_site["fn"]
    z = guide_site["value"]
    event_dim = fn.event_dim
    transform = biject_to(fn.support)
    base = unwrap(guide_site["fn"])[0]
    u = None
    if isinstance(base, ImplicitValue) and base.unconstrained_value is not None:
        u = base.unconstrained_value
    if u is None:
        u = transform.inv(z)
    u_event_dim = event_dim + transform.inv.codomain.event_dim - transform.inv.domain.event_dim
    if _is_identity(transform):
        return u, u_event_dim, None
    ladj = transform.log_abs_det_jacobian(u, z)
    extra = event_dim - transform.codomain.event_dim
    if extra > 0:
        ladj = ladj.sum(tuple(range(-extra, 0)))
    return u, u_event_dim, ladj


def _is_identity(transform):
    # biject_to(real) is identity_transform; of real_vector an IndependentTransform of
    # an empty ComposeTransform
    if isinstance(transform, IndependentTransform):
        return _is_identity(transform.base_transform)
    if isinstance(transform, ComposeTransform):
        return all(_is_identity(part) for part in transform.parts)
    return transform is identity_transform


def latent_features(names, value_trace, support_trace, nesting):
    """
    The (x, z) feature building shared by AVB and ALI: each latent's unconstrained
    value (see :func:`unconstrained`; values read from ``value_trace``, supports
    from ``support_trace``) in the padded layout, and its ``log |dz/du|``.

    :returns: ``(parts, ladjs)``, two lists in the order of ``names`` (a ``None``
        log-Jacobian where the bijection is the identity).
    """
    parts, ladjs = [], []
    for name in names:
        u, u_event_dim, ladj = unconstrained(value_trace.nodes[name], support_trace.nodes[name])
        parts.append(flat_features(u, u_event_dim, nesting))
        ladjs.append(ladj)
    return parts, ladjs


def join_features(*parts):
    """The parts that are not ``None``, batch dims broadcast, joined on the feature dim."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(shape + p.shape[-1:]) for p in parts], -1)


def per_particle_features(parts):
    """Padded parts flattened to one row per particle (dim 0) and concatenated."""
    rows = max(p.shape[0] for p in parts)
    return torch.cat([p.expand((rows,) + p.shape[1:]).reshape(rows, -1) for p in parts], -1)


def group_value(group, guide_trace, model_trace, nesting):
    """
    A group's unconstrained value in the padded layout (particles on dim 0, one
    feature dim) and ``log |dz/du|`` in the same batch layout without the feature dim
    (scaled like the site, summed over plates). A joint group is one flat vector per
    particle: each site flattened over its own plates, never copied across another
    site's plates.
    """
    parts, ladjs = latent_features(group.names, guide_trace, model_trace, nesting)
    ladj = 0.0
    for site_name, site_ladj in zip(group.names, ladjs):
        if site_ladj is None:  # an identity bijection (a real-valued latent): zero
            continue
        site_ladj = site_ladj * guide_trace.nodes[site_name]["scale"]
        ladj = ladj + particle_sum(site_ladj, nesting, 0)
    if group.joint is not None:
        return per_particle_features(parts), ladj
    return join_features(*parts), ladj


def upstream_value(group, upstream, guide_trace, model_trace, nesting):
    """The ``upstream`` latents' unconstrained values laid out like the group's value
    (:func:`group_value`), or ``None`` when there are none."""
    if not upstream:
        return None
    parts, _ = latent_features(upstream, guide_trace, model_trace, nesting)
    if group.joint is not None:
        return per_particle_features(parts)
    return join_features(*parts)


def module_key(key):
    """
    A group key as a discriminator's name in a :class:`torch.nn.ModuleDict`: module
    names cannot contain dots, and must not shadow the dict's own attributes (a
    plate named ``items`` or ``keys``). Idempotent.
    """
    key = re.sub(r"\W", "_", key)
    if hasattr(torch.nn.ModuleDict, key):
        key += "_"
    return key


class LatentGroup:
    """Implicit latent sites discriminated together."""

    def __init__(self, key, frames, joint=None):
        self.key = key
        self.frames = frames  # plate frames (the particle plate excluded)
        self.joint = joint  # name of a joint implicit draw, if any
        self.names = []

    @property
    def is_local(self):
        return self.joint is None and bool(self.frames)

    def __repr__(self):
        return f"LatentGroup({self.key!r}, sites={self.names})"


def check_latents(model_trace, guide_trace, objective_name):
    """
    Validates that every latent of the model is continuous and sampled by the
    guide; returns the names of the model's latent sites.
    """
    latents = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site["infer"].get("_do_not_score") or site["infer"].get("is_auxiliary"):
            continue
        fn = site["fn"]
        if getattr(fn.support, "is_discrete", False):
            raise ValueError(
                f"{objective_name}: latent site '{name}' is discrete ({type(fn).__name__}); "
                "adversarial objectives need continuous latents. Marginalize it out, or "
                "use pyro.infer.TraceEnum_ELBO for discrete latents."
            )
        if name not in guide_trace.nodes:
            raise ValueError(
                f"{objective_name}: the model's latent site '{name}' is not sampled by the "
                "guide; every latent must have a guide site of the same name."
            )
        latents.append(name)
    return latents


def group_implicit_sites(guide_trace, latents, implicit_only=True):
    """
    Returns ``OrderedDict[key, LatentGroup]`` of the guide's implicit latent sites
    (of every latent with ``implicit_only=False``, as ALI, which scores no density,
    needs): joint draws together, others by their plates (``"global"`` outside all).
    """
    groups = OrderedDict()
    for name in latents:
        site = guide_trace.nodes[name]
        if implicit_only and not is_implicit(site["fn"]):
            continue
        base = unwrap(site["fn"])[0]
        frames = plate_frames(site)
        if isinstance(base, ImplicitValue) and base.joint is not None:
            key, joint = f"joint_{base.joint}", base.joint
        else:
            key = "global" if not frames else "_".join(f.name for f in frames)
            joint = None
        group = groups.setdefault(key, LatentGroup(key, frames, joint))
        group.names.append(name)
    return groups


def context_features(model_trace, group, nesting, particle_dim):
    """
    The observed values that share the group's plates, one feature vector per
    plate element (padded layout), or ``None`` when there are none. Observed
    sites in deeper plates are folded into the features.
    """
    if not group.is_local:
        return None
    group_names = {f.name for f in group.frames}
    parts = []
    for _, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        frames = plate_frames(site)
        names = {f.name for f in frames}
        if not group_names <= names:
            continue
        value = pad_batch(site["value"], site["fn"].event_dim, nesting)
        value = value.reshape(value.shape[:nesting] + (-1,))
        # fold deeper plates (not in the group) into the features
        extra = sorted(nesting + f.dim for f in frames if f.name not in group_names)
        if extra:
            keep = [d for d in range(nesting) if d not in extra]
            value = value.permute(keep + extra + [nesting])
            shape = value.shape[: len(keep)]
            value = value.reshape(shape + (-1,))
            for d in extra:
                value = value.unsqueeze(d)
        parts.append(
            value.to(torch.get_default_dtype()) if not value.is_floating_point() else value
        )
    if not parts:
        return None
    shape = torch.broadcast_shapes(*(p.shape[:nesting] for p in parts))
    return torch.cat([p.expand(shape + p.shape[nesting:]) for p in parts], -1)


def upstream_sites(guide_trace, group, latents):
    """
    The latents a group's guide density may be conditioned on, in guide order:
    every latent outside the group that the guide sampled before the group's first
    site and whose plates are among the group's own (for a joint group, every
    earlier latent). A :class:`~pyro.plate` declares its draws conditionally
    independent given what was sampled outside it, so these (with the observed
    values in the group's plates) are all a plate-local draw can depend on.
    """
    first = group.names[0]
    members = set(group.names)
    frames = {f.name for f in group.frames}
    latents = set(latents)
    names = []
    for name, site in guide_trace.nodes.items():
        if name == first:
            break
        if name not in latents or name in members or site["type"] != "sample":
            continue
        site_frames = {f.name for f in plate_frames(site)}
        if group.joint is not None or site_frames <= frames:
            names.append(name)
    return names


def stack_traces(traces, nesting, joint_values=True):
    """
    Merges the traces of sequential single-particle runs into one trace in the
    vectorized layout: each latent site's ``value`` and each site's ``log_prob``
    (where computed) is padded to ``nesting - 1`` batch dims and stacked on a new leftmost
    particle dim. The other entries (``fn``, plates, scale, mask) are the first
    run's; :class:`~pyro_adv.distributions.ImplicitValue` sites get a stacked
    ``ImplicitValue`` so their joint identity and unconstrained values survive.
    """
    from pyro.poutine import Trace

    merged = Trace()
    first = traces[0]
    for name, site in first.nodes.items():
        node = dict(site)
        if site["type"] == "sample" and not site_is_subsample(site):
            event_dim = site["fn"].event_dim
            if not site["is_observed"]:  # data are the same in every run
                node["value"] = torch.stack(
                    [pad_batch(t.nodes[name]["value"], event_dim, nesting - 1) for t in traces]
                )
            if "log_prob" in site:
                node["log_prob"] = torch.stack(
                    [pad_batch(t.nodes[name]["log_prob"], 0, nesting - 1) for t in traces]
                )
            base = unwrap(site["fn"])[0]
            if joint_values and isinstance(base, ImplicitValue):
                u = None
                if base.unconstrained_value is not None:
                    u = torch.stack(
                        [
                            pad_batch(
                                unwrap(t.nodes[name]["fn"])[0].unconstrained_value,
                                base.unconstrained_value.dim() - len(base.batch_shape),
                                nesting - 1,
                            )
                            for t in traces
                        ]
                    )
                node["fn"] = ImplicitValue(
                    node["value"], event_dim=event_dim, joint=base.joint, unconstrained_value=u
                )
        merged.add_node(name, **node)
    return merged


def select_particle(value, event_dim, particle, nesting, frames):
    """
    Particle ``particle`` of a site's value in the vectorized layout, with the
    leading batch dims a single-particle run would not have dropped: the value a
    model that does not broadcast over particles expects.
    """
    value = pad_batch(value, event_dim, nesting)[particle]
    keep = max([-f.dim for f in frames], default=0)
    while value.dim() - event_dim > keep and value.shape[0] == 1:
        value = value[0]
    return value
