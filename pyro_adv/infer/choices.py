r"""
Score-function gradients for a guide's discrete, non-reparameterized choices: the
component of a mixture with learned weights, drawn at an auxiliary ``Categorical``
site (:class:`~pyro_adv.infer.autoguide.AutoImplicit`) or inside an encoder's draw
(:class:`~pyro_adv.nn.ImplicitEncoder`,
:meth:`~pyro_adv.distributions.ImplicitDistribution.choice_log_prob`). Their
gradient is the score function (Williams 1992)

.. math:: \nabla\,\mathbb{E}_{q(k)}[f] = \mathbb{E}\big[(f - b)\,\nabla \log q(k)\big],

with :math:`f` the draw's own term of the objective and :math:`b` a baseline that
does not depend on the draw (:func:`leave_one_out`).
"""

import warnings

from pyro.poutine.util import site_is_subsample

from pyro_adv.distributions.implicit import unwrap
from pyro_adv.infer.util import flat_features, particle_sum

__all__ = [
    "auxiliary_choice_sites",
    "auxiliary_score",
    "check_choices_reported",
    "choice_log_prob",
    "group_choice_score",
    "leave_one_out",
]


def auxiliary_choice_sites(guide_trace, latents):
    """
    The guide's auxiliary sample sites that are drawn, not reparameterized, and not
    model latents (e.g. AutoImplicit's ``_<name>_component``): the sites whose
    parameters only a score function trains. Observed sites (a guide-side
    ``pyro.factor``) and subsample sites are not choices.
    """
    return [
        (name, site)
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and name not in latents
        and not site["is_observed"]
        and not site_is_subsample(site)
        and site["infer"].get("is_auxiliary")
        and not getattr(site["fn"], "has_rsample", True)
    ]


def auxiliary_score(guide_trace, latents, nesting):
    r"""
    :math:`\sum \log q(k)` per particle over :func:`auxiliary_choice_sites`, or ``None``.
    """
    score = None
    for _, site in auxiliary_choice_sites(guide_trace, latents):
        term = particle_sum(site["log_prob"], nesting, 0)
        score = term if score is None else score + term
    return score


def choice_log_prob(site):
    """
    :math:`\\log q(k)` of the choice behind a guide site's draw, with the site's batch
    shape (:meth:`~pyro_adv.distributions.ImplicitDistribution.choice_log_prob`), or
    ``None``.
    """
    lookup = getattr(unwrap(site["fn"])[0], "choice_log_prob", None)
    return None if lookup is None else lookup(site["value"])


def group_choice_score(names, guide_trace, nesting):
    """
    The summed :func:`choice_log_prob` of the sites ``names`` in the padded layout
    (``nesting`` batch dims and one feature column), or ``None`` when none has one.
    """
    score = None
    for name in names:
        term = choice_log_prob(guide_trace.nodes[name])
        if term is None:
            continue
        term = flat_features(term.unsqueeze(-1), 1, nesting)
        score = term if score is None else score + term
    return score


def leave_one_out(f):
    r"""
    ``f`` minus the mean of the other entries (an unbiased baseline: the others'
    draws are independent of this one's choice), over the entries' spread. Dividing
    by a positive number per step leaves the fixed points (equal
    :math:`\mathbb{E}_{q_k}[f]` over the components) where they are, and keeps the
    gradient's scale steady: early in a fit :math:`f` spreads over thousands of
    nats, and Adam's second moment would remember that for a thousand steps,
    freezing the weights long before the components settle.
    """
    n = f.numel()
    if n < 2:
        return f - f  # one entry: no baseline without bias; no score gradient
    advantage = (n * f - f.sum()) / (n - 1)
    return advantage / f.std().clamp_min(1e-6)


def check_choices_reported(objective, guide_trace, latents):
    """
    Warns (once per objective) when a latent is drawn by an encoder with learned
    mixture weights whose draws report no choice (a wrapper that does not pass the
    encoder's noise through): its weights would silently stay where they started.
    """
    if objective.__dict__.get("_warned_unreported_choices"):
        return
    for name in latents:
        site = guide_trace.nodes[name]
        encoder = getattr(unwrap(site["fn"])[0], "encoder", None)
        if getattr(encoder, "learn_weights", False) and choice_log_prob(site) is None:
            objective._warned_unreported_choices = True
            warnings.warn(
                f"{type(objective).__name__}: guide site '{name}' is drawn by an "
                f"{type(encoder).__name__} with learned mixture weights, but its draws do "
                "not report their component (a distribution wrapping the encoder's must "
                "call its generator on the noise it drew, unchanged); the weights will "
                "not learn. Pass learn_weights=False to the encoder to say so.",
                stacklevel=4,
            )
            return
