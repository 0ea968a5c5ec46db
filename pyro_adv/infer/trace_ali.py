r"""
Adversarially Learned Inference (Dumoulin et al. 2016; Donahue et al. 2016 BiGAN;
thesis section 4.2): likelihood-free amortized inference from simulations.
"""

import warnings
from collections import OrderedDict

import pyro.poutine as poutine
import torch
from torch import nn

from pyro_adv.distributions.implicit import ImplicitValue, unwrap
from pyro_adv.infer.adversarial import AdversarialObjective
from pyro_adv.infer.checks import check_discriminator_spec
from pyro_adv.infer.choices import check_choices_reported, group_choice_score, leave_one_out
from pyro_adv.infer.divergences import get_divergence
from pyro_adv.infer.importance import PairImportanceWeights, bounded_log_ratio
from pyro_adv.infer.pairs import (
    PairLayout,
    check_pathwise_guide,
    fit_regression_bases,
    observed_sites,
    pair_latents,
    pair_rows,
)
from pyro_adv.infer.simulation import (
    SiteNodes,
    check_bank,
    draw_from_bank,
    forward_simulations,
    sample_sites,
)
from pyro_adv.infer.two_sample import TwoSampleGame
from pyro_adv.infer.util import (
    check_latents,
    group_implicit_sites,
    module_key,
    plate_frames,
)
from pyro_adv.nn.discriminators import PairDiscriminator

__all__ = ["Trace_ALI"]

#: vectorized particles per step when the guide has global latents (``num_particles=None``)
GLOBAL_PARTICLES = 64


class Trace_ALI(PairImportanceWeights, TwoSampleGame, AdversarialObjective):
    r"""
    Adversarially Learned Inference (Dumoulin et al. 2016) and BiGAN (Donahue,
    Krähenbühl and Darrell 2016): an amortized posterior :math:`q_\gamma(z \mid x)`
    (and, optionally, the model's own parameters) trained by a discriminator on
    pairs :math:`(x, z)`. The likelihood :math:`p_\theta(x \mid z)` is never
    evaluated, only simulated, so observed sites may be
    :class:`~pyro_adv.distributions.ImplicitDistribution` s or any simulator whose
    density is unknown.

    The discriminator :math:`T(x, z)` (logit :math:`v`) separates the two joint
    distributions

    .. math::

        p(x, z) = p(z)\, p_\theta(x \mid z) \quad\text{(the p side: the model run forward)},
        \qquad q(x, z) = p_D(x)\, q_\gamma(z \mid x) \quad\text{(the q side: data and guide)},

    where :math:`p_D` is the distribution of the data passed to ``svi.step``. The
    thesis's objective (eq. 32) is the expected posterior KL,

    .. math::

        \mathbb{E}_{p_D}\big[KL(q_\gamma(z \mid x) \,\|\, p(z \mid x))\big]
        = \mathbb{E}_{p_D}\,\mathbb{E}_{q_\gamma}\Big[\log
          \frac{q_\gamma(z \mid x)\, p(x)}{p_\theta(x \mid z)\, p(z)}\Big]
        = KL(q(x, z) \,\|\, p(x, z)) - KL(p_D \,\|\, p),

    and the second term does not depend on the guide. With the default
    ``divergence="reverse_kl"`` the discriminator minimizes
    :math:`\mathcal{L}^D = -\mathbb{E}_p[-e^{-v}] + \mathbb{E}_q[v - 1]` (the f-GAN
    bound of :math:`KL(q \| p)`, whose optimum is :math:`v^* = \log p(x,z)/q(x,z)`;
    the thesis trains the sigmoid output :math:`D = \sigma(-v)`, the probability of
    a guide pair, by the cross-entropy :math:`-\mathbb{E}_q \log D -
    \mathbb{E}_p \log(1 - D)`, which has the same optimum) and the guide minimizes
    the thesis's

    .. math::

        \mathcal{L}^G = \mathbb{E}_{p_D}\,\mathbb{E}_{\epsilon}\Big[\log
          \frac{D(G(\epsilon, x), x)}{1 - D(G(\epsilon, x), x)}\Big]
        = \mathbb{E}_q[-v] \approx KL(q(x, z) \,\|\, p(x, z)).

    Any divergence of :mod:`pyro_adv.infer.divergences` can replace it (the
    original ALI game is ``"minimax"``/``"nonsaturating"``). **Full ALI/BiGAN**:
    when the model has parameters (a decoder), the simulated pairs carry their
    gradient and the model minimizes the same generator loss, real-side term
    included, with the discriminator's weights frozen; at the equilibrium
    :math:`p_\theta(x) = p_D(x)` and :math:`q_\gamma(z \mid x) = p(z \mid x)`.

    **Where the discriminator looks** (one discriminator per group of latents,
    the grouping of :mod:`pyro_adv.infer.util`). Latents inside a
    :class:`~pyro.plate` are seen per element, as pairs :math:`(x_i, z_i)` with
    :math:`x_i` the observed values sharing the plate (plus any global latents);
    global latents are seen as one pair (all observed values flattened,
    :math:`z`) per particle. Latents are discriminated in the unconstrained
    space of their support. A subsampled plate simulates as many elements as the
    data minibatch, with the same indices. Losses are means over pairs.

    **Discrete choices in the guide's draws** (an
    :class:`~pyro_adv.nn.ImplicitEncoder` mixture's component, picked by learned,
    context-dependent weights :math:`w_k(x)`) have no pathwise gradient; the guide's
    loss adds their score function (Williams 1992), each pair's own generator term
    :math:`\ell_i` (:meth:`~pyro_adv.infer.divergences.Divergence.generator_terms`,
    the discriminator held fixed) against the other pairs' mean:
    :math:`\frac1n\sum_i \log w_{k_i}(x_i)\,(\ell_i - \bar\ell_{-i})/s`, with
    :math:`s` the pairs' spread of :math:`\ell`.

    **Which** :math:`p_D`, **global latents**, **oscillation** and **simulation
    banks**: the guide is trained wherever :math:`p_D` puts data, so :math:`p_D`
    should be (close to) the prior predictive; one fixed data set cannot infer
    global latents (a warning says so: put the data sets in a plate instead);
    with ``simulations=simulate(model, S, ...)`` no model runs during training
    (:func:`~pyro_adv.infer.simulation.draw_from_bank` says how pairs are drawn),
    and the model's parameters cannot then be trained. The ALI guide page of the
    documentation explains each, with the settings that work.

    One :meth:`~pyro.infer.SVI.step` updates guide, model and discriminators
    together (one backward); discriminators live in the param store as
    ``discriminator_<group>``. ``svi.step`` returns the **divergence estimate**
    (the variational lower bound of the chosen divergence between the two joints,
    e.g. of :math:`KL(q(x,z) \| p(x,z))`; it includes :math:`KL(p_D \| p)`, so it
    does not go to zero on a finite data set). :attr:`stats` keeps the last step's
    ``loss`` (= ``divergence``), ``generator_loss``, ``discriminator_loss``,
    ``discriminator_accuracy_p`` (on simulated pairs), ``discriminator_accuracy_q``
    (on data and guide pairs) and ``divergence``.

    Example (thesis section 4.2.1, amortized over the prior predictive; see
    ``examples/exponential_posterior.py`` for the full recipe)::

        encoder = ImplicitEncoder(1, 2, noise_dim=3, hidden_dims=(20, 20, 20),
                                  activation="tanh", context_transform=torch.log1p)
        bank = simulate(exponential_model, 1, num_data=100_000)   # (z, x) pairs, once
        ali = Trace_ALI(simulations=bank, context_transform=torch.log1p)
        optim = two_timescale_adam(3e-3, discriminator_lr=1.2e-2, num_steps=2500,
                                   decay=0.05, betas=(0.5, 0.9))
        svi = SVI(exponential_model, amortized_guide(encoder), optim, ali)
        for step in range(2500):
            svi.step(bank["x"][0], subsample_size=512)
        z = encoder(torch.tensor([1.0])).sample((1000,))           # (1000, 2) draws of q(z | x=1)

    :param divergence: a name from :data:`~pyro_adv.infer.divergences.DIVERGENCES`
        (default ``"reverse_kl"``, the thesis's loss) or a
        :class:`~pyro_adv.infer.divergences.Divergence`.
    :param int num_particles: vectorized guide draws (and simulations) per step;
        ``None`` (default) means 64 when the guide has global latents and 1
        otherwise (each plate element is already one pair).
    :param dict simulations: a bank from :func:`simulate` to train from instead
        of running the model forward (``None``: fresh simulations every step). It
        may be replaced between steps.
    :param discriminator: ``None`` for a :class:`~pyro_adv.nn.PairDiscriminator`
        per group whose input is **whitened** (``standardize_input="joint"``,
        :func:`~pyro_adv.nn.mlp.joint_whitening`) with the statistics of the first
        step's *simulated* pairs, an ``nn.Module`` called as ``T(x, z)`` on rows
        (models with one group), or a factory ``key -> nn.Module``. Whitening
        ``[x, z]`` in that order feeds the latents as their residuals after a linear
        regression on ``x``, at the scale of the posterior rather than of the prior
        (often many times wider); the simulated pairs fix it because they follow
        the model's joint, which the untrained guide's pairs do not.
    :param callable context_transform: applied to the observed values the
        discriminator sees, on both sides (e.g. ``torch.log1p`` for positive
        heavy-tailed data); a bijection leaves the divergence unchanged.
    :param tuple discriminator_hidden_dims: hidden widths of the default discriminator.
    :param discriminator_activation: its hidden activation.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param int discriminator_steps: discriminator updates per step (default 1).
    :param pyro.optim.PyroOptim discriminator_optim: optimizer of the extra updates.
    :param str discriminator_prefix: param-store prefix of the discriminators.
    :param float ema_decay: largest decay of the weight averages the sampling
        networks use after training (:mod:`pyro_adv.nn.averaging`); ``None``: off.
    """

    #: the two sides of the discriminator's game: ``p`` the model run forward, ``q`` data and guide
    sides = {"p": "simulated (x, z) pairs", "q": "data-and-guide (x, z) pairs"}
    #: :func:`~pyro_adv.optim.default_optimizer`'s settings: the discriminator 8 times
    #: faster than the guide and **not decayed**, GAN momentum, the guide's rate decayed
    #: 20-fold over the run. A decaying discriminator fell behind the guide: on random
    #: linear-Gaussian simulators (Table 5) the guide then collapsed along the thin
    #: posterior directions (sd 20-30% of exact; 0/4 seeds at 1500 steps, sd ratio
    #: 0.68-0.80 off); a discriminator kept at 1.6e-2 keeps it at 0.1-0.3 off
    default_optim_settings = {
        "lr": 2e-3,
        "discriminator_lr": 1.6e-2,
        "decay": 0.05,
        "decay_discriminator": False,
        "betas": (0.5, 0.9),
    }

    def __init__(
        self,
        divergence="reverse_kl",
        num_particles=None,
        simulations=None,
        discriminator=None,
        context_transform=None,
        discriminator_hidden_dims=(64, 64),
        discriminator_activation="elu",
        max_plate_nesting=float("inf"),
        discriminator_steps=1,
        discriminator_optim=None,
        discriminator_prefix="discriminator",
        ema_decay=0.999,
    ):
        if num_particles is not None and (int(num_particles) != num_particles or num_particles < 1):
            raise ValueError(
                f"Trace_ALI: num_particles must be None or a positive integer, got {num_particles}"
            )
        check_discriminator_spec(discriminator, "Trace_ALI")
        if context_transform is not None and not callable(context_transform):
            raise TypeError(
                f"Trace_ALI: context_transform must be callable, got {context_transform!r}"
            )
        self.divergence = get_divergence(divergence)
        super().__init__(
            num_particles=1 if num_particles is None else int(num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            discriminator_steps=discriminator_steps,
            discriminator_optim=discriminator_optim,
            discriminator_prefix=discriminator_prefix,
            ema_decay=ema_decay,
        )
        self._choose_particles = num_particles is None
        self._particles_given = num_particles
        self._particle_room = False  # whether _setup widened a given max_plate_nesting
        self._global_data = None  # a fingerprint of the last step's data (global groups)
        self._warned_fixed_data = False
        self.simulations = simulations
        self.discriminator_spec = discriminator
        self.context_transform = context_transform
        self.discriminator_hidden_dims = tuple(discriminator_hidden_dims)
        self.discriminator_activation = discriminator_activation

    @property
    def simulations(self):
        """The simulation bank (``None``: simulate afresh every step)."""
        return self._simulations

    @simulations.setter
    def simulations(self, bank):
        self._simulations = check_bank(bank)

    # ------------------------------------------------------------------ set-up
    def _setup(self, model, guide, args, kwargs):
        if self._choose_particles:
            self._choose_particles = False
            with poutine.block():
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
            if any(_is_global(site) for site in sample_sites(trace)):
                self.num_particles = GLOBAL_PARTICLES
                if self.max_plate_nesting != float("inf"):
                    self.max_plate_nesting += 1  # room for the particle plate, as Pyro's ELBO
                    self._particle_room = True
        super()._setup(model, guide, args, kwargs)

    def _reset(self):
        super()._reset()
        # the particle count was chosen for the previous guide's latents
        if self._particles_given is None:
            self._choose_particles = True
            self.num_particles = 1
            if self._particle_room:
                self.max_plate_nesting -= 1
                self._particle_room = False
        self._global_data = None
        self._warned_fixed_data = False

    # ------------------------------------------------------------------ traces
    def _traces(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(self._vectorized_num_particles(guide)).get_trace(
            *args, **kwargs
        )
        model_trace = poutine.trace(
            poutine.replay(self._vectorized_num_particles(model), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        return guide_trace, model_trace

    def _lead(self):
        return self.num_particles if self.num_particles > 1 else 1

    def _check_data_varies(self, group, x_fake):
        if self._warned_fixed_data or not x_fake.numel():
            return
        fingerprint = x_fake[0].detach().double().sum().item(), x_fake[0].shape
        if fingerprint == self._global_data:
            self._warned_fixed_data = True
            warnings.warn(
                f"{type(self).__name__}: the global latents {group.names} are paired with the "
                "same observed data set at every step. ALI cannot infer global latents of one "
                "fixed data set: the discriminator separates it from every simulation by x "
                "alone and the guide collapses. Amortize over simulated data sets (a plate over "
                "data sets makes the latents plate-local), or use TraceAVB_ELBO when the "
                "likelihood can be evaluated.",
                stacklevel=5,
            )
        self._global_data = fingerprint

    # ----------------------------------------------------------------- players
    def _discriminator(self, key, x, z, others=None):
        key = module_key(key)
        if key not in self.discriminators:
            # lazily sized; the input whitening comes from this batch (the simulated
            # pairs: the untrained guide's pairs would set the latents' residual scale
            # to its own spread, often far wider than the posterior's)
            self._build_discriminator(
                key,
                self.spec_factory(key, _whitened_pair_discriminator),
                torch.cat([x, z], -1),
                probe=lambda module: module(x.detach(), z.detach()),
                others=None if others is None else others(),
            )
        return self.discriminator(key, None, None)

    def _losses(self, model, guide, args, kwargs):
        name = type(self).__name__
        guide_trace, model_trace = self._traces(model, guide, args, kwargs)
        latents = check_latents(model_trace, guide_trace, name)
        if not latents:
            raise ValueError(
                f"{name}: the model has no latent site; to fit a simulator to data without "
                "latents use pyro_adv.infer.Trace_GAN"
            )
        check_pathwise_guide(guide_trace, latents, name)
        check_choices_reported(self, guide_trace, latents)
        observed = observed_sites(model_trace, name)
        groups = group_implicit_sites(guide_trace, latents, implicit_only=False)
        if isinstance(self.discriminator_spec, nn.Module) and len(groups) > 1:
            raise ValueError(
                f"{name}: one discriminator module was given but the guide has {len(groups)} "
                f"groups of latents ({list(groups)}); pass a factory key -> nn.Module instead"
            )
        names = observed + latents
        if self.simulations is None:
            real_nodes = forward_simulations(
                model,
                guide_trace,
                model_trace,
                names,
                args,
                kwargs,
                self._vectorized_num_particles,
                name,
            )
        else:
            real_nodes = draw_from_bank(
                self.simulations,
                guide_trace,
                model_trace,
                names,
                self.num_particles,
                self.max_plate_nesting,
                name,
            )
        if fit_regression_bases(guide_trace, model_trace, real_nodes, latents, observed):
            # the guide drew this step's latents before its encoder had the base
            return self._losses(model, guide, args, kwargs)
        fake_nodes = SiteNodes(OrderedDict((n, model_trace.nodes[n]) for n in names))

        layout = PairLayout(
            self.max_plate_nesting,
            self._lead(),
            self.num_particles > 1,
            self.context_transform,
            name,
        )
        # global latents first: plate-local pairs also see them
        order = sorted(groups.values(), key=lambda g: g.is_local)
        globals_u = {"real": None, "fake": None}
        totals = {}
        log_ratio = log_ratio_bounded = 0.0
        for group in order:
            sides = {}
            # the log-probability of the guide's discrete choices (an encoder's mixture
            # component with learned weights), one per fake row
            score = group_choice_score(group.names, guide_trace, self.max_plate_nesting)
            for side, nodes in (("real", real_nodes), ("fake", fake_nodes)):
                u = pair_latents(group, nodes, guide_trace, model_trace, side == "real", layout)
                rows = pair_rows(
                    group,
                    u,
                    nodes,
                    observed,
                    globals_u[side],
                    layout,
                    score=score if side == "fake" else None,
                )
                if side == "fake" and score is not None:
                    rows, score = rows[:2], rows[2]
                sides[side] = rows
            if not group.is_local:
                for side in sides:
                    u = sides[side][1]
                    prev = globals_u[side]
                    globals_u[side] = u if prev is None else torch.cat([prev, u], -1)
            (x_real, z_real), (x_fake, z_fake) = sides["real"], sides["fake"]
            if not group.is_local:
                self._check_data_varies(group, x_fake)
            # the simulated pairs fix the whitening; the guide's must be finite too
            disc = self._discriminator(
                group.key, x_real, z_real, lambda x=x_fake, z=z_fake: torch.cat([x, z], -1)
            )
            real_logits = disc(x_real.detach(), z_real.detach())
            fake_logits = disc(x_fake.detach(), z_fake.detach())
            width = x_real.shape[-1]
            with torch.enable_grad():  # the gradient penalty differentiates the critic
                group_penalty = self.divergence.penalty(
                    lambda pair, disc=disc, width=width: disc(pair[..., :width], pair[..., width:]),
                    torch.cat([x_real, z_real], -1).detach(),
                    torch.cat([x_fake, z_fake], -1).detach(),
                )
            frozen = self.frozen(disc)
            # full ALI: the model's parameters reach the loss through the simulated pairs
            model_side = x_real.requires_grad or z_real.requires_grad
            fake_out = frozen(x_fake, z_fake)
            g_loss = self.divergence.generator_loss(
                fake_out, frozen(x_real, z_real) if model_side else None
            )
            if score is not None:
                g_loss = g_loss + self._choice_surrogate(score, fake_out)
            self._game_add(totals, real_logits, fake_logits, group_penalty, g_loss)
            if self.divergence.identifies_ratio and self._weights_wanted:
                ratio, bounded = bounded_log_ratio(
                    self.divergence, fake_logits, real_logits, self._lead()
                )
                log_ratio, log_ratio_bounded = log_ratio + ratio, log_ratio_bounded + bounded
        if not (self.divergence.identifies_ratio and self._weights_wanted):
            return self._game_result(totals)
        return self._game_result(totals)._replace(
            log_weights=log_ratio_bounded, log_weights_unbounded=log_ratio
        )

    def _choice_surrogate(self, score, fake_logits):
        r"""
        The score function of the guide's discrete choices (one per fake pair): each
        pair's own generator term (the discriminator held fixed, as for the pathwise
        gradient), the other pairs' mean as baseline. Tried instead (session 12): the
        forward KL's term :math:`-e^{v}` (the pair's importance weight, stationary
        at each mode's exact mass however well its component fits). On
        :class:`~pyro_adv.models.zoo.AmortizedBimodal` its worst share errors were
        0.028 / 0.128 / 0.029 / 0.047 (seeds 0-3; these terms: 0.064 / 0.064 / 0.041
        / 0.132), but on two_moons' equal crescents one of three seeds drifted to a
        share of 0.35 (these terms: 0.41-0.47); not kept.
        """
        terms = self.divergence.generator_terms(fake_logits.detach())
        return (score.reshape(-1) * leave_one_out(terms.reshape(-1))).mean()


def _whitened_pair_discriminator(hidden_dims, activation):
    return PairDiscriminator(hidden_dims, activation, standardize_input="joint")


def _is_global(site):
    if site["is_observed"]:
        return False
    base = unwrap(site["fn"])[0]
    return not plate_frames(site) or (isinstance(base, ImplicitValue) and base.joint is not None)
