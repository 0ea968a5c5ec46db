r"""Adversarial Variational Bayes (Mescheder et al. 2017; thesis section 4.2)."""

import math
import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape

from pyro_adv.distributions.implicit import is_implicit
from pyro_adv.infer.adversarial import AdversarialObjective
from pyro_adv.infer.divergences import Minimax
from pyro_adv.infer.util import (
    PARTICLE_PLATE,
    check_latents,
    context_features,
    flat_features,
    group_implicit_sites,
    particle_sum,
    plate_frames,
    select_particle,
    stack_traces,
    unconstrained,
    upstream_sites,
)
from pyro_adv.nn.discriminators import Discriminator, PairDiscriminator

__all__ = ["TraceAVB_ELBO"]

_LOG_2PI = math.log(2 * math.pi)


class TraceAVB_ELBO(AdversarialObjective):
    r"""
    The evidence lower bound for guides with *implicit* sites, whose density is
    estimated by a discriminator: Adversarial Variational Bayes (Mescheder,
    Nowozin and Geiger 2017; thesis section 4.2, eqs. 29-31).

    The ELBO :math:`\mathbb{E}_q[\log p(x, z) - \log q(z \mid x)]` needs
    :math:`\log q`, which an implicit guide does not have. A discriminator
    :math:`T` trained by logistic regression to tell guide samples from samples
    of a reference :math:`r` converges to :math:`T^* = \log q - \log r`
    (thesis eq. 31), so

    .. math::

        \mathrm{ELBO} \approx \mathbb{E}_{q}\big[\log p(x, z) - \log r(z \mid x) - T(x, z)\big].

    **Adaptive contrast** (on by default): :math:`r` is the Gaussian with the
    mean :math:`\mu` and covariance :math:`LL^\top` of :math:`q` itself (per
    context for amortized guides), and the discriminator sees the whitened
    :math:`\tilde z = L^{-1}(z - \mu)` against :math:`N(0, I)`; the ratio left to
    learn is close to one. The covariance is full when there are at least four
    draws per dimension, diagonal otherwise (force either with
    ``adaptive_contrast="full"`` / ``"diagonal"``). The moments come from
    ``moment_particles`` extra guide draws without gradient and the discriminator's
    positives from ``discriminator_particles`` more: this is valid because the
    identity :math:`\mathrm{ELBO} = \mathbb{E}_q[\log p - \log r] - KL(q \| r)`
    holds for *any* fixed :math:`r`, and it matters: whitening a handful of
    particles by their own moments blurs what the discriminator sees, which then
    underestimates how peaked :math:`q` is (the thesis's x = 30 ring came out 45%
    too thin that way). Plain AVB (``adaptive_contrast=False``: :math:`r` = the
    prior, the discriminator sees :math:`z` against prior draws) under-disperses.

    **Where the discriminator looks.** The guide's density factorizes along its
    plates, :math:`q(g)\prod_i q(z_i \mid g, x_i)`: a :class:`~pyro.plate`
    declares its draws conditionally independent given what was sampled outside
    it. AVB follows that factorization, as Pyro's ``AutoStructured`` does, rather
    than discriminating the joint of globals and all locals (as
    ``AutoMultivariateNormal`` would): the joint grows with the data and cannot be
    subsampled, while the conditionals can. So

    * latents outside every plate form one *global* group, seen as :math:`T(g)`;
    * latents in a plate form a *local* group per plate set, seen as
      :math:`T(x_i, g, z_i)`: :math:`x_i` are the observed values that share the
      plates and :math:`g` the *upstream* latents, those the guide sampled earlier
      in fewer plates (globals; outer-plate latents in nested plates). Leaving
      :math:`g` out would estimate the marginal :math:`q(z_i \mid x_i)` and
      overstate the entropy by the mutual information of :math:`z_i` and
      :math:`g`;
    * the sites of one joint draw (:class:`~pyro_adv.infer.autoguide.AutoImplicit`)
      form one group, seen as one flat vector (each latent once).

    With adaptive contrast the reference of a group with upstream latents is the
    conditional Gaussian :math:`r(z \mid g)` of the joint moments of
    :math:`(g, z)`. Subsampled plates are scaled like Pyro's other ELBOs.
    Constrained latents are handled in the unconstrained space of their support
    (the KL is invariant under the bijection). Explicit guide sites mixed in are
    scored by their ``log_prob``; they must be reparameterizable.

    **Models that do not broadcast.** Particles are vectorized under a leftmost
    :class:`~pyro.plate` where model and guide broadcast. Where they do not (for
    example ``Bernoulli(logits=X @ w)``), the first step finds out, warns once, and
    runs the model (and, if needed, the guide) once per particle: the estimate is
    the same, only slower (:attr:`particle_mode`). With validation on, Pyro's
    model/guide checks run on the first particle's traces, with Pyro's messages.

    One :meth:`~pyro.infer.SVI.step` updates guide, model and discriminators
    together (one backward); discriminators live in the param store as
    ``discriminator_<group>``. ``svi.step`` returns the negative-ELBO estimate;
    :attr:`stats` keeps the last step's ``loss``, ``generator_loss``,
    ``discriminator_loss``, ``discriminator_accuracy_real`` /
    ``discriminator_accuracy_fake`` (guide / reference samples) and ``kl`` (the
    estimated :math:`KL(q \| p)` of the implicit sites).

    Example::

        guide = AutoImplicit(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceAVB_ELBO())
        for step in range(2000):
            loss = svi.step(data)

    :param int num_particles: vectorized guide draws per step that carry gradients
        (per observation for amortized guides).
    :param adaptive_contrast: ``True`` (default), ``"full"``, ``"diagonal"`` or ``False``.
    :param int moment_particles: extra draws (no gradient) that estimate the
        moments of :math:`r`.
    :param int discriminator_particles: extra draws (no gradient) that train the
        discriminator, with as many :math:`N(0, I)` draws.
    :param tuple discriminator_hidden_dims: hidden widths of the default discriminators.
    :param discriminator_activation: their hidden activation.
    :param callable discriminator: optional factory ``key -> nn.Module``; a module
        called as ``T(z)`` for global groups and ``T(x, z)`` for local groups.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param int discriminator_steps: discriminator updates per step (default 1).
    :param pyro.optim.PyroOptim discriminator_optim: optimizer of extra updates.
    :param str discriminator_prefix: param-store prefix of the discriminators.
    """

    def __init__(
        self,
        num_particles=16,
        adaptive_contrast=True,
        moment_particles=512,
        discriminator_particles=64,
        discriminator_hidden_dims=(64, 64),
        discriminator_activation="elu",
        discriminator=None,
        max_plate_nesting=float("inf"),
        discriminator_steps=1,
        discriminator_optim=None,
        discriminator_prefix="discriminator",
    ):
        if adaptive_contrast not in (True, False, "full", "diagonal"):
            raise ValueError(
                "TraceAVB_ELBO: adaptive_contrast must be True, False, 'full' or 'diagonal', "
                f"got {adaptive_contrast!r}"
            )
        if adaptive_contrast and moment_particles < 16:
            raise ValueError(
                "TraceAVB_ELBO: adaptive contrast estimates the guide's moments from "
                f"moment_particles draws; use at least 16 (got {moment_particles})"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            discriminator_steps=discriminator_steps,
            discriminator_optim=discriminator_optim,
            discriminator_prefix=discriminator_prefix,
        )
        self.adaptive_contrast = adaptive_contrast
        self.moment_particles = int(moment_particles)
        self.discriminator_particles = int(discriminator_particles)
        self.discriminator_hidden_dims = tuple(discriminator_hidden_dims)
        self.discriminator_activation = discriminator_activation
        self.discriminator_factory = discriminator
        self.divergence = Minimax()  # logistic regression: the logit estimates log q / r
        self._particle_mode = None
        if self.num_particles == 1 and self.max_plate_nesting != float("inf"):
            self.max_plate_nesting += 1  # the particle slot (see _vectorized_num_particles)

    # ------------------------------------------------------------------ traces
    def _vectorized_num_particles(self, fn):
        # Always a particle plate, even of size 1: the reference draws take its slot.
        return pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-self.max_plate_nesting)(fn)

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
                    model_trace.compute_log_prob()
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
                m.compute_log_prob()
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
        keep = poutine.Trace()
        for name, site in guide_trace.nodes.items():
            if name not in resample:
                keep.add_node(name, **site)
        if self.particle_mode in (None, "vectorized"):
            trace = poutine.trace(
                poutine.replay(self._vectorized_num_particles(model), trace=keep)
            ).get_trace(*args, **kwargs)
            trace.compute_log_prob()
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
            trace.compute_log_prob()
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

    def _make_discriminator(self, key, paired):
        if self.discriminator_factory is not None:
            return lambda: self.discriminator_factory(key)
        cls = PairDiscriminator if paired else Discriminator
        return lambda: cls(self.discriminator_hidden_dims, self.discriminator_activation)

    def _losses(self, model, guide, args, kwargs):
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        name = type(self).__name__
        latents = check_latents(model_trace, guide_trace, name)
        for site_name, site in model_trace.nodes.items():
            if site["type"] == "sample" and site["is_observed"] and is_implicit(site["fn"]):
                raise ValueError(
                    f"{name}: observed site '{site_name}' has an implicit likelihood, which "
                    "AVB must evaluate; use pyro_adv.infer.Trace_ALI, which only simulates it."
                )
        nesting = self.max_plate_nesting
        groups = group_implicit_sites(guide_trace, latents)
        implicit = {n for g in groups.values() for n in g.names}

        # log p(x, z) per particle; plain AVB leaves the implicit sites' prior to T
        log_p = 0.0
        for site_name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_name not in latents and not site["is_observed"]:
                continue
            if site_name in implicit and not self.adaptive_contrast:
                continue
            # Pyro's log_prob is already scaled (subsampling) and masked
            log_p = log_p + particle_sum(site["log_prob"], nesting, 0)

        # explicit guide sites are scored by their own density
        log_q_explicit = 0.0
        for site_name in latents:
            site = guide_trace.nodes[site_name]
            if site_name in implicit:
                continue
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"{name}: guide site '{site_name}' ({type(site['fn']).__name__}) is not "
                    "reparameterizable; AVB needs pathwise gradients through every guide site."
                )
            log_q_explicit = log_q_explicit + particle_sum(site["log_prob"], nesting, 0)

        d_losses, acc_real, acc_fake = [], [], []
        log_q_implicit = 0.0
        reference_trace = None
        for group in groups.values():
            upstream = upstream_sites(guide_trace, group, latents)
            u, ladj = self._group_value(group, guide_trace, model_trace)
            up = self._upstream_value(group, upstream, guide_trace, model_trace)
            context = context_features(model_trace, group, nesting, 0)
            if self.adaptive_contrast:
                if reference_trace is None:
                    reference_trace = self._reference_trace(guide, args, kwargs, guide_trace)
                ref_u, _ = self._group_value(group, reference_trace, model_trace)
                ref_up = self._upstream_value(group, upstream, reference_trace, model_trace)
                log_q, d_loss, accs = self._contrast_terms(group, u, up, context, ref_u, ref_up)
            else:
                with torch.no_grad(), poutine.block():
                    prior_trace = self._run_model(
                        model, guide_trace, args, kwargs, resample=set(group.names)
                    )
                prior_u, _ = self._group_value(group, prior_trace, prior_trace)
                log_q, d_loss, accs = self._plain_terms(group, u, up, context, prior_u)
            scale = guide_trace.nodes[group.names[0]]["scale"]
            if group.joint is None:
                log_q = particle_sum(log_q * scale, nesting, 0)
            else:
                log_q = log_q * scale
            if self.adaptive_contrast:
                log_q = log_q - ladj  # from log q_u to log q_z
            log_q_implicit = log_q_implicit + log_q
            d_losses.append(d_loss)
            acc_real.append(accs[0])
            acc_fake.append(accs[1])

        # log q for implicit groups: adaptive contrast gives log q_u = T + log r_u and the
        # model term above includes log p(z); plain AVB gives T = log q_u - log p_u and the
        # model term above omits log p(z) (the Jacobians cancel).
        elbo_particles = log_p - log_q_explicit - log_q_implicit
        loss = -_mean(elbo_particles)
        d_loss = sum(d_losses) if d_losses else loss.new_zeros(())
        stats = {
            "loss": loss.item(),
            "generator_loss": loss.item(),
            "discriminator_loss": d_loss.item(),
            "discriminator_accuracy_real": sum(acc_real) / len(acc_real) if acc_real else None,
            "discriminator_accuracy_fake": sum(acc_fake) / len(acc_fake) if acc_fake else None,
        }
        if groups and self.adaptive_contrast:
            # KL(q || prior) of the implicit sites: E_q[log q - log p(z)]
            log_prior = 0.0
            for site_name in implicit:
                site = model_trace.nodes[site_name]
                log_prior = log_prior + particle_sum(site["log_prob"], nesting, 0)
            stats["kl"] = _mean(log_q_implicit - log_prior).item()
        elif groups:
            stats["kl"] = _mean(log_q_implicit).item()
        self._last_log_weights = elbo_particles.detach()
        return loss, loss, d_loss, stats

    # ---------------------------------------------------------------- features
    def _group_value(self, group, guide_trace, model_trace):
        """
        The group's unconstrained value in the padded layout (particles on dim 0,
        one feature dim) and ``log |dz/du|`` in the same batch layout without the
        feature dim. A joint group is one flat vector per particle: each site
        flattened over its own plates, never copied across another site's plates.
        """
        nesting = self.max_plate_nesting
        parts, ladj = [], 0.0
        for site_name in group.names:
            u, u_event_dim, site_ladj = unconstrained(
                guide_trace.nodes[site_name], model_trace.nodes[site_name]
            )
            parts.append(flat_features(u, u_event_dim, nesting))
            site_ladj = site_ladj * guide_trace.nodes[site_name]["scale"]
            ladj = ladj + particle_sum(site_ladj, nesting, 0)
        if group.joint is not None:
            return _per_particle(parts), ladj
        return _cat_features(parts, nesting), ladj

    def _upstream_value(self, group, upstream, guide_trace, model_trace):
        """The upstream latents' unconstrained values laid out like the group's value."""
        if not upstream:
            return None
        nesting = self.max_plate_nesting
        parts = []
        for site_name in upstream:
            u, u_event_dim, _ = unconstrained(
                guide_trace.nodes[site_name], model_trace.nodes[site_name]
            )
            parts.append(flat_features(u, u_event_dim, nesting))
        if group.joint is not None:
            return _per_particle(parts)
        return _cat_features(parts, nesting)

    def _reference_trace(self, guide, args, kwargs, guide_trace):
        """
        ``moment_particles + discriminator_particles`` extra joint draws from the
        guide, without gradient, in the vectorized layout (draws on dim 0).
        Subsampled plates keep the indices of this step's guide trace so the draws
        share its contexts.
        """
        subsample = poutine.Trace()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and site_is_subsample(site):
                subsample.add_node(name, **site)
        num_draws = self.moment_particles + self.discriminator_particles
        guide = poutine.replay(guide, trace=subsample)
        with torch.no_grad(), poutine.block():
            if self.particle_mode == "sequential":
                traces = [poutine.trace(guide).get_trace(*args, **kwargs) for _ in range(num_draws)]
                return stack_traces(traces, self.max_plate_nesting)
            draws = pyro.plate("avb_reference_particles", num_draws, dim=-self.max_plate_nesting)(
                guide
            )
            return poutine.trace(draws).get_trace(*args, **kwargs)

    # ------------------------------------------------------------ the two games
    def _contrast_terms(self, group, u, up, context, ref_u, ref_up):
        """
        Adaptive contrast for one group: the estimate of ``log q_u`` per particle
        and context, the discriminator loss and its accuracies.

        ``r`` is the Gaussian of the guide's own moments, *conditioned on the
        upstream latents* when there are any: from the joint mean and covariance of
        (upstream, group) over the reference draws, ``r(u | up) = N(mu_u + A (up -
        mu_up), S)`` with ``A = C_{u,up} C_{up,up}^{-1}`` and ``S`` the Schur
        complement. Any fixed conditional ``r`` leaves the AVB identity exact; this
        one makes the ratio left to the discriminator close to one. r comes from
        some draws, the discriminator's positives from others, so the discriminator
        is trained on the distribution it scores.
        """
        m = self.moment_particles
        whiten, log_det = self._conditional_gaussian(ref_u[:m], None if up is None else ref_up[:m])
        real_up = None if up is None else ref_up[m:]
        real = whiten(ref_u[m:], real_up)
        fake = torch.randn_like(real)
        z = whiten(u, up)
        log_r = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1) - log_det
        t, d_loss, accs = self._discriminate(
            group, z, _join(context, up), real, fake, _join(context, real_up)
        )
        return t + log_r, d_loss, accs

    def _plain_terms(self, group, u, up, context, prior_u):
        """
        Plain AVB for one group: the discriminator tells guide draws from draws of
        the model's prior given the same upstream latents; its logit estimates
        ``log q_u - log p_u``.
        """
        ctx = _join(context, up)
        return self._discriminate(group, u, ctx, u.detach(), prior_u, ctx)

    def _discriminate(self, group, z, ctx, real, fake, real_ctx):
        """
        Trains the group's discriminator on ``real`` (guide) against ``fake``
        (reference) draws, both seen with ``real_ctx``, and returns its frozen logit
        at the gradient particles ``z`` (seen with ``ctx``), the loss and accuracies.
        """
        make = self._make_discriminator(group.key, ctx is not None)
        if ctx is None:
            disc = self.discriminator(group.key, real, make)
            real_logits = disc(real.detach())
            fake_logits = disc(fake)
            t = self.frozen(disc)(z)
        else:
            real_ctx = real_ctx.detach()

            def expand(c, v):
                return c.expand(torch.broadcast_shapes(c.shape[:-1], v.shape[:-1]) + c.shape[-1:])

            example = _example_input((expand(real_ctx, real), real))
            disc = self.discriminator(group.key, example, make)
            real_logits = disc(expand(real_ctx, real), real.detach())
            fake_logits = disc(expand(real_ctx, fake), fake)
            t = self.frozen(disc)(expand(ctx, z), z)
        d_loss = self.divergence.discriminator_loss(real_logits, fake_logits)
        accs = self.divergence.accuracy(real_logits, fake_logits)
        return t, d_loss, accs

    def _conditional_gaussian(self, draws, up_draws):
        """
        The Gaussian ``r`` of adaptive contrast from draws on dim 0, conditioned on
        ``up_draws`` (upstream latents, or ``None``). Returns ``whiten(u, up)``,
        mapping draws to ``L^{-1}(u - E_r[u | up])``, and ``log |det L|``. The
        covariance is full when there are at least four draws per dimension of
        (upstream, group), diagonal and unconditional otherwise, or as forced by
        ``adaptive_contrast``.
        """
        k, d = draws.shape[0], draws.shape[-1]
        d_up = 0 if up_draws is None else up_draws.shape[-1]
        mode = self.adaptive_contrast
        if mode is True:
            # a full covariance needs comfortably more draws than dimensions
            mode = "full" if k >= 4 * (d + d_up) and d + d_up > 1 else "diagonal"
        if mode == "diagonal":
            loc = draws.mean(0, keepdim=True)
            std = (draws - loc).pow(2).mean(0, keepdim=True).clamp_min(1e-12).sqrt()
            return (lambda u, up: (u - loc) / std), std.log().sum(-1)
        if d_up:
            shape = torch.broadcast_shapes(draws.shape[:-1], up_draws.shape[:-1])
            joint = torch.cat([up_draws.expand(shape + (d_up,)), draws.expand(shape + (d,))], -1)
        else:
            joint = draws
        loc = joint.mean(0, keepdim=True)
        centred = (joint - loc).movedim(0, -2)  # (..., k, D)
        cov = centred.transpose(-1, -2) @ centred / k
        jitter = 1e-6 * cov.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
        cov = cov + torch.diag_embed(jitter.expand(cov.shape[:-1]))
        loc_up, loc_u = loc[..., :d_up], loc[..., d_up:]
        cov_uu = cov[..., d_up:, d_up:]
        if d_up:
            cov_upup = cov[..., :d_up, :d_up]
            cov_upu = cov[..., :d_up, d_up:]
            gain = torch.linalg.solve(cov_upup, cov_upu)  # C_up,up^-1 C_up,u: (..., d_up, d)
            cov_uu = cov_uu - cov_upu.transpose(-1, -2) @ gain
            gain = gain.unsqueeze(0)
        chol = torch.linalg.cholesky(cov_uu).unsqueeze(0)

        def whiten(u, up):
            centred = u - loc_u
            if d_up:
                shift = ((up - loc_up).unsqueeze(-2) @ gain).squeeze(-2)
                centred = centred - shift
            tri = chol.expand(centred.shape[:-1] + chol.shape[-2:])
            return torch.linalg.solve_triangular(tri, centred.unsqueeze(-1), upper=False).squeeze(
                -1
            )

        return whiten, chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    # ------------------------------------------------------------ diagnostics
    def importance_log_weights(self, model, guide, *args, num_samples=None, **kwargs):
        r"""
        Estimated importance log-weights :math:`\log w = \log p(x, z) - \log q(z \mid x)`
        of ``num_samples`` joint draws from the guide (``num_particles`` by default),
        with the implicit :math:`\log q` supplied by the discriminator. Nothing is
        trained. These feed PSIS diagnostics (Yao et al. 2018) and evidence
        estimates; they are only as good as the discriminator.

        :returns: a tensor of shape ``(num_samples,)``.
        """
        self._evaluate(model, guide, args, kwargs, num_samples)
        return self._last_log_weights


def _score_explicit(guide_trace):
    """Scaled and masked ``log_prob`` of the explicit guide sites (implicit ones refuse)."""
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or is_implicit(site["fn"]):
            continue
        if site["is_observed"] or "log_prob" in site:
            continue
        lp = site["fn"].log_prob(site["value"])
        site["log_prob"] = scale_and_mask(lp, site["scale"], site["mask"])


def _per_particle(parts):
    """Padded parts flattened to one row per particle (dim 0) and concatenated."""
    rows = max(p.shape[0] for p in parts)
    return torch.cat([p.expand((rows,) + p.shape[1:]).reshape(rows, -1) for p in parts], -1)


def _join(context, up):
    if context is None:
        return up
    if up is None:
        return context
    shape = torch.broadcast_shapes(context.shape[:-1], up.shape[:-1])
    return torch.cat(
        [context.expand(shape + context.shape[-1:]), up.expand(shape + up.shape[-1:])], -1
    )


def _cat_features(parts, nesting):
    shape = torch.broadcast_shapes(*(p.shape[:nesting] for p in parts))
    return torch.cat([p.expand(shape + p.shape[nesting:]) for p in parts], -1)


def _example_input(example):
    if len(example) == 1:
        return example[0]
    context, z = example
    shape = torch.broadcast_shapes(context.shape[:-1], z.shape[:-1])
    return torch.cat(
        [context.expand(shape + context.shape[-1:]), z.expand(shape + z.shape[-1:])], -1
    )


def _mean(x):
    return x.mean() if torch.is_tensor(x) else torch.as_tensor(x)
