"""
Particles for objectives that score whole guide and model traces.

Pyro's vectorized ELBOs run every particle at once under a leftmost
:class:`~pyro.plate`; a model written ``X @ w`` then fails, while
:class:`~pyro.infer.Trace_ELBO` (one particle at a time) accepts it.
:class:`ParticleTraces` gives an objective both: it vectorizes where model and guide
broadcast, finds out on the first step where they do not, and then runs the model
(and, if needed, the guide) once per particle, stacking the traces into the same
vectorized layout, so the estimator downstream is the same either way.
"""

import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape

from pyro_adv.distributions.implicit import is_implicit
from pyro_adv.infer.util import PARTICLE_PLATE, plate_frames, select_particle, stack_traces

__all__ = ["ParticleTraces"]


class ParticleTraces:
    """
    Mixin for an :class:`~pyro_adv.infer.adversarial.AdversarialObjective`: guide and
    model traces in the vectorized layout (particles on the leftmost of
    ``max_plate_nesting`` dims, a slot that always exists), however the particles
    had to be drawn (:attr:`particle_mode`), and extra joint draws of the guide.
    """

    _particle_mode = None

    def _vectorized_num_particles(self, fn):
        # Always a particle plate, even of size 1: the reference draws take its slot.
        # One plate object per setting, reused (a plate builds its index tensor when made).
        key = (self.num_particles, self.max_plate_nesting)
        cached = self.__dict__.get("_particle_plate")
        if cached is None or cached[0] != key:
            plate = pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-self.max_plate_nesting)
            cached = self._particle_plate = (key, plate)
        return cached[1](fn)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        super()._guess_max_plate_nesting(model, guide, args, kwargs)
        if self.num_particles == 1:
            self.max_plate_nesting += 1  # the particle slot (see _vectorized_num_particles)

    def _prepare(self, model, guide, args, kwargs):
        super()._prepare(model, guide, args, kwargs)
        key = (id(model), id(guide), self.num_particles, self.max_plate_nesting)
        if self._particle_mode is None or self._particle_mode[0] != key:
            self._particle_mode = (key, self._detect_particle_mode(model, guide, args, kwargs))

    @property
    def particle_mode(self):
        """
        How particles are drawn, found on the first step: ``"vectorized"`` (one
        run of guide and model under a particle plate), ``"model_sequential"`` (the
        guide vectorized, the model run once per particle because it does not
        broadcast, e.g. ``X @ w``), ``"sequential"`` (the guide does not broadcast
        either), or ``None`` before the first step.
        """
        return None if self._particle_mode is None else self._particle_mode[1]

    def _detect_particle_mode(self, model, guide, args, kwargs):
        # The estimator is the same in every mode; only the number of runs differs.
        # Pyro's vectorized ELBOs simply fail on such models; Trace_ELBO runs particles
        # one by one, so the same model must work here as written.
        errors = (RuntimeError, ValueError, IndexError, TypeError)
        with torch.no_grad(), poutine.block():
            try:
                guide_trace = poutine.trace(self._vectorized_num_particles(guide)).get_trace(
                    *args, **kwargs
                )
            except errors:
                mode = "sequential"
            else:
                try:
                    model_trace = poutine.trace(
                        poutine.replay(self._vectorized_num_particles(model), trace=guide_trace)
                    ).get_trace(*args, **kwargs)
                    # a model can also broadcast wrongly without failing: a site whose
                    # batch shape outgrows the plates (Pyro's own shape check finds it)
                    model_trace.compute_log_prob(_not_subsample)
                    for site in model_trace.nodes.values():
                        if site["type"] == "sample" and not site_is_subsample(site):
                            check_site_shape(site, self.max_plate_nesting)
                    mode = "vectorized"
                except errors:
                    mode = "model_sequential"
        if mode != "vectorized":
            warnings.warn(
                f"TraceAVB_ELBO: the {'guide' if mode == 'sequential' else 'model'} does not "
                "broadcast over a leftmost particle dimension (e.g. it uses `X @ w` or "
                f"reshapes a latent), so its {self.num_particles} particles are run one at a "
                "time. The estimate is the same, only slower; write it to broadcast (e.g. "
                "`(X * w).sum(-1)`) to vectorize.",
                stacklevel=3,
            )
        return mode

    def _traces(self, model, guide, args, kwargs):
        """
        The guide trace and the model trace replayed against it, in the vectorized
        layout (particles on the leftmost of ``max_plate_nesting`` dims), whatever
        :attr:`particle_mode` is. Model ``log_prob`` and explicit guide ``log_prob``
        (scaled and masked) are computed.
        """
        mode = self.particle_mode or "vectorized"
        nesting = self.max_plate_nesting
        if mode == "sequential":
            guide_traces, model_traces = [], []
            for _ in range(self.num_particles):
                g = poutine.trace(guide).get_trace(*args, **kwargs)
                m = poutine.trace(poutine.replay(model, trace=g)).get_trace(*args, **kwargs)
                _score_explicit(g)
                m.compute_log_prob(_not_subsample)
                if not guide_traces:
                    self._validate(m, g, nesting - 1)
                guide_traces.append(g)
                model_traces.append(m)
            return stack_traces(model_traces, nesting), stack_traces(guide_traces, nesting)
        guide_trace = poutine.trace(self._vectorized_num_particles(guide)).get_trace(
            *args, **kwargs
        )
        _score_explicit(guide_trace)
        model_trace = self._run_model(model, guide_trace, args, kwargs)
        return model_trace, guide_trace

    def _run_model(self, model, guide_trace, args, kwargs, resample=()):
        """
        The model replayed against ``guide_trace`` (vectorized layout), its sites in
        ``resample`` drawn afresh from the model instead; one run per particle where
        the model does not broadcast.
        """
        nesting = self.max_plate_nesting
        keep = guide_trace  # replay only reads it
        if resample:
            keep = poutine.Trace()
            for name, site in guide_trace.nodes.items():
                if name not in resample:
                    keep.add_node(name, **site)
        if self.particle_mode in (None, "vectorized"):
            trace = poutine.trace(
                poutine.replay(self._vectorized_num_particles(model), trace=keep)
            ).get_trace(*args, **kwargs)
            trace.compute_log_prob(_not_subsample)
            if not resample:
                self._validate(trace, guide_trace, nesting)
            return trace
        traces = []
        for p in range(self.num_particles):
            one = poutine.Trace()
            for name, site in keep.nodes.items():
                site = dict(site)
                if site["type"] == "sample" and not site_is_subsample(site):
                    site["value"] = select_particle(
                        site["value"], site["fn"].event_dim, p, nesting, plate_frames(site)
                    )
                one.add_node(name, **site)
            trace = poutine.trace(poutine.replay(model, trace=one)).get_trace(*args, **kwargs)
            trace.compute_log_prob(_not_subsample)
            if not resample and p == 0:
                self._validate(trace, one, nesting - 1)
            traces.append(trace)
        return stack_traces(traces, nesting)

    @staticmethod
    def _validate(model_trace, guide_trace, nesting):
        # Pyro's own checks, with its messages: shapes, missing and extra sites.
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, nesting)
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and not site_is_subsample(site):
                    check_site_shape(site, nesting)

    def _guide_draws(self, guide, num_draws, args, kwargs, guide_trace):
        """
        ``num_draws`` extra joint draws from the guide, without gradient, in the
        vectorized layout (draws on dim 0). Subsampled plates keep the indices of
        this step's guide trace so the draws share its contexts.
        """
        subsample = poutine.Trace()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and site_is_subsample(site):
                subsample.add_node(name, **site)
        guide = poutine.replay(guide, trace=subsample)
        with torch.no_grad(), poutine.block():
            if self.particle_mode == "sequential":
                traces = [poutine.trace(guide).get_trace(*args, **kwargs) for _ in range(num_draws)]
                return stack_traces(traces, self.max_plate_nesting)
            draws = pyro.plate("avb_reference_particles", num_draws, dim=-self.max_plate_nesting)(
                guide
            )
            return poutine.trace(draws).get_trace(*args, **kwargs)


def _not_subsample(name, site):
    # a subsample site scores a constant 0, which pyro makes on the CPU in float32
    return not site_is_subsample(site)


def _score_explicit(guide_trace):
    """Scaled and masked ``log_prob`` of the explicit guide sites (implicit ones refuse)."""
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or is_implicit(site["fn"]):
            continue
        if site["is_observed"] or "log_prob" in site:
            continue
        lp = site["fn"].log_prob(site["value"])
        site["log_prob"] = scale_and_mask(lp, site["scale"], site["mask"])
