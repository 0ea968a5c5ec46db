r"""
Export draws of a trained guide to ArviZ, so ``az.summary``, ``az.plot_pair``,
``az.plot_posterior`` and friends work on implicit posteriors.

Works with ArviZ 0.2x (``InferenceData``) and ArviZ 1.x (``xarray.DataTree``).
"""

import warnings

import torch
from pyro import poutine

from pyro_adv.diagnostics._util import (
    guess_max_plate_nesting,
    latent_and_observed_sites,
    per_draw,
    per_draw_log_prob,
    seeded,
    vectorized,
)

__all__ = ["arviz_major_version", "to_inference_data"]


def arviz_major_version():
    """The installed ArviZ's major version (0 for the 0.x series)."""
    import arviz as az

    return int(az.__version__.split(".")[0])


def _site_dims(name, site):
    """Dimension names of one draw of a site: plate names for plate dims."""
    shape = tuple(site["value"].shape)
    event_dim = site["fn"].event_dim if hasattr(site["fn"], "event_dim") else 0
    batch_ndim = len(shape) - event_dim
    plates = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    dims = []
    for i, size in enumerate(shape):
        frame = plates.get(i - batch_ndim) if i < batch_ndim else None
        if frame is not None and frame.size == size:
            dims.append(frame.name)
        else:
            dims.append(f"{name}_dim_{i}")
    return dims


def _to_numpy(t, num_chains):
    a = t.detach().cpu().numpy()
    return a.reshape((num_chains, a.shape[0] // num_chains) + a.shape[1:])


#: the plate with which Pyro's ELBOs vectorize particles
_PARTICLE_PLATE = "num_particles_vectorized"


class _Recorder:
    """A guide wrapper that keeps the traces of its calls."""

    def __init__(self, guide):
        self.guide = guide
        self.traces = []
        # the objective sees the user's guide behind the wrapper (its reuse check)
        self.__wrapped__ = guide

    def __call__(self, *args, **kwargs):
        handler = poutine.trace(self.guide)
        result = handler(*args, **kwargs)
        self.traces.append(handler.msngr.trace)
        return result

    def particle_trace(self, num_particles):
        """
        The trace of the call vectorized over ``num_particles`` particles, and the
        nesting below its particle plate (the plate sits at ``-(nesting + 1)``).
        """
        # an objective may call the guide more than once (shape guessing, extra draws
        # for moment estimates); the scored draws are those in the particle plate
        for trace in reversed(self.traces):
            for site in trace.nodes.values():
                if site["type"] != "sample":
                    continue
                for f in site["cond_indep_stack"]:
                    if f.name == _PARTICLE_PLATE and f.size == num_particles:
                        # the model must be vectorized at the same dim, or particle and
                        # draw dims mix (every draw then got the same lp)
                        return trace, -f.dim - 1
        raise ValueError(
            "could not find the objective's particle-vectorized guide draws; "
            "to_inference_data(objective=...) needs an objective with vectorized particles"
        )


def _draw(model, guide, args, kwargs, num_samples, nesting, parallel, objective=None):
    """
    ``num_samples`` joint draws: model-site values ``(num_samples,) + shape`` and
    per-draw ``log p(x, z)``, ``log q(z | x)`` (``None`` when implicit) and, with an
    objective, its estimated importance log-weights.
    """
    log_w = None
    if objective is not None:
        recorder = _Recorder(guide)
        log_w = objective.importance_log_weights(
            model, recorder, *args, num_samples=num_samples, **kwargs
        ).reshape(-1)
        if log_w.numel() != num_samples:
            raise ValueError(
                f"{type(objective).__name__}.importance_log_weights returned "
                f"{log_w.numel()} weights for {num_samples} draws"
            )
        guide_trace, nesting = recorder.particle_trace(num_samples)
        guide_traces = [guide_trace]
        parallel = True
    elif parallel:
        guide_traces = [
            poutine.trace(vectorized(guide, num_samples, nesting)).get_trace(*args, **kwargs)
        ]
    else:
        guide_traces = [poutine.trace(guide).get_trace(*args, **kwargs) for _ in range(num_samples)]
    if parallel:
        model_traces = [
            poutine.trace(
                poutine.replay(vectorized(model, num_samples, nesting), guide_traces[0])
            ).get_trace(*args, **kwargs)
        ]
        log_p = per_draw_log_prob(model_traces[0], num_samples, nesting)
        log_q = (
            None
            if objective is not None
            else per_draw_log_prob(guide_traces[0], num_samples, nesting)
        )
    else:
        model_traces = [
            poutine.trace(poutine.replay(model, g)).get_trace(*args, **kwargs) for g in guide_traces
        ]
        log_p = torch.stack([per_draw_log_prob(t, 1, nesting)[0] for t in model_traces])
        log_qs = [per_draw_log_prob(g, 1, nesting) for g in guide_traces]
        log_q = None if any(q is None for q in log_qs) else torch.cat(log_qs)
    return guide_traces, model_traces, log_p, log_q, log_w, nesting


def _log_likelihood(traces, names, shapes, num_samples):
    """Pointwise ``log p(x_i | z)`` of each observed site, per draw (ArviZ's from_pyro)."""
    result = {}
    for n in names:
        per_trace = []
        for trace in traces:
            site = trace.nodes[n]
            lp = site["fn"].log_prob(site["value"])
            if site["mask"] is not None and site["mask"] is not True:
                lp = lp * site["mask"]  # masked-out elements contribute nothing
            per_trace.append(lp.detach())
        shape = shapes[n][: len(shapes[n]) - traces[0].nodes[n]["fn"].event_dim]
        if len(traces) == 1:
            result[n] = per_draw(per_trace[0], num_samples, shape)
        else:
            result[n] = torch.stack([lp.reshape(shape) for lp in per_trace])
    return result


def _values(traces, names, shapes, num_samples):
    if len(traces) == 1:
        return {n: per_draw(traces[0].nodes[n]["value"], num_samples, shapes[n]) for n in names}
    return {n: torch.stack([t.nodes[n]["value"] for t in traces]) for n in names}


def _from_dict(groups, coords, dims, log_likelihood_dims=None):
    import arviz as az

    groups = {k: v for k, v in groups.items() if v}
    split = log_likelihood_dims is not None and "log_likelihood" in groups
    if split:
        # an observed site with event dims has fewer log-likelihood dims than values:
        # that group is built with its own dimension names and merged
        ll = {"log_likelihood": groups.pop("log_likelihood")}
    with warnings.catch_warnings():
        # ArviZ warns about draws that are not MCMC chains (e.g. one chain); fine here
        warnings.simplefilter("ignore", UserWarning)
        if arviz_major_version() >= 1:
            result = az.from_dict(groups, coords=coords, dims=dims)
            if split:
                other = az.from_dict(ll, coords=coords, dims=log_likelihood_dims)
                result["log_likelihood"] = other["log_likelihood"]
            return result
        result = az.from_dict(**groups, coords=coords, dims=dims)
        if split:
            result.extend(az.from_dict(**ll, coords=coords, dims=log_likelihood_dims))
        return result


def to_inference_data(
    model,
    guide,
    *args,
    num_samples=1000,
    num_chains=4,
    objective=None,
    prior=False,
    posterior_predictive=False,
    observed_data=True,
    log_likelihood=True,
    coords=None,
    dims=None,
    parallel=True,
    max_plate_nesting=None,
    seed=None,
    **kwargs,
):
    r"""
    Draws from a trained guide as an ArviZ ``InferenceData`` (ArviZ 0.x) or
    ``DataTree`` (ArviZ 1.x).

    Groups:

    * ``posterior``: every latent site of the model, with the guide's values;
      plate dimensions are named after their :class:`~pyro.plate`, other
      dimensions ``<site>_dim_<i>``.
    * ``sample_stats``: per draw, ``lp`` = :math:`\log p(x, z)`; for explicit
      guides ``log_q`` = :math:`\log q(z \mid x)` and ``log_weight`` =
      ``lp - log_q``; for implicit guides with ``objective`` (the
      :class:`~pyro_adv.infer.TraceAVB_ELBO` they were trained with)
      ``log_weight`` as estimated by the discriminator and the implied
      ``log_q``. ``log_weight`` feeds :func:`~pyro_adv.diagnostics.importance_diagnostics`.
    * ``log_likelihood``: per draw, the pointwise :math:`\log p(x_i \mid z)` of each
      observed site (its batch shape; event dims summed), as ArviZ's ``from_pyro``
      makes it, so ``az.loo`` and ``az.waic`` work (``log_likelihood=True``).
    * ``observed_data``: the observed sites (``observed_data=True``).
    * ``prior`` and ``prior_predictive`` (``prior=True``): latents and data
      simulated from the model.
    * ``posterior_predictive`` (``posterior_predictive=True``): data simulated
      from the model at the guide's draws.

    The draws are independent; they are split into ``num_chains`` pseudo-chains
    so that ``az.summary`` can report ``r_hat`` (it should be about 1).

    Example::

        idata = to_inference_data(model, guide, data, num_samples=2000,
                                  posterior_predictive=True, objective=svi.loss)
        az.summary(idata)
        az.plot_pair(idata, var_names=["z"])

    :param callable model: the Pyro model.
    :param callable guide: the trained guide (same arguments as the model).
    :param int num_samples: total number of draws (divisible by ``num_chains``).
    :param int num_chains: number of pseudo-chains.
    :param objective: an objective with ``importance_log_weights`` (e.g. the
        trained :class:`~pyro_adv.infer.TraceAVB_ELBO`): the posterior draws are
        then the ones it scored, and ``sample_stats`` gets their estimated weights.
    :param bool prior: add ``prior`` and ``prior_predictive``.
    :param bool posterior_predictive: add ``posterior_predictive``.
    :param bool observed_data: add ``observed_data``.
    :param bool log_likelihood: add ``log_likelihood``.
    :param dict coords: ArviZ coordinates (dimension name -> values).
    :param dict dims: ArviZ dimension names (variable name -> list of names),
        overriding the automatic ones.
    :param bool parallel: vectorize draws with a plate (model and guide must
        declare batch dimensions with :class:`~pyro.plate`); ``False`` loops.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param int seed: seeds the draws (the caller's random state is restored).
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    if num_chains < 1 or num_samples % num_chains:
        raise ValueError(
            f"num_samples={num_samples} must be a positive multiple of num_chains={num_chains}"
        )
    # SVI keeps only the objective's bound ``loss`` method: accept that too
    objective = getattr(objective, "__self__", objective)
    if objective is not None and not hasattr(objective, "importance_log_weights"):
        raise TypeError(
            f"objective {type(objective).__name__} has no importance_log_weights; "
            "pass the TraceAVB_ELBO the guide was trained with, or None"
        )
    num_samples = int(num_samples)
    coords = dict(coords or {})
    with seeded(seed), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(*args, **kwargs)
        latent, observed = latent_and_observed_sites(model_trace)
        nesting = max_plate_nesting
        if nesting is None:
            nesting = guess_max_plate_nesting(model_trace, guide_trace)
        shapes = {n: tuple(model_trace.nodes[n]["value"].shape) for n in latent + observed}
        site_dims = {n: _site_dims(n, model_trace.nodes[n]) for n in latent + observed}
        site_dims.update(dims or {})

        guide_traces, traces, log_p, log_q, log_w, nesting = _draw(
            model, guide, args, kwargs, num_samples, nesting, parallel, objective
        )
        posterior = _values(traces, latent, shapes, num_samples)
        stats = {"lp": log_p}
        if log_w is not None:
            stats["log_weight"] = log_w
            stats["log_q"] = log_p - log_w
        elif log_q is not None:
            stats["log_q"] = log_q
            stats["log_weight"] = log_p - log_q
        groups = {
            "posterior": {n: _to_numpy(v, num_chains) for n, v in posterior.items()},
            "sample_stats": {n: _to_numpy(v, num_chains) for n, v in stats.items()},
        }
        if log_likelihood and observed:
            ll = _log_likelihood(traces, observed, shapes, num_samples)
            groups["log_likelihood"] = {n: _to_numpy(v, num_chains) for n, v in ll.items()}
        if observed_data and observed:
            groups["observed_data"] = {
                n: model_trace.nodes[n]["value"].detach().cpu().numpy() for n in observed
            }
        if posterior_predictive and observed:
            predictive_model = poutine.uncondition(model)
            if len(guide_traces) == 1:
                predictive_model = vectorized(predictive_model, num_samples, nesting)
            # replayed against the guide's draws (the model trace has the data observed)
            pp_traces = [
                poutine.trace(poutine.replay(predictive_model, g)).get_trace(*args, **kwargs)
                for g in guide_traces
            ]
            pp = _values(pp_traces, observed, shapes, num_samples)
            groups["posterior_predictive"] = {n: _to_numpy(v, num_chains) for n, v in pp.items()}
        if prior:
            prior_model = poutine.uncondition(model)
            if parallel:
                prior_traces = [
                    poutine.trace(vectorized(prior_model, num_samples, nesting)).get_trace(
                        *args, **kwargs
                    )
                ]
            else:
                prior_traces = [
                    poutine.trace(prior_model).get_trace(*args, **kwargs)
                    for _ in range(num_samples)
                ]
            groups["prior"] = {
                n: _to_numpy(v, num_chains)
                for n, v in _values(prior_traces, latent, shapes, num_samples).items()
            }
            if observed:
                groups["prior_predictive"] = {
                    n: _to_numpy(v, num_chains)
                    for n, v in _values(prior_traces, observed, shapes, num_samples).items()
                }
    used_dims = {n: d for n, d in site_dims.items() if n in latent + observed or n in (dims or {})}
    ll_dims = None
    if log_likelihood and any(model_trace.nodes[n]["fn"].event_dim for n in observed):
        ll_dims = {
            n: used_dims[n][: len(shapes[n]) - model_trace.nodes[n]["fn"].event_dim]
            for n in observed
            if n in used_dims
        }
    return _from_dict(groups, coords or None, used_dims, ll_dims)
