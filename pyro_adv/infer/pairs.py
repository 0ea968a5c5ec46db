r"""
The rows :math:`(x, z)` that :class:`~pyro_adv.infer.Trace_ALI`'s discriminators see,
and the checks of what ALI pairs.

ALI (Dumoulin et al. 2016) compares two joint distributions of observations and
latents: :math:`p(z)\, p(x \mid z)` (the model run forward) and :math:`p_D(x)\, q(z
\mid x)` (the data with the guide's latents). One group of latents gives one
discriminator, and each of its rows is one pair:

* a **global** group (latents outside every plate) pairs one draw of the latents with
  *all* observed values flattened, one row per particle;
* a **plate-local** group pairs each plate element's latents with the observed values
  of the same element (and the global latents drawn with them), one row per element
  and particle.
"""

import warnings
from typing import Callable, NamedTuple, Optional

import torch
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch.distributions import biject_to

from pyro_adv.distributions.implicit import unwrap
from pyro_adv.infer.choices import auxiliary_choice_sites
from pyro_adv.infer.util import (
    context_features,
    depends_on_parameters,
    flat_features,
    join_features,
    latent_features,
    particle_sum,
)

__all__ = [
    "PairLayout",
    "check_pathwise_guide",
    "fit_regression_bases",
    "fit_regression_bases_forward",
    "observed_sites",
    "pair_latents",
    "pair_rows",
]


class PairLayout(NamedTuple):
    """How one evaluation lays out its pairs."""

    #: Pyro's bound on plate nesting (the particle plate included)
    nesting: int
    #: particles (draws) per evaluation, at least 1
    lead: int
    #: whether particles are vectorized under a leftmost plate
    particles: bool
    #: the objective's ``context_transform`` of observed features (or ``None``)
    context_transform: Optional[Callable]
    #: the objective's name, for error messages
    owner: str


def observed_sites(model_trace, owner):
    """
    The names of the observed sites ALI pairs with latents (subsample and factor
    sites left out: a factor is warned about, since ALI scores no density).

    :raises ValueError: when the model observes nothing.
    """
    observed, factors = [], []
    for site_name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        if site_is_factor(site):
            factors.append(site_name)
            continue
        observed.append(site_name)
    if factors:
        warnings.warn(
            f"{owner} ignores pyro.factor statements {factors}: it compares simulated "
            "and observed pairs and scores no density"
        )
    if not observed:
        raise ValueError(
            f"{owner}: the model has no observed site. Trace_ALI pairs observed values "
            "with latents: pass the data to the model (svi.step(data)) and observe it "
            "with pyro.sample(name, fn, obs=data)."
        )
    return observed


def check_pathwise_guide(guide_trace, latents, owner):
    """Refuses a guide site with trained parameters and no ``rsample``: ALI trains the
    guide through its samples."""
    for site_name in latents:
        fn = guide_trace.nodes[site_name]["fn"]
        if not getattr(fn, "has_rsample", False) and depends_on_parameters(fn):
            raise ValueError(
                f"{owner}: guide site '{site_name}' ({type(unwrap(fn)[0]).__name__}) is not "
                "reparameterizable; Trace_ALI trains the guide through its samples "
                "(pathwise gradients)."
            )
    for site_name, site in auxiliary_choice_sites(guide_trace, latents):
        fn = site["fn"]
        if depends_on_parameters(fn):
            # e.g. AutoImplicit's learned mixture weights, drawn once per particle (a
            # global choice): ALI trains an encoder's per-datum choices, not these;
            # they would silently stay where they started
            warnings.warn(
                f"{owner} does not train the parameters of the guide's auxiliary site "
                f"'{site_name}' ({type(unwrap(fn)[0]).__name__}: no pathwise gradient); "
                "they keep their initial values (for AutoImplicit's mixture weights: equal "
                "weights). Pass learn_weights=False to say so, or train with TraceAVB_ELBO.",
                stacklevel=2,
            )


def pair_latents(group, nodes, guide_trace, model_trace, simulated, layout):
    """
    The group's unconstrained latents in the padded layout (one row per particle for a
    global group): from the simulation ``nodes`` when ``simulated``, else the guide's.
    """
    if simulated:  # simulated values, on the supports of the simulated sites
        parts, _ = latent_features(group.names, nodes, nodes, layout.nesting)
    else:
        parts, _ = latent_features(group.names, guide_trace, model_trace, layout.nesting)
    u = join_features(*parts)
    if not group.is_local:
        u = u.reshape(layout.lead, -1)
    return u


def all_observed(nodes, observed, dtype, layout):
    """All observed values flattened, one row per particle."""
    lead, parts = layout.lead, []
    for site_name in observed:
        site = nodes.nodes[site_name]
        value = flat_features(site["value"], site["fn"].event_dim, layout.nesting)
        first = value.shape[0] if lead > 1 else 1
        parts.append(value.reshape(first, -1).to(dtype).expand(lead, -1))
    return torch.cat(parts, -1)


def pair_rows(group, u, nodes, observed, globals_u, layout, score=None):
    """
    The rows ``(x, z)`` of one group: observed features (with the global latents
    ``globals_u`` for a plate-local group) and the latents ``u``; with ``score`` (the
    log-probability of the draws' discrete choices in the padded layout, one
    feature column) ``(x, z, score)``, one score per row.

    :raises ValueError: for plate-local latents that no observed site shares a plate with.
    """
    nesting, transform = layout.nesting, layout.context_transform
    if not group.is_local:
        x = all_observed(nodes, observed, u.dtype, layout)
        x = x if transform is None else transform(x)
        if score is None:
            return x, u
        return x, u, particle_sum(score.squeeze(-1), nesting, 0 if layout.particles else None)
    context = context_features(nodes, group, nesting, 0 if layout.particles else None)
    if context is None:
        raise ValueError(
            f"{layout.owner}: no observed site shares the plates "
            f"{[f.name for f in group.frames]} of latents {group.names}; Trace_ALI pairs "
            "plate-local latents with the observations of their plate element."
        )
    context = context.to(u.dtype)
    parts = [context if transform is None else transform(context)]
    if globals_u is not None:
        shape = (globals_u.shape[0],) + (1,) * (nesting - 1) if nesting else ()
        parts.append(globals_u.reshape(shape + globals_u.shape[-1:]))
    width = u.shape[-1]
    if score is not None:
        u = join_features(u, score.to(u.dtype))
    x = join_features(*parts, u)
    x = x.reshape(-1, x.shape[-1])
    x, z = x[:, : x.shape[-1] - u.shape[-1]], x[:, x.shape[-1] - u.shape[-1] :]
    if score is None:
        return x, z
    return x, z[:, :width], z[:, width]


def fit_regression_bases(guide_trace, model_trace, real_nodes, latents, observed):
    r"""
    Fits the regression base of every encoder that asks for one
    (:meth:`~pyro_adv.nn.ImplicitEncoder.fit_regression_base`) on the simulated
    pairs of this step, once: for each latent drawn by an encoder whose context is
    an observed site's value (as :func:`~pyro_adv.infer.autoguide.amortized_guide`
    passes it), the simulated values of that site are the contexts and the
    simulated latents, mapped to the unconstrained space of the site's support,
    the targets. An encoder whose context is anything else (a summary, a
    transformed copy), or whose model has parameters being trained (full ALI: the
    first simulations come from an untrained decoder), is left as it is.

    :returns: whether any encoder changed (the guide's draws of this step are stale).
    :rtype: bool
    """
    changed = False
    for name in latents:
        base = unwrap(guide_trace.nodes[name]["fn"])[0]
        encoder = getattr(base, "encoder", None)
        if not getattr(encoder, "regression_base_pending", False):
            continue
        context = base.context
        for obs in observed:
            data = model_trace.nodes[obs]["value"]
            if data.numel() != context.numel() or not torch.equal(
                data.reshape(context.shape).to(context.dtype), context
            ):
                continue
            simulated = real_nodes.nodes[obs]["value"]
            if simulated.requires_grad:
                # the model is being trained (full ALI): its first simulations would
                # fix the base on an untrained decoder
                break
            # in the unconstrained space the encoder draws in (a guide maps its draws
            # onto the support with biject_to, as AutoImplicit and the sbi tasks do)
            z = biject_to(guide_trace.nodes[name]["fn"].support).inv(
                real_nodes.nodes[name]["value"]
            )
            # fit_regression_base takes rows and refuses mismatched or too few of them
            changed |= encoder.fit_regression_base(simulated, z)
            break
    return changed


def regression_bases_pending(guide_trace, latents):
    """Whether any latent is drawn by an encoder whose regression base is not fixed yet."""
    return any(
        getattr(
            getattr(unwrap(guide_trace.nodes[n]["fn"])[0], "encoder", None),
            "regression_base_pending",
            False,
        )
        for n in latents
    )


def fit_regression_bases_forward(
    model, guide_trace, model_trace, latents, args, kwargs, owner, vectorize
):
    r"""
    :func:`fit_regression_bases` for an objective that does not simulate pairs itself
    (:class:`~pyro_adv.infer.TraceAVB_ELBO`): the model is run forward once, without
    gradients, on this step's plates, and its prior latents and simulated
    observations are the pairs. Skipped when the model has parameters (a decoder
    still being trained: the base would be fixed on its first, untrained
    simulations).

    :returns: whether any encoder changed.
    :rtype: bool
    """
    from pyro_adv.infer.simulation import forward_simulations

    if not regression_bases_pending(guide_trace, latents):
        return False
    if any(site["type"] == "param" for site in model_trace.nodes.values()):
        return False
    observed = [
        n
        for n, site in model_trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
    ]
    with torch.no_grad():
        real_nodes = forward_simulations(
            model,
            guide_trace,
            model_trace,
            observed + list(latents),
            args,
            kwargs,
            vectorize,
            owner,
        )
    return fit_regression_bases(guide_trace, model_trace, real_nodes, latents, observed)
