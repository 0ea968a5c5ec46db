r"""Adversarial Variational Bayes (Mescheder et al. 2017; thesis section 4.2)."""

import math
from typing import NamedTuple

import pyro.poutine as poutine
import torch
from torch.func import functional_call

from pyro_adv.distributions.implicit import is_implicit
from pyro_adv.infer.adversarial import AdversarialObjective, StepLosses, check_positive_int
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.infer.contrast import conditional_gaussian
from pyro_adv.infer.divergences import Minimax
from pyro_adv.infer.particles import ParticleTraces
from pyro_adv.infer.stats import MeanOf, StepStats
from pyro_adv.infer.util import (
    check_latents,
    context_features,
    group_implicit_sites,
    join_features,
    latent_features,
    particle_sum,
    per_particle_features,
    upstream_sites,
)
from pyro_adv.nn.discriminators import Discriminator, PairDiscriminator

__all__ = ["TraceAVB_ELBO"]

_LOG_2PI = math.log(2 * math.pi)

#: diagnosis-time refit (see :meth:`TraceAVB_ELBO.importance_log_weights`): the
#: discriminators of the ensemble, Adam steps and learning rate of each, guide draws
#: per member and per diagnosed draw, minibatch rows per side, and the bound on rows
#: (draws x contexts) held in a member's pool
REFIT_MEMBERS = 2
REFIT_STEPS = 200
REFIT_LR = 1e-2
REFIT_DRAWS_PER_SAMPLE = 2
REFIT_MIN_DRAWS = 1024
REFIT_BATCH_ROWS = 2048
REFIT_MAX_POOL_ROWS = 2**19
#: nats: below this, differences between the largest estimated log-weights are not
#: resolved (see :func:`log_weight_resolution` and the diagnostics guide)
LOG_WEIGHT_RESOLUTION = 1.0


class TraceAVB_ELBO(ParticleTraces, AdversarialObjective):
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
    ``discriminator_loss``, ``discriminator_accuracy_p`` /
    ``discriminator_accuracy_q`` (on reference / guide draws: the two sides of
    AVB's game, see :attr:`sides`) and ``kl`` (the estimated :math:`KL(q \| p)`
    of the implicit sites).

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
    :param float ema_decay: largest decay of the weight averages the sampling
        networks use after training (:mod:`pyro_adv.nn.averaging`, e.g. ``0.999``);
        ``None`` (the default for AVB): off. AVB's guide descends a likelihood-based
        bound and does not circle an equilibrium as ALI's and GANs' players do;
        averaging the amortized encoder's weights (over the last third) measured worse
        on the exponential model's ring (its centre drifted further from 0).
    """

    #: steps of the diagnosis-time refit while one runs (see importance_log_weights)
    _refit = None
    #: the two sides of the discriminator's game: ``p`` the target side, ``q`` the guide side
    sides = {"p": "reference draws", "q": "guide draws"}
    #: :func:`~pyro_adv.optim.default_optimizer`'s settings: Adam at 5e-3 for the guide
    #: and 1e-2 for the discriminator, both decayed 20-fold over the run
    default_optim_settings = {"lr": 5e-3, "discriminator_lr": 1e-2, "decay": 0.05}

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
        ema_decay=None,
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
            ema_decay=ema_decay,
        )
        self.adaptive_contrast = adaptive_contrast
        self.moment_particles = moment_particles
        self.discriminator_particles = discriminator_particles
        self.discriminator_hidden_dims = tuple(discriminator_hidden_dims)
        self.discriminator_activation = discriminator_activation
        self.discriminator_factory = discriminator
        self.divergence = Minimax()  # logistic regression: the logit estimates log q / r
        if self.num_particles == 1 and self.max_plate_nesting != float("inf"):
            self.max_plate_nesting += 1  # the particle slot (see _vectorized_num_particles)
        self.validate_options()

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

        # the discriminator's p side is the reference r, its q side the guide
        d_losses, acc_p, acc_q, extrapolated = [], [], [], []
        log_q_implicit = log_q_bounded = disagreement = 0.0
        reference_trace = None
        for group in groups.values():
            upstream = upstream_sites(guide_trace, group, latents)
            u, ladj = self._group_value(group, guide_trace, model_trace)
            up = self._upstream_value(group, upstream, guide_trace, model_trace)
            context = context_features(model_trace, group, nesting, 0)
            if self.adaptive_contrast:
                num_draws = self.moment_particles + self._positive_draws(context, up, u)
                if not upstream and _draws_whole_group(guide, group):
                    # AutoImplicit: the same draws from its sampler, without a traced run
                    with torch.no_grad():
                        draws = guide.draw_unconstrained(num_draws, *args, **kwargs)
                    ref_u, ref_up = draws.reshape(num_draws, -1), None
                else:
                    if reference_trace is None:
                        reference_trace = self._guide_draws(
                            guide, num_draws, args, kwargs, guide_trace
                        )
                    ref_u, _ = self._group_value(group, reference_trace, model_trace)
                    ref_up = self._upstream_value(group, upstream, reference_trace, model_trace)
                terms = self._contrast_terms(group, u, up, context, ref_u, ref_up)
            else:
                with torch.no_grad(), poutine.block():
                    prior_trace = self._run_model(
                        model, guide_trace, args, kwargs, resample=set(group.names)
                    )
                prior_u, _ = self._group_value(group, prior_trace, prior_trace)
                terms = self._plain_terms(group, u, up, context, prior_u)
            scale = guide_trace.nodes[group.names[0]]["scale"]
            for bounded, log_q in enumerate((terms.log_q, terms.log_q_bounded)):
                if group.joint is None:
                    log_q = particle_sum(log_q * scale, nesting, 0)
                else:
                    log_q = log_q * scale
                if self.adaptive_contrast:
                    log_q = log_q - ladj  # from log q_u to log q_z
                if bounded:
                    log_q_bounded = log_q_bounded + log_q.detach()
                else:
                    log_q_implicit = log_q_implicit + log_q
            if terms.disagreement is not None:
                gap = terms.disagreement * scale
                if group.joint is None:
                    gap = particle_sum(gap, nesting, 0)
                disagreement = disagreement + gap.abs()
            d_losses.append(terms.loss)
            acc_q.append(terms.accuracies[0])
            acc_p.append(terms.accuracies[1])
            extrapolated.append(terms.extrapolated)

        # log q for implicit groups: adaptive contrast gives log q_u = T + log r_u and the
        # model term above includes log p(z); plain AVB gives T = log q_u - log p_u and the
        # model term above omits log p(z) (the Jacobians cancel).
        elbo_particles = log_p - log_q_explicit - log_q_implicit
        loss = -_mean(elbo_particles)
        d_loss = sum(d_losses) if d_losses else loss.new_zeros(())
        # kept on the device until read (one read for all; see StepStats)
        stats = StepStats(
            {
                "loss": loss.detach(),
                "generator_loss": loss.detach(),
                "discriminator_loss": d_loss.detach(),
                "discriminator_accuracy_p": MeanOf(acc_p) if acc_p else None,
                "discriminator_accuracy_q": MeanOf(acc_q) if acc_q else None,
            }
        )
        if groups and self.adaptive_contrast:
            # KL(q || prior) of the implicit sites: E_q[log q - log p(z)]
            log_prior = 0.0
            for site_name in implicit:
                site = model_trace.nodes[site_name]
                log_prior = log_prior + particle_sum(site["log_prob"], nesting, 0)
            stats["kl"] = _mean(log_q_implicit - log_prior).detach()
        elif groups:
            stats["kl"] = _mean(log_q_implicit).detach()
        if groups:
            stats["extrapolated_fraction"] = MeanOf(f for f, _ in extrapolated)
            # draws with a bounded logit in any group (at most the sum over groups); an
            # integer tensor, read as an int
            draws = sum(n for _, n in extrapolated)
            stats["extrapolated_draws"] = draws.clamp(max=self.num_particles)
        # Importance weights use the discriminator only where it was trained: beyond
        # the range of logits it produced on its own training draws it extrapolates,
        # and a tail draw's weight would then be the network's guess (k-hat alarms on
        # good fits came from there).
        log_weights = (log_p - log_q_explicit - log_q_bounded).detach()
        if self._refit is not None and self.adaptive_contrast:
            # how far the refit ensemble's members disagree on log q at the largest weights
            stats["log_weight_resolution"] = log_weight_resolution(log_weights, disagreement)
        return StepLosses(
            loss,
            loss,
            d_loss,
            stats,
            log_weights=log_weights,
            log_weights_unbounded=elbo_particles.detach(),
        )

    # ---------------------------------------------------------------- features
    def _group_value(self, group, guide_trace, model_trace):
        """
        The group's unconstrained value in the padded layout (particles on dim 0,
        one feature dim) and ``log |dz/du|`` in the same batch layout without the
        feature dim. A joint group is one flat vector per particle: each site
        flattened over its own plates, never copied across another site's plates.
        """
        nesting = self.max_plate_nesting
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

    def _upstream_value(self, group, upstream, guide_trace, model_trace):
        """The upstream latents' unconstrained values laid out like the group's value."""
        if not upstream:
            return None
        parts, _ = latent_features(upstream, guide_trace, model_trace, self.max_plate_nesting)
        if group.joint is not None:
            return per_particle_features(parts)
        return join_features(*parts)

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
        up_draws = None if up is None else ref_up[:m]
        whiten, log_det = conditional_gaussian(ref_u[:m], up_draws, self.adaptive_contrast)
        real_up = None if up is None else ref_up[m:]
        real = whiten(ref_u[m:], real_up)
        fake = torch.randn_like(real)
        z = whiten(u, up)
        log_r = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1) - log_det
        terms = self._discriminate(
            group, z, join_features(context, up), real, fake, join_features(context, real_up)
        )
        return terms._replace(
            log_q=terms.log_q + log_r, log_q_bounded=terms.log_q_bounded + log_r.detach()
        )

    def _plain_terms(self, group, u, up, context, prior_u):
        """
        Plain AVB for one group: the discriminator tells guide draws from draws of
        the model's prior given the same upstream latents; its logit estimates
        ``log q_u - log p_u``.
        """
        ctx = join_features(context, up)
        return self._discriminate(group, u, ctx, u.detach(), prior_u, ctx)

    def _discriminate(self, group, z, ctx, real, fake, real_ctx):
        """
        Trains the group's discriminator on ``real`` (guide, the q side) against
        ``fake`` (reference, the p side) draws, both seen with ``real_ctx``, and
        returns its frozen logit at the gradient particles ``z`` (seen with
        ``ctx``), the loss and accuracies. The guide goes in the divergence's first
        argument so that the logit estimates ``log q_u - log r_u``. During a
        diagnosis with refitting (:meth:`importance_log_weights`) the logit is
        instead the average of an ensemble refit on ``real``/``fake``.
        """
        make = self._make_discriminator(group.key, ctx is not None)
        if ctx is None:
            disc = self.discriminator(group.key, real, make)
            real_in, fake_in, z_in = (real.detach(),), (fake,), (z,)
        else:
            real_ctx = real_ctx.detach()
            example = join_features(real_ctx, real)
            disc = self.discriminator(group.key, example, make)
            real_in = (_expand(real_ctx, real), real.detach())
            fake_in = (_expand(real_ctx, fake), fake)
            z_in = (_expand(ctx, z), z)
        refit = self._refit if self._refit is not None and self.adaptive_contrast else None
        if refit is not None:
            return self._refit_terms(disc, real_in, fake_in, z_in, refit)
        real_logits = disc(*real_in)
        fake_logits = disc(*fake_in)
        t = self.frozen(disc)(*z_in)
        d_loss = self.divergence.discriminator_loss(real_logits, fake_logits)
        accs = self.divergence.accuracy(real_logits, fake_logits)
        # the range of logits on the training draws, per context
        seen = torch.cat([real_logits, fake_logits]).detach()
        return self._bounded_terms(t, seen, d_loss, accs)

    def _bounded_terms(self, t, seen, d_loss, accs, disagreement=None):
        """The group's terms with ``t`` bounded to the range of the logits ``seen``."""
        low, high = seen.min(0, keepdim=True).values, seen.max(0, keepdim=True).values
        t_detached = t.detach()
        bounded = torch.maximum(torch.minimum(t_detached, high), low)
        clipped = bounded != t_detached
        # tensors until the statistics are read (no device read a step)
        outside = clipped.to(t_detached.dtype).mean()
        draws = clipped.reshape(clipped.shape[0], -1).any(-1).sum()
        return _GroupTerms(t, bounded, d_loss, accs, (outside, draws), disagreement)

    def _positive_draws(self, context, up, u):
        """
        Guide draws that train the discriminator: ``discriminator_particles`` in
        training; in a diagnosis with refitting, a pool for each member of the
        ensemble, ``REFIT_DRAWS_PER_SAMPLE`` per diagnosed draw (at least
        ``REFIT_MIN_DRAWS``), fewer where many contexts would exceed the memory bound.
        (Fresh draws for every minibatch measured worse on the Gamma-Poisson case.)
        """
        if self._refit is None or not self.adaptive_contrast:
            return self.discriminator_particles
        contexts = 1
        for part in (u, context, up):
            if torch.is_tensor(part):
                contexts = max(contexts, math.prod(part.shape[1:-1]))
        per_member = max(REFIT_DRAWS_PER_SAMPLE * self.num_particles, REFIT_MIN_DRAWS)
        per_member = max(min(per_member, REFIT_MAX_POOL_ROWS // contexts), 64)
        return REFIT_MEMBERS * per_member

    def _refit_terms(self, disc, real_in, fake_in, z_in, steps):
        r"""
        The diagnosis-time refit: ``REFIT_MEMBERS`` copies of the trained
        discriminator, each trained for ``steps`` Adam steps (learning rate decaying
        linearly to 0) on its own share of the fresh guide draws ``real_in`` against
        as many reference draws, minibatched over draws. Their logits at ``z_in``
        are averaged; the range they produced on their training draws is the
        region where the weights are trusted (:meth:`_bounded_terms`).
        """
        members = REFIT_MEMBERS
        pool = real_in[-1].shape[0] // members
        last = real_in[-1]
        fresh = torch.randn(
            (members * pool,) + fake_in[-1].shape[1:], dtype=last.dtype, device=last.device
        )
        fake_in = fake_in[:-1] + (fresh,)
        rows = max(1, math.prod(last.shape[1:-1]))
        batch = max(1, min(pool, REFIT_BATCH_ROWS // rows))
        logits, seen = [], []
        for m in range(members):
            share = slice(m * pool, (m + 1) * pool)
            real = [_rows(x, share) for x in real_in]
            fake = [_rows(x, share) for x in fake_in]
            params = {
                name: p.detach().clone().requires_grad_() for name, p in disc.named_parameters()
            }
            optim = torch.optim.Adam(params.values(), lr=REFIT_LR)

            def call(inputs, params=params):
                return functional_call(disc, params, tuple(inputs))

            with torch.enable_grad():
                for step in range(steps):
                    for group in optim.param_groups:
                        group["lr"] = REFIT_LR * (1 - step / steps)
                    i = torch.randint(pool, (batch,), device=last.device)
                    j = torch.randint(pool, (batch,), device=last.device)
                    real_batch = [_rows(x, i) for x in real]
                    fake_batch = [_rows(x, j) for x in fake]
                    loss = self.divergence.discriminator_loss(call(real_batch), call(fake_batch))
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
            with torch.no_grad():
                real_logits, fake_logits = call(real), call(fake)
                seen += [real_logits, fake_logits]
                logits.append(call(z_in))
        d_loss = self.divergence.discriminator_loss(real_logits, fake_logits)
        accs = self.divergence.accuracy(real_logits, fake_logits)
        t = torch.stack(logits).mean(0)
        seen = torch.cat(seen)
        low, high = seen.min(0, keepdim=True).values, seen.max(0, keepdim=True).values
        bounded = [torch.maximum(torch.minimum(x, high), low) for x in logits]
        # the uncertainty of log q per draw: the larger of the members' difference and
        # the refit's change from the training discriminator (where they disagree, the
        # weights cannot tell; measured: a good 2-D guide's refit weights spanned 1.6-2.3
        # nats, the training discriminator's 0.15)
        trained = self.frozen(disc)(*z_in).detach()
        trained = torch.maximum(torch.minimum(trained, high), low)
        members = bounded[0] - bounded[-1]
        change = (bounded[0] + bounded[-1]) / 2 - trained
        gap = torch.where(members.abs() > change.abs(), members, change)
        return self._bounded_terms(t, seen, d_loss, accs, gap)

    # ------------------------------------------------------------ diagnostics
    def importance_log_weights(
        self, model, guide, *args, num_samples=None, bounded=True, refit=True, **kwargs
    ):
        r"""
        Estimated importance log-weights :math:`\log w = \log p(x, z) - \log q(z \mid x)`
        of ``num_samples`` joint draws from the guide (``num_particles`` by default),
        with the implicit :math:`\log q` supplied by a discriminator. Guide, model
        and the trained discriminators are left as they are. These feed PSIS
        diagnostics (Yao et al. 2018) and evidence estimates; they are only as good
        as the discriminator.

        **Refit** (``refit=True``, default, with adaptive contrast): the training
        discriminator saw ``discriminator_particles`` draws a step and is noisy and
        biased where the guide has little mass, exactly where the largest weights
        sit; since :math:`\hat k` reads the *shape* of the largest weights, a good
        guide's nearly constant weights then give false alarms (measured: see the
        diagnostics guide). So for the diagnosis the trained discriminator is
        copied twice and each copy is trained further, off the training path, on
        its own fresh guide draws (``REFIT_DRAWS_PER_SAMPLE`` per diagnosed draw)
        against as many reference draws, in minibatches of ``REFIT_BATCH_ROWS``, for
        ``REFIT_STEPS`` Adam steps (``refit=<int>`` sets the steps); the weights
        use the average of the two logits. ``refit=False`` uses the training
        discriminator as it is.

        With ``bounded=True`` (default) each logit is clipped to the range the
        discriminator(s) produced on their own training draws (per context): beyond
        it the network extrapolates, and a tail draw's weight would be its guess.
        The explicit Gaussian :math:`\log r` of adaptive contrast still carries
        the tails, so a guide that is too narrow still shows heavy weights.
        ``diagnostic_stats["extrapolated_draws"]`` counts the draws that were
        clipped (``"extrapolated_fraction"``: the fraction of logits).

        :param int num_samples: guide draws (vectorized particles).
        :param bool bounded: clip the logits to the range seen on training draws.
        :param refit: refit the discriminators for the diagnosis (``True``: ``REFIT_STEPS``
            steps; an ``int``: that many; ``False``: no refit). Plain AVB
            (``adaptive_contrast=False``) is never refit.
        :returns: a tensor of shape ``(num_samples,)``.
        """
        if refit is True:
            refit = REFIT_STEPS
        elif refit is not False:
            refit = check_positive_int(refit, "refit", type(self).__name__)
        self._refit = refit or None
        try:
            result = self._evaluate(model, guide, args, kwargs, num_samples)
        finally:
            self._refit = None
        #: statistics of the latest diagnostic evaluation (not of a training step)
        self.diagnostic_stats = dict(result.stats)
        self.diagnostic_stats.setdefault("log_weight_resolution", LOG_WEIGHT_RESOLUTION)
        return result.log_weights if bounded else result.log_weights_unbounded


def log_weight_resolution(log_weights, disagreement=None, floor=LOG_WEIGHT_RESOLUTION):
    r"""
    How finely estimated log-weights resolve the largest weights, in nats: ``floor``
    (the error measured at the largest weights of exact guides presented as
    implicit), or more where the refit ensemble's members disagree, or the refit
    moved ``log q`` from the training discriminator's, by more at the draws of the
    PSIS tail (the largest :math:`\min(S/5, 3\sqrt S)` weights).
    """
    if not torch.is_tensor(disagreement) or disagreement.dim() == 0:
        return float(floor)
    log_weights = log_weights.reshape(-1)
    tail = min(int(log_weights.numel() / 5), int(3 * math.sqrt(log_weights.numel())))
    if tail < 1:
        return float(floor)
    top = log_weights.topk(tail).indices
    return max(float(floor), disagreement.reshape(-1)[top].max().item())


class _GroupTerms(NamedTuple):
    """One group's share of the step: its ``log q`` estimate (or ``log q - log p``
    for plain AVB) with gradient, the same bounded to the logits the discriminator
    produced on its training draws (for importance weights), the discriminator
    loss, its accuracies, and the fraction of particles whose logit was bounded."""

    log_q: torch.Tensor
    log_q_bounded: torch.Tensor
    loss: torch.Tensor
    accuracies: tuple
    extrapolated: tuple  # (fraction of logits bounded, number of draws with one bounded)
    disagreement: torch.Tensor = None  # refit members' logit difference, shaped like log_q


def _expand(c, v):
    """The context ``c`` broadcast to the batch shape of ``v`` (feature dims kept)."""
    return c.expand(torch.broadcast_shapes(c.shape[:-1], v.shape[:-1]) + c.shape[-1:])


def _rows(x, index):
    """Draws ``index`` (a slice or index tensor on dim 0) of ``x``."""
    return x[index]


def _mean(x):
    return x.mean() if torch.is_tensor(x) else torch.as_tensor(x)


def _draws_whole_group(guide, group):
    """Whether ``guide`` is an AutoImplicit whose one joint draw is exactly ``group``."""
    if not isinstance(guide, AutoImplicit) or group.joint is None:
        return False
    if group.joint != guide.joint_name or guide.prototype_trace is None:
        return False
    return group.names == [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
