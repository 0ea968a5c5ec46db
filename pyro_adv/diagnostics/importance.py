r"""
Importance-sampling diagnostics of a guide: Pareto :math:`\hat k`, effective
sample size and the importance-weighted evidence.

For draws :math:`z_s \sim q(z \mid x)` the importance log-weights are

.. math:: \log w_s = \log p(x, z_s) - \log q(z_s \mid x).

An implicit guide has no :math:`\log q`; :class:`~pyro_adv.infer.TraceAVB_ELBO`
estimates it with its discriminator (:math:`T \approx \log q - \log r`), and its
``importance_log_weights`` returns the estimated :math:`\log w`.
:class:`~pyro_adv.infer.Trace_ALI`'s discriminator estimates
:math:`\log w - \log p_D(x)` (its fake side pairs the training data's distribution
:math:`p_D` with the guide), so its weights are known up to a constant per data
set: enough for :math:`\hat k` and the effective sample size, not for the
evidence. Explicit guides give exact weights. From the weights:

* **Pareto** :math:`\hat k` (PSIS; Vehtari et al. 2015/2024, Yao et al. 2018):
  the shape of a generalized Pareto distribution fitted to the largest weights.
  :math:`\hat k < 0.5`: the weights have finite variance; :math:`\hat k < 0.7`:
  importance sampling, and the guide as an approximation, can be trusted;
  :math:`\hat k \ge 0.7`: the guide misses posterior mass (typically it is too
  narrow) and estimates based on it are unreliable.
* **Effective sample size** :math:`(\sum_s w_s)^2 / \sum_s w_s^2` (Kish).
* **Evidence** :math:`\log \hat p(x) = \log \frac1S \sum_s w_s`, a stochastic
  lower bound on :math:`\log p(x)` in expectation (Burda et al. 2016).

:math:`\hat k` reads the *shape* of the largest weights, whatever their scale. For a
good guide the weights are nearly constant, and a discriminator's estimate of them
then carries its own error's shape: a few tenths of a nat at the guide's extreme
draws can read as :math:`\hat k > 1` (measured: Table 7). So weights estimated by a
discriminator come with a *resolution* in nats, and where every weight of the PSIS
tail lies within it of the tail's threshold (a tail flat as far as the weights can
tell), :math:`\hat k` is capped at 0 (see :func:`importance_diagnostics`). Guides
that miss posterior mass have tails spanning many nats and are not affected.

The core functions take a plain tensor of log weights, so they work with any
source of weights.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from pyro_adv.diagnostics._util import (
    as_numpy,
    guess_max_plate_nesting,
    per_draw_log_prob,
    seeded,
    vectorized,
)

__all__ = [
    "ImportanceDiagnostics",
    "diagnose_guide",
    "effective_sample_size",
    "importance_diagnostics",
    "importance_log_weights",
    "log_evidence",
    "psis",
]

#: Pareto k-hat above which importance sampling (and the guide) is not to be trusted
KHAT_THRESHOLD = 0.7


def _check_log_weights(log_weights, min_size=2):
    lw = as_numpy(log_weights, "log_weights")
    if lw.ndim != 1:
        raise ValueError(f"log_weights must be 1-D (one per draw), got shape {lw.shape}")
    if lw.size < min_size:
        raise ValueError(f"need at least {min_size} log weights, got {lw.size}")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("log_weights contain NaN or +inf; the guide or model produced bad values")
    return lw


def _arviz_psislw(lw, r_eff):
    import arviz as az

    if hasattr(az, "psislw") and int(az.__version__.split(".")[0]) < 1:
        smoothed, khat = az.psislw(lw, reff=r_eff)
        return np.asarray(smoothed), float(np.asarray(khat))
    # ArviZ >= 1 moved the array-level PSIS to arviz-stats
    from arviz_stats.base import array_stats

    smoothed, khat = array_stats.psislw(lw, r_eff=r_eff, axis=-1)
    smoothed = np.asarray(smoothed)
    if np.corrcoef(smoothed, lw)[0, 1] < 0:
        # some versions take log-likelihoods (negated log ratios): smoothing keeps the
        # order of the weights, so a reversed order means the sign convention differs
        smoothed, khat = array_stats.psislw(-lw, r_eff=r_eff, axis=-1)
    return np.asarray(smoothed), float(np.asarray(khat))


def psis(log_weights, r_eff=1.0):
    r"""
    Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao and Gabry
    2024) through ArviZ.

    :param log_weights: importance log-weights, one per draw (tensor or array).
    :param float r_eff: relative efficiency of the draws (1 for independent draws).
    :returns: ``(smoothed_log_weights, khat)``: normalized smoothed log-weights (a
        numpy array, :math:`\log \sum \exp = 0`) and the Pareto shape estimate.
    :rtype: tuple
    """
    lw = _check_log_weights(log_weights, min_size=5)
    finite = np.isfinite(lw)
    if not finite.any():
        raise ValueError("all log_weights are -inf: no draw has positive model density")
    with warnings.catch_warnings():
        # ArviZ warns about k-hat > 0.7 itself; the caller gets it in the result
        warnings.simplefilter("ignore")
        smoothed, khat = _arviz_psislw(lw, float(r_eff))
    return smoothed, khat


def effective_sample_size(log_weights):
    r"""
    Kish's effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2` of the
    self-normalized weights, computed in log space.

    :param log_weights: importance log-weights, one per draw.
    :rtype: float
    """
    lw = _check_log_weights(log_weights, min_size=1)
    lw = lw - lw.max()
    return float(np.exp(2 * _logsumexp(lw) - _logsumexp(2 * lw)))


def _logsumexp(x):
    m = x.max()
    if not np.isfinite(m):
        return m
    return m + math.log(np.exp(x - m).sum())


def log_evidence(log_weights):
    r"""
    The importance-weighted evidence estimate
    :math:`\log \frac1S \sum_s \exp(\log w_s)` (Burda, Grosse and Salakhutdinov 2016):
    a lower bound on :math:`\log p(x)` in expectation, tight as the guide approaches
    the posterior.

    :param log_weights: importance log-weights, one per draw.
    :rtype: float
    """
    lw = _check_log_weights(log_weights, min_size=1)
    return float(_logsumexp(lw) - math.log(lw.size))


@dataclass
class ImportanceDiagnostics:
    """
    Importance diagnostics of a set of draws (see :func:`importance_diagnostics`).

    :ivar float khat: Pareto shape estimate; below 0.7 means "trust it".
    :ivar float ess: effective sample size of the Pareto-smoothed weights.
    :ivar float ess_raw: effective sample size of the raw weights.
    :ivar float log_evidence: importance-weighted estimate of ``log p(x)`` (NaN when
        the weights are known up to a constant only).
    :ivar float elbo: mean log weight, the ELBO estimate (NaN likewise).
    :ivar int num_samples: number of draws.
    :ivar numpy.ndarray log_weights: the raw log-weights.
    :ivar numpy.ndarray smoothed_log_weights: normalized PSIS log-weights.
    :ivar float khat_psis: PSIS's estimate before the resolution check (equal to
        ``khat`` unless the tail was flat within the resolution).
    :ivar float tail_span: nats between the largest log-weight and the PSIS tail's
        threshold (the smallest of the tail).
    :ivar float resolution: nats below which estimated log-weights are not resolved
        (``None`` for exact weights).
    """

    khat: float
    ess: float
    ess_raw: float
    log_evidence: float
    elbo: float
    num_samples: int
    log_weights: np.ndarray
    smoothed_log_weights: np.ndarray
    khat_psis: float = math.nan
    tail_span: float = math.nan
    resolution: float = None

    @property
    def reliable(self):
        """Whether ``khat < 0.7`` (Yao et al. 2018)."""
        return bool(self.khat < KHAT_THRESHOLD)

    def __repr__(self):
        verdict = "reliable" if self.reliable else "UNRELIABLE"
        if self.khat != self.khat_psis and self.khat_psis == self.khat_psis:
            verdict += (
                f"; PSIS {self.khat_psis:.2f} on a tail flat within the weights' resolution "
                f"({self.tail_span:.2f} <= {self.resolution:.2f} nats)"
            )
        if math.isnan(self.log_evidence):
            return (
                f"ImportanceDiagnostics(khat={self.khat:.3f} [{verdict}], ess={self.ess:.1f}/"
                f"{self.num_samples}, weights up to a constant: no evidence estimate)"
            )
        return (
            f"ImportanceDiagnostics(khat={self.khat:.3f} [{verdict}], ess={self.ess:.1f}/"
            f"{self.num_samples}, log_evidence={self.log_evidence:.4f}, elbo={self.elbo:.4f})"
        )


def _tail_span(lw, r_eff=1.0):
    """Nats from the PSIS tail's threshold to the largest log-weight."""
    finite = np.sort(lw[np.isfinite(lw)])
    tail = int(math.ceil(min(0.2 * finite.size, 3 * math.sqrt(finite.size / r_eff))))
    tail = max(1, min(tail, finite.size - 1))
    return float(finite[-1] - finite[-tail - 1])


def importance_diagnostics(log_weights, r_eff=1.0, up_to_constant=False, resolution=None):
    r"""
    Pareto :math:`\hat k`, effective sample sizes and the evidence estimate from
    importance log-weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s \mid x)`
    (Yao, Vehtari, Simpson and Gelman 2018, "Yes, but did it work?").

    Example::

        lw = importance_log_weights(model, guide, data, num_samples=2000)
        diag = importance_diagnostics(lw)
        assert diag.khat < 0.7, "the guide misses posterior mass"

    :param log_weights: a 1-D tensor or array of at least 5 log-weights.
    :param float r_eff: relative efficiency of the draws (1 for independent draws).
    :param bool up_to_constant: the log-weights are known up to an additive
        constant only (e.g. from :meth:`~pyro_adv.infer.Trace_ALI.importance_log_weights`):
        :math:`\hat k` and the effective sample sizes are unaffected, the evidence
        and ELBO estimates are reported as NaN.
    :param float resolution: for *estimated* log-weights (a discriminator's), the
        error in nats below which they are not resolved. :math:`\hat k` reads the
        shape of the largest weights whatever their scale, so for a good guide,
        whose weights are nearly constant, it reads the estimator's error instead.
        When every weight of the PSIS tail lies within ``resolution`` nats of the
        tail's threshold (``tail_span <= resolution``), the tail is flat as far as
        the weights can tell, so bounded, with all moments finite: :math:`\hat k`
        is capped at 0 (PSIS's own value is kept as ``khat_psis``). A guide that
        misses posterior mass has a tail spanning several nats (a Gaussian guide
        too narrow, with 4000 draws: about 3.2 at :math:`\hat k = 0.7`, 4.3 at
        sd / 4) and is not affected; near-flat tails (below 1 nat: true
        :math:`\hat k` below about 0.15 for that family) are. ``None`` (exact weights): no cap.
    :rtype: ImportanceDiagnostics
    """
    lw = _check_log_weights(log_weights, min_size=5)
    smoothed, khat = psis(lw, r_eff)
    khat_psis, span = khat, _tail_span(lw, r_eff)
    if resolution is not None and span <= resolution:
        khat = min(khat, 0.0)
    finite = lw[np.isfinite(lw)]
    elbo = float(finite.mean()) if finite.size == lw.size else -math.inf
    return ImportanceDiagnostics(
        khat=khat,
        ess=effective_sample_size(smoothed),
        ess_raw=effective_sample_size(lw),
        log_evidence=math.nan if up_to_constant else log_evidence(lw),
        elbo=math.nan if up_to_constant else elbo,
        num_samples=int(lw.size),
        log_weights=lw,
        smoothed_log_weights=smoothed,
        khat_psis=khat_psis,
        tail_span=span,
        resolution=None if resolution is None else float(resolution),
    )


def importance_log_weights(
    model,
    guide,
    *args,
    num_samples=1000,
    objective=None,
    seed=None,
    max_plate_nesting=None,
    **kwargs,
):
    r"""
    Importance log-weights :math:`\log p(x, z_s) - \log q(z_s \mid x)` of
    ``num_samples`` joint draws from ``guide``.

    With an ``objective`` that estimates implicit densities (e.g. the
    :class:`~pyro_adv.infer.TraceAVB_ELBO` the guide was trained with), its
    ``importance_log_weights`` supplies them, with :math:`\log q` from the
    discriminator; a :class:`~pyro_adv.infer.Trace_ALI` supplies them up to an
    additive constant that depends on the data alone (its discriminator sees
    joints :math:`p(x, z)` against :math:`p_D(x)\, q(z \mid x)`). Without one the
    guide must have a density (every guide site scoreable); the weights are then
    exact. Draws are vectorized with a plate, so
    model and guide must declare their batch dimensions with :class:`~pyro.plate`.

    :param callable model: the Pyro model.
    :param callable guide: the guide, called with the model's arguments.
    :param int num_samples: number of joint draws.
    :param objective: an objective with an ``importance_log_weights`` method, for
        implicit guides (``svi.loss`` works too): ``TraceAVB_ELBO`` or ``Trace_ALI``.
    :param int seed: seeds the draws (the caller's random state is restored).
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :returns: a tensor of shape ``(num_samples,)``.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    num_samples = int(num_samples)
    # SVI keeps only the objective's bound ``loss`` method: accept that too
    objective = getattr(objective, "__self__", objective)
    with seeded(seed), torch.no_grad():
        if objective is not None:
            if not hasattr(objective, "importance_log_weights"):
                raise TypeError(
                    f"{type(objective).__name__} cannot estimate importance weights: "
                    "pass a TraceAVB_ELBO or Trace_ALI (or None for an explicit guide)"
                )
            lw = objective.importance_log_weights(
                model, guide, *args, num_samples=num_samples, **kwargs
            )
            return lw.detach().reshape(-1)
        if max_plate_nesting is None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(
                *args, **kwargs
            )
            max_plate_nesting = guess_max_plate_nesting(model_trace, guide_trace)
        guide_trace = poutine.trace(vectorized(guide, num_samples, max_plate_nesting)).get_trace(
            *args, **kwargs
        )
        model_trace = poutine.trace(
            poutine.replay(vectorized(model, num_samples, max_plate_nesting), guide_trace)
        ).get_trace(*args, **kwargs)
        log_q = per_draw_log_prob(guide_trace, num_samples, max_plate_nesting)
        if log_q is None:
            raise ValueError(
                "the guide has implicit sites, so log q is unknown: pass the objective it "
                "was trained with, e.g. importance_log_weights(model, guide, data, "
                "objective=TraceAVB_ELBO(...)), whose discriminator estimates it"
            )
        log_p = per_draw_log_prob(model_trace, num_samples, max_plate_nesting)
        return log_p - log_q


def diagnose_guide(model, guide, *args, num_samples=1000, objective=None, seed=None, **kwargs):
    r"""
    :func:`importance_log_weights` followed by :func:`importance_diagnostics`.

    Example::

        diag = diagnose_guide(model, guide, data, objective=svi.loss, num_samples=4000)
        print(diag)   # ImportanceDiagnostics(khat=0.21 [reliable], ess=...)

    With a :class:`~pyro_adv.infer.Trace_ALI` objective the weights are known up
    to a constant: :math:`\hat k` and the ESS are reported, the evidence is NaN.
    With an objective, the resolution of its estimated weights
    (``objective.diagnostic_stats["log_weight_resolution"]``) goes to
    :func:`importance_diagnostics`.

    :rtype: ImportanceDiagnostics
    """
    lw = importance_log_weights(
        model, guide, *args, num_samples=num_samples, objective=objective, seed=seed, **kwargs
    )
    objective = getattr(objective, "__self__", objective)
    stats = getattr(objective, "diagnostic_stats", None) or {}
    return importance_diagnostics(
        lw,
        up_to_constant=getattr(objective, "log_weights_up_to_constant", False),
        resolution=stats.get("log_weight_resolution") if objective is not None else None,
    )
