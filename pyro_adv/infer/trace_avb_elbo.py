r"""Adversarial Variational Bayes (Mescheder et al. 2017; thesis section 4.2)."""

import warnings

import pyro.poutine as poutine
import torch

from pyro_adv.distributions.implicit import is_implicit
from pyro_adv.infer.adversarial import AdversarialObjective, StepLosses
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.infer.checks import check_positive_int
from pyro_adv.infer.choices import (
    auxiliary_score,
    check_choices_reported,
    group_choice_score,
    leave_one_out,
)
from pyro_adv.infer.contrast import AdaptiveContrast
from pyro_adv.infer.divergences import Minimax
from pyro_adv.infer.importance import RefitImportanceWeights, log_weight_resolution
from pyro_adv.infer.pairs import fit_regression_bases_forward
from pyro_adv.infer.particles import ParticleTraces
from pyro_adv.infer.stats import MeanOf, StepStats
from pyro_adv.infer.util import (
    check_latents,
    context_features,
    group_implicit_sites,
    group_value,
    join_features,
    pad_batch,
    particle_sum,
    upstream_sites,
    upstream_value,
)
from pyro_adv.nn.discriminators import Discriminator, PairDiscriminator

__all__ = ["TraceAVB_ELBO"]


class TraceAVB_ELBO(AdaptiveContrast, RefitImportanceWeights, ParticleTraces, AdversarialObjective):
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

    **Mixture-aware contrast** (automatic for an
    :class:`~pyro_adv.infer.autoguide.AutoImplicit` with ``num_components > 1`` or an
    ``amortized_guide`` of an ``ImplicitEncoder(num_components=K)``, or
    ``contrast_components=K``): one Gaussian spanning separated modes leaves a ratio
    too steep for the discriminator, which then under-states how peaked each mode is
    and AVB makes the modes too narrow. For groups without upstream latents :math:`r`
    is then a :math:`K`-component Gaussian mixture fitted to the guide's draws by a
    few EM steps, per observation for plate-local groups, warm-started for global ones
    (:class:`~pyro_adv.infer.contrast.GaussianMixtureReference`).

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
    :param discriminator: optional factory ``key -> nn.Module`` (or one module, for
        a guide with one group); called as ``T(z)`` for global groups and ``T(x, z)``
        for local groups.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param int discriminator_steps: discriminator updates per step (default 1).
    :param pyro.optim.PyroOptim discriminator_optim: optimizer of extra updates.
    :param str discriminator_prefix: param-store prefix of the discriminators.
    :param int contrast_components: components of the reference (``None``: the
        guide's ``num_components`` where it has one, else 1, one Gaussian). Groups with
        upstream latents keep the conditional Gaussian.
    :param float ema_decay: largest decay of the weight averages the sampling
        networks use after training (:mod:`pyro_adv.nn.averaging`, e.g. ``0.999``);
        ``None`` (the default for AVB): off. AVB's guide descends a likelihood-based
        bound and does not circle an equilibrium as ALI's and GANs' players do;
        averaging the amortized encoder's weights (over the last third) measured worse
        on the exponential model's ring (its centre drifted further from 0).
    """

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
        contrast_components=None,
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
        self.discriminator_spec = discriminator
        if contrast_components is not None:
            contrast_components = check_positive_int(
                contrast_components, "contrast_components", "TraceAVB_ELBO"
            )
        self.contrast_components = contrast_components
        self._mixture_references = {}
        self.divergence = Minimax()  # logistic regression: the logit estimates log q / r
        if self.num_particles == 1 and self.max_plate_nesting != float("inf"):
            self.max_plate_nesting += 1  # the particle slot (see _vectorized_num_particles)
        self.validate_options()

    _bases_checked = False  # whether the encoders' regression bases were looked at

    def _reset(self):
        super()._reset()
        self._mixture_references = {}  # fitted to the previous guide's draws
        self._bases_checked = False

    def _losses(self, model, guide, args, kwargs):
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        name = type(self).__name__
        latents = check_latents(model_trace, guide_trace, name)
        check_choices_reported(self, guide_trace, latents)
        if not self._bases_checked:
            self._bases_checked = True  # once per guide: a forward run, then never again
            vectorize = self._vectorized_num_particles
            if fit_regression_bases_forward(
                model, guide_trace, model_trace, latents, args, kwargs, name, vectorize
            ):
                return self._losses(model, guide, args, kwargs)
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
        scored = []  # (site, sign) of the terms, for the per-element ELBO of choices
        for site_name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_name not in latents and not site["is_observed"]:
                continue
            if site_name in implicit and not self.adaptive_contrast:
                continue
            # Pyro's log_prob is already scaled (subsampling) and masked
            log_p = log_p + particle_sum(site["log_prob"], nesting, 0)
            scored.append((site, 1.0))

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
            scored.append((site, -1.0))

        # the discriminator's p side is the reference r, its q side the guide
        d_losses, acc_p, acc_q, extrapolated = [], [], [], []
        log_q_implicit = log_q_bounded = disagreement = 0.0
        reference_trace = None
        element_log_q = {}  # per plate element, for the per-element ELBO of choices
        for group in groups.values():
            upstream = upstream_sites(guide_trace, group, latents)
            u, ladj = group_value(group, guide_trace, model_trace, nesting)
            up = upstream_value(group, upstream, guide_trace, model_trace, nesting)
            context = context_features(model_trace, group, nesting, 0)
            if self.adaptive_contrast:
                num_draws = self.moment_particles + self._positive_draws(context, up, u)
                if not upstream and isinstance(guide, AutoImplicit) and guide.draws_group(group):
                    # AutoImplicit: the same draws from its sampler, without a traced run
                    with torch.no_grad():
                        draws = guide.draw_unconstrained(num_draws, *args, **kwargs)
                    ref_u, ref_up = draws.reshape(num_draws, -1), None
                else:
                    if reference_trace is None:
                        reference_trace = self._guide_draws(
                            guide, num_draws, args, kwargs, guide_trace
                        )
                    ref_u, _ = group_value(group, reference_trace, model_trace, nesting)
                    ref_up = upstream_value(group, upstream, reference_trace, model_trace, nesting)
                components = self._reference_components(guide, up)
                if components > 1:
                    terms = self._mixture_terms(group, u, context, ref_u, components)
                else:
                    terms = self._contrast_terms(group, u, up, context, ref_u, ref_up)
            else:
                with torch.no_grad(), poutine.block():
                    prior_trace = self._run_model(
                        model, guide_trace, args, kwargs, resample=set(group.names)
                    )
                prior_u, _ = group_value(group, prior_trace, prior_trace, nesting)
                terms = self._plain_terms(group, u, up, context, prior_u)
            scale = guide_trace.nodes[group.names[0]]["scale"]
            if group.joint is None:
                element_log_q[group.key] = terms.log_q * scale
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
        score = auxiliary_score(guide_trace, latents, nesting)
        warned = self.__dict__.get("_warned_single_particle_score", False)
        if score is not None and self.num_particles < 2 and not warned:
            self._warned_single_particle_score = True
            warnings.warn(
                f"{name}: the guide's auxiliary non-reparameterized sites (e.g. "
                "AutoImplicit's mixture weights) learn by a score function whose baseline "
                "is the other particles' mean; with num_particles=1 they do not learn. "
                "Use num_particles >= 2 (the default is 16).",
                stacklevel=3,
            )
        if score is not None:
            # discrete auxiliary guide sites (a mixture's component): the score function
            # of the particles' ELBO terms, with the other particles' mean as baseline
            loss = loss - _mean(score * leave_one_out(elbo_particles.detach()))
        for group in groups.values():
            if group.key in element_log_q:
                loss = loss - self._choice_surrogate(
                    group, guide_trace, scored, element_log_q[group.key]
                )
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

    def _choice_surrogate(self, group, guide_trace, scored, log_q):
        r"""
        The score-function surrogate of the discrete choices inside a plate-local
        group's draws (an :class:`~pyro_adv.nn.ImplicitEncoder`'s mixture component
        with learned weights, one per plate element), or 0. Each element's choices
        are scored by its **own** ELBO terms :math:`f_{p,i}` (:func:`element_elbo`;
        the other elements' terms do not depend on them) through the particles'
        self-normalized importance weights :math:`\tilde w_{p,i} =
        \mathrm{softmax}_p f_{p,i}`: the surrogate
        :math:`\sum_{p,i} (\tilde w_{p,i} - 1/n) \log w_{k_{p,i}}(x_i)` descends the
        *forward* KL in the weights (reweighted wake-sleep's wake phase), whose
        optimum gives each mode its exact mass :math:`Z_k` however well its component
        fits; the ELBO's own (reverse-KL) gradient, stationary at
        :math:`w_k \propto Z_k e^{-KL(q_k \| p_k)}`, put too much mass on the
        better-fitted mode. With one particle: the reverse-KL score function, the
        other elements' mean as baseline.
        """
        nesting = self.max_plate_nesting
        choice = group_choice_score(group.names, guide_trace, nesting)
        if choice is None:
            return 0.0
        choice = choice.squeeze(-1)
        f = element_elbo(guide_trace.nodes[group.names[0]], scored, log_q, nesting)
        f = f.expand(torch.broadcast_shapes(f.shape, choice.shape))
        n = f.shape[0]
        if n > 1:
            # forward KL, as the wake-phase update of reweighted wake-sleep (Bornschein
            # and Bengio 2015): each element's particles weighted by their
            # self-normalized importance weights, minus the mean 1/n (a baseline)
            advantage = torch.softmax(f, 0) - 1.0 / n
            return (choice * advantage).sum() * n / choice.numel()
        return (choice * leave_one_out(f)).sum() / n

    # ------------------------------------------------------------ the two games
    def _plain_terms(self, group, u, up, context, prior_u):
        """
        Plain AVB for one group: the discriminator tells guide draws from draws of
        the model's prior given the same upstream latents; its logit estimates
        ``log q_u - log p_u``.
        """
        ctx = join_features(context, up)
        return self._discriminate(group, u, ctx, u.detach(), prior_u, ctx)

    def _discriminate(self, group, z, ctx, real, fake, real_ctx, draw_reference=None):
        """
        Trains the group's discriminator on ``real`` (guide, the q side) against
        ``fake`` (reference, the p side) draws, both seen with ``real_ctx``, and
        returns its frozen logit at the gradient particles ``z`` (seen with
        ``ctx``), the loss and accuracies. The guide goes in the divergence's first
        argument so that the logit estimates ``log q_u - log r_u``. During a
        diagnosis with refitting (:meth:`importance_log_weights`) the logit is
        instead the average of an ensemble refit on ``real``/``fake``.
        """
        make = self.spec_factory(group.key, Discriminator if ctx is None else PairDiscriminator)
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
            return self._refit_terms(disc, real_in, fake_in, z_in, refit, draw_reference)
        real_logits = disc(*real_in)
        fake_logits = disc(*fake_in)
        t = self.frozen(disc)(*z_in)
        d_loss = self.divergence.discriminator_loss(real_logits, fake_logits)
        accs = self.divergence.accuracy(real_logits, fake_logits)
        # the range of logits on the training draws, per context
        seen = torch.cat([real_logits, fake_logits]).detach()
        return self._bounded_terms(t, seen, d_loss, accs)


def element_elbo(site, scored, log_q, nesting):
    r"""
    The ELBO term of each plate element of a plate-local guide ``site`` (padded
    layout, particles on dim 0, detached): the log-densities ``scored`` (``(site,
    sign)`` pairs: the model's terms with ``+1``, explicit guide sites with ``-1``)
    of the sites inside all of the site's plates, summed over any plates nested
    within, minus the element's ``log_q``. Sites outside those plates (global
    latents) do not depend on the element's draw and are left out.
    """
    own = _plate_dims(site, nesting)
    f = -pad_batch(log_q, 0, nesting)
    for other, sign in scored:
        dims = _plate_dims(other, nesting)
        if not own <= dims:
            continue  # outside the site's plate elements: independent of its draw
        term = pad_batch(other["log_prob"], 0, nesting)
        extra = [d for d in dims - own if term.shape[d] > 1]
        if extra:
            term = term.sum(extra, keepdim=True)
        f = f + sign * term
    return f.detach()


def _plate_dims(site, nesting):
    """The padded-layout dims of a site's vectorized plates, the particle plate's excepted."""
    return {
        nesting + frame.dim
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None and nesting + frame.dim > 0
    }


def _expand(c, v):
    """The context ``c`` broadcast to the batch shape of ``v`` (feature dims kept)."""
    return c.expand(torch.broadcast_shapes(c.shape[:-1], v.shape[:-1]) + c.shape[-1:])


def _mean(x):
    return x.mean() if torch.is_tensor(x) else torch.as_tensor(x)
