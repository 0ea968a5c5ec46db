r"""Adversarial Variational Bayes (Mescheder et al. 2017; thesis section 4.2)."""

import math

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from pyro_adv.distributions.implicit import is_implicit
from pyro_adv.infer.adversarial import AdversarialObjective
from pyro_adv.infer.divergences import Minimax
from pyro_adv.infer.util import (
    check_latents,
    context_features,
    flat_features,
    group_implicit_sites,
    particle_sum,
    unconstrained,
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

    Where the discriminator looks: latents outside every plate are seen jointly
    as :math:`T(z)`; latents inside a :class:`~pyro.plate` are seen as
    :math:`T(x_i, z_i)`, with :math:`x_i` the observed values in that plate, and
    subsampled plates are scaled like Pyro's other ELBOs. Constrained latents are
    handled in the unconstrained space of their support (the KL is invariant
    under the bijection). Explicit guide sites mixed in are scored by their
    ``log_prob``; they must be reparameterizable.

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

    # ------------------------------------------------------------------ traces
    def _traces(self, model, guide, args, kwargs):
        guide = self._vectorized_num_particles(guide)
        model = self._vectorized_num_particles(model)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        return model_trace, guide_trace

    def _make_discriminator(self, key, local):
        if self.discriminator_factory is not None:
            return lambda: self.discriminator_factory(key)
        cls = PairDiscriminator if local else Discriminator
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
        particle_dim = 0 if self.num_particles > 1 else None
        groups = group_implicit_sites(guide_trace, latents)
        implicit = {n for g in groups.values() for n in g.names}

        # log p(x, z) per particle; plain AVB leaves the implicit sites' prior to T
        model_trace.compute_log_prob()
        log_p = 0.0
        for site_name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_name not in latents and not site["is_observed"]:
                continue
            if site_name in implicit and not self.adaptive_contrast:
                continue
            # Pyro's log_prob is already scaled (subsampling) and masked
            log_p = log_p + particle_sum(site["log_prob"], nesting, particle_dim)

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
            lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
            log_q_explicit = log_q_explicit + particle_sum(lp, nesting, particle_dim)

        d_losses, acc_real, acc_fake = [], [], []
        log_q_implicit = 0.0
        for group in groups.values():
            us, ladj = [], 0.0
            for site_name in group.names:
                u, u_event_dim, site_ladj = unconstrained(
                    guide_trace.nodes[site_name], model_trace.nodes[site_name]
                )
                us.append(flat_features(u, u_event_dim, nesting))
                if self.adaptive_contrast:
                    ladj = ladj + particle_sum(
                        site_ladj * guide_trace.nodes[site_name]["scale"], nesting, particle_dim
                    )
            scale = guide_trace.nodes[group.names[0]]["scale"]
            u = _cat_features(us, nesting)
            context = context_features(model_trace, group, nesting, particle_dim)
            if group.joint is not None:
                # one joint draw per particle: discriminate the whole flattened vector
                u = u.reshape(u.shape[0] if particle_dim is not None else 1, -1)
            if self.adaptive_contrast:
                reference = self._reference_draws(
                    group, guide, args, kwargs, model_trace, guide_trace
                )
            else:
                reference = self._prior_draws(group, model_trace, guide_trace, nesting)
            log_q, d_loss, accs = self._group_terms(group, u, context, reference)
            if group.joint is None:
                log_q = particle_sum(log_q * scale, nesting, particle_dim)
            else:
                log_q = log_q * scale
            log_q_implicit = log_q_implicit + log_q - ladj
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
                log_prior = log_prior + particle_sum(site["log_prob"], nesting, particle_dim)
            stats["kl"] = _mean(log_q_implicit - log_prior).item()
        elif groups:
            stats["kl"] = _mean(log_q_implicit).item()
        self._last_log_weights = elbo_particles.detach()
        return loss, loss, d_loss, stats

    def _group_terms(self, group, u, context, reference):
        """
        Discriminator loss and the estimate of ``log q`` (adaptive contrast) or of
        ``log q - log p`` (plain AVB) for one group, per particle and context.

        With adaptive contrast ``reference`` holds extra guide draws (no gradient)
        that fix the Gaussian ``r`` and train the discriminator; otherwise it
        holds prior draws, the discriminator's negatives.
        """
        if self.adaptive_contrast:
            # r comes from some draws, the discriminator's positives from others: they and
            # the gradient particles are independent of r, so the discriminator is trained
            # on the distribution it scores. Many draws keep r's noise (which blurs what the
            # discriminator sees across steps) small.
            m = self.moment_particles
            loc, chol, log_det = self._gaussian_moments(reference[:m])
            real = _whiten(reference[m:], loc, chol)
            fake = torch.randn_like(real)
            z = _whiten(u, loc, chol)
            log_r = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1) - log_det
        else:
            real, fake, z, log_r = u.detach(), reference, u, 0.0
        local = context is not None
        make = self._make_discriminator(group.key, local)
        if local:
            ctx = lambda v: context.expand(v.shape[:-1] + context.shape[-1:])  # noqa: E731
            disc = self.discriminator(group.key, _example_input((ctx(real), real)), make)
            real_logits = disc(ctx(real), real.detach())
            fake_logits = disc(ctx(fake), fake)
            t = self.frozen(disc)(ctx(z), z)
        else:
            disc = self.discriminator(group.key, real, make)
            real_logits = disc(real.detach())
            fake_logits = disc(fake)
            t = self.frozen(disc)(z)
        d_loss = self.divergence.discriminator_loss(real_logits, fake_logits)
        accs = self.divergence.accuracy(real_logits, fake_logits)
        return t + log_r, d_loss, accs

    def _reference_draws(self, group, guide, args, kwargs, model_trace, guide_trace):
        """
        ``moment_particles + discriminator_particles`` extra draws of the group from
        the guide, without gradient,
        in the padded layout (draws on dim 0). Subsampled plates keep the indices of
        this step's guide trace so the draws share its contexts.
        """
        subsample = poutine.Trace()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and site_is_subsample(site):
                subsample.add_node(name, **site)
        draws = pyro.plate(
            "avb_reference_particles",
            self.moment_particles + self.discriminator_particles,
            dim=-self.max_plate_nesting,
        )(poutine.replay(guide, trace=subsample))
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(draws).get_trace(*args, **kwargs)
        parts = []
        for name in group.names:
            u, u_event_dim, _ = unconstrained(trace.nodes[name], model_trace.nodes[name])
            parts.append(flat_features(u, u_event_dim, self.max_plate_nesting))
        u = _cat_features(parts, self.max_plate_nesting)
        if group.joint is not None:
            u = u.reshape(u.shape[0], -1)
        return u

    def _gaussian_moments(self, draws):
        """
        The Gaussian ``r`` of adaptive contrast, from draws on dim 0: per context
        ``(mean, L, log |det L|)`` with ``L L^T`` the sample covariance ("full") or
        its diagonal ("diagonal", ``L`` then holds standard deviations).
        """
        k, d = draws.shape[0], draws.shape[-1]
        mode = self.adaptive_contrast
        if mode is True:
            # a full covariance needs comfortably more draws than dimensions
            mode = "full" if k >= 4 * d and d > 1 else "diagonal"
        loc = draws.mean(0, keepdim=True)
        centred = draws - loc
        if mode == "diagonal":
            std = centred.pow(2).mean(0, keepdim=True).clamp_min(1e-12).sqrt()
            return loc, std, std.log().sum(-1)
        batch = centred.movedim(0, -2)  # (..., k, d)
        cov = batch.transpose(-1, -2) @ batch / k
        jitter = 1e-6 * cov.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
        cov = cov + torch.diag_embed(jitter.expand(cov.shape[:-1]))
        chol = torch.linalg.cholesky(cov).unsqueeze(0)
        return loc, chol, chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def _prior_draws(self, group, model_trace, guide_trace, nesting):
        """Unconstrained draws from the model's prior at the group's sites, guide layout."""
        parts = []
        for site_name in group.names:
            site = model_trace.nodes[site_name]
            with torch.no_grad():
                z = site["fn"].sample()
            u, u_event_dim, _ = unconstrained({"value": z, "fn": site["fn"]}, site)
            parts.append(flat_features(u, u_event_dim, nesting))
        u = _cat_features(parts, nesting)
        if group.joint is not None:
            u = u.reshape(u.shape[0], -1)
        return u

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


def _cat_features(parts, nesting):
    shape = torch.broadcast_shapes(*(p.shape[:nesting] for p in parts))
    return torch.cat([p.expand(shape + p.shape[nesting:]) for p in parts], -1)


def _whiten(u, loc, chol):
    """``L^{-1} (u - loc)``: ``chol`` is a Cholesky factor (``(..., d, d)``) or std devs."""
    centred = u - loc
    if chol.shape == loc.shape:
        return centred / chol
    chol = chol.expand(centred.shape[:-1] + chol.shape[-2:])
    return torch.linalg.solve_triangular(chol, centred.unsqueeze(-1), upper=False).squeeze(-1)


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
