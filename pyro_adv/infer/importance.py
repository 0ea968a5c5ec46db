r"""
Importance log-weights from trained discriminators, and how far to trust them.

An implicit guide has no density, so the importance weights
:math:`\log w = \log p(x, z) - \log q(z \mid x)` that PSIS diagnostics (Yao et al.
2018) read come from a discriminator's logit. Two things keep those estimated
weights honest, and they live here, shared by the engines:

* **bounds**: a logit is clipped to the range the discriminator produced on its own
  training draws (beyond it the network extrapolates, and a tail draw's weight would
  be its guess), and the clipped draws are counted;
* **resolution**: differences between the largest log-weights below
  :data:`LOG_WEIGHT_RESOLUTION` nats (or below the disagreement of a refit ensemble)
  are not resolved, and :func:`~pyro_adv.diagnostics.importance_diagnostics` caps
  :math:`\hat k` accordingly.

:class:`RefitImportanceWeights` gives :class:`~pyro_adv.infer.TraceAVB_ELBO` its
diagnosis-time refit (an ensemble of discriminators trained further on fresh guide
draws); :class:`PairImportanceWeights` gives :class:`~pyro_adv.infer.Trace_ALI` its
weights up to a constant from the pair discriminator.
"""

import math
from typing import NamedTuple

import torch
from torch.func import functional_call

from pyro_adv.infer.checks import check_positive_int

__all__ = [
    "LOG_WEIGHT_RESOLUTION",
    "REFIT_STEPS",
    "GroupTerms",
    "PairImportanceWeights",
    "RefitImportanceWeights",
    "bounded_log_ratio",
    "log_weight_resolution",
]

#: diagnosis-time refit (see :meth:`RefitImportanceWeights.importance_log_weights`): the
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


class GroupTerms(NamedTuple):
    """One group's share of the step: its ``log q`` estimate (or ``log q - log p``
    for plain AVB) with gradient, the same bounded to the logits the discriminator
    produced on its training draws (for importance weights), the discriminator
    loss, its accuracies, and the fraction of particles whose logit was bounded."""

    log_q: torch.Tensor
    log_q_bounded: torch.Tensor
    loss: torch.Tensor
    accuracies: tuple
    extrapolated: tuple  # (fraction of logits bounded, draws with one bounded): 0-d tensors
    disagreement: torch.Tensor = None  # refit members' logit difference, shaped like log_q


class RefitImportanceWeights:
    """
    AVB's importance weights (mixed into :class:`~pyro_adv.infer.TraceAVB_ELBO`):
    per-group logits bounded to the range seen in training, and at diagnosis time a
    refit ensemble of discriminators (:meth:`importance_log_weights`). The engine's
    ``_discriminate`` calls :meth:`_bounded_terms` (training) or
    :meth:`_refit_terms` (while a refit diagnosis runs: ``self._refit`` is its step
    count), and sizes the discriminator's positives with :meth:`_positive_draws`.
    """

    #: steps of the diagnosis-time refit while one runs (see importance_log_weights)
    _refit = None

    def _bounded_terms(self, t, seen, d_loss, accs, disagreement=None):
        """The group's terms with ``t`` bounded to the range of the logits ``seen``."""
        low, high = seen.min(0, keepdim=True).values, seen.max(0, keepdim=True).values
        t_detached = t.detach()
        bounded = torch.maximum(torch.minimum(t_detached, high), low)
        clipped = bounded != t_detached
        # tensors until the statistics are read (no device read a step)
        outside = clipped.to(t_detached.dtype).mean()
        draws = clipped.reshape(clipped.shape[0], -1).any(-1).sum()
        return GroupTerms(t, bounded, d_loss, accs, (outside, draws), disagreement)

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

    def _refit_terms(self, disc, real_in, fake_in, z_in, steps, draw_reference=None):
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
        if draw_reference is None:  # the whitened Gaussian reference: N(0, I)
            fresh = torch.randn(
                (members * pool,) + fake_in[-1].shape[1:], dtype=last.dtype, device=last.device
            )
        else:
            fresh = draw_reference(members * pool).reshape((-1,) + fake_in[-1].shape[1:])
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


class PairImportanceWeights:
    """
    ALI's importance weights (mixed into :class:`~pyro_adv.infer.Trace_ALI`): the
    pair discriminator's log-ratios summed over a draw's pairs, known up to a
    constant per data set, bounded by :func:`bounded_log_ratio`.
    """

    #: :meth:`importance_log_weights` knows the weights up to a constant per data set
    log_weights_up_to_constant = True
    #: nats below which the estimated log-weights are not resolved (see
    #: :func:`~pyro_adv.diagnostics.importance_diagnostics`)
    LOG_WEIGHT_RESOLUTION = LOG_WEIGHT_RESOLUTION

    def importance_log_weights(self, model, guide, *args, num_samples=1000, bounded=True, **kwargs):
        r"""
        Importance log-weights of ``num_samples`` joint draws from the guide for
        the data in ``args``/``kwargs``, **up to an additive constant**, from the
        trained discriminator. Nothing is trained.

        The discriminator's logit estimates the log ratio of the two joints,

        .. math::

            v(x, z) \approx \log \frac{p(z)\, p(x \mid z)}{p_D(x)\, q(z \mid x)}
            = \underbrace{\log p(x, z) - \log q(z \mid x)}_{\log w} - \log p_D(x),

        so, summed over the pairs of one draw, :math:`\sum v = \log w - \log p_D(x)`
        with a constant that depends on the data alone (:math:`p_D`, the training
        data's distribution, has no known density). Self-normalized quantities, the
        Pareto :math:`\hat k` and the effective sample size of PSIS (Yao et al.
        2018), do not see the constant; evidence estimates would, so
        :func:`~pyro_adv.diagnostics.diagnose_guide` leaves them out. The weights
        are only as good as the discriminator, and only where it saw both
        simulated and guide pairs during training (``x`` in the range of the
        training data).

        With ``bounded=True`` (default) each pair's log-ratio is clipped to the range
        the discriminator produced on as many freshly simulated pairs: beyond it the
        network extrapolates, and the weight of a guide pair there would be its
        guess. ``diagnostic_stats["extrapolated_draws"]`` counts the draws with a
        clipped pair. :attr:`LOG_WEIGHT_RESOLUTION` (nats) goes to
        :func:`~pyro_adv.diagnostics.importance_diagnostics` as the resolution of
        these estimated weights.

        Example::

            diag = diagnose_guide(exponential_model, amortized_guide(encoder),
                                  torch.tensor([30.0]), objective=ali, num_samples=4000)
            diag.khat, diag.ess

        :param int num_samples: guide draws (vectorized particles).
        :param bool bounded: clip the log-ratios to the range seen on simulated pairs.
        :returns: a tensor of shape ``(num_samples,)``.
        :raises RuntimeError: before the first training step (no discriminator yet).
        :raises ValueError: for divergences whose critic does not estimate a log
            density ratio (Wasserstein, total variation).
        """
        name = type(self).__name__
        if not self.discriminators:
            raise RuntimeError(
                f"{name}.importance_log_weights: the discriminator has not been trained; "
                "run svi.step(...) first"
            )
        if not self.divergence.identifies_ratio:
            raise ValueError(
                f"{name}.importance_log_weights: the {self.divergence.name} critic does not "
                "estimate a log density ratio; train with an f-divergence (e.g. the default "
                "'reverse_kl') to get importance weights"
            )
        if int(num_samples) != num_samples or num_samples < 2:
            raise ValueError(f"{name}: num_samples must be an integer >= 2, got {num_samples}")
        result = self._evaluate(model, guide, args, kwargs, num_samples)
        #: statistics of the latest diagnostic evaluation (not of a training step)
        self.diagnostic_stats = dict(
            result.stats,
            # a draw with a clipped pair has a different sum
            extrapolated_draws=int((result.log_weights != result.log_weights_unbounded).sum()),
            log_weight_resolution=self.LOG_WEIGHT_RESOLUTION,
        )
        return result.log_weights if bounded else result.log_weights_unbounded


def bounded_log_ratio(divergence, q_logits, p_logits, lead):
    r"""
    A pair discriminator's log-ratio :math:`v = \log p(x, z) - \log q(x, z)` on the
    guide's pairs (``q_logits``), summed per draw (rows are draw-major, ``lead``
    draws), and the same with each pair's ratio clipped to the range it had on the
    simulated pairs (``p_logits``): beyond that range the network extrapolates, and a
    guide pair's weight would be its guess.

    :returns: ``(log_ratio, log_ratio_bounded)``, each of shape ``(lead,)``, detached.
    """
    ratio = divergence.log_ratio(q_logits.detach())
    seen = divergence.log_ratio(p_logits.detach())
    bounded = ratio.clamp(seen.min(), seen.max())
    return ratio.reshape(lead, -1).sum(-1), bounded.reshape(lead, -1).sum(-1)


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


def _rows(x, index):
    """Draws ``index`` (a slice or index tensor on dim 0) of ``x``."""
    return x[index]
