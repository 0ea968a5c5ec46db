r"""
Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari and Gelman 2018)
for amortized guides.

If :math:`\tilde z \sim p(z)`, :math:`\tilde x \sim p(x \mid \tilde z)` and
:math:`z_1, \dots, z_L \sim q(z \mid \tilde x)`, then for an exact posterior
:math:`q = p(z \mid x)` the rank statistic

.. math:: r = \#\{l : z_l < \tilde z\} \in \{0, \dots, L\}

is uniform, for every scalar component of :math:`z`. A guide that is too narrow
gives U-shaped ranks, one that is too wide gives hump-shaped ranks, and a biased
one gives skewed ranks. An amortized guide (e.g. an
:class:`~pyro_adv.nn.ImplicitEncoder` trained with
:class:`~pyro_adv.infer.TraceAVB_ELBO`) is cheap to run on every simulated
:math:`\tilde x`, which makes SBC practical for it.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from pyro import poutine
from pyro.infer import Predictive
from scipy import stats

from pyro_adv.diagnostics._util import latent_and_observed_sites, seeded

__all__ = ["SBCResult", "ecdf_confidence_band", "rank_uniformity_test", "sbc"]


def _element_names(name, shape):
    if len(shape) == 0:
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def rank_uniformity_test(ranks, num_ranks, num_bins=None):
    r"""
    Chi-square test of uniformity of SBC ranks (Talts et al. 2018, section 4.1):
    ranks in :math:`\{0, \dots, L\}` are put in ``num_bins`` equal bins and the
    counts compared with their expectation.

    :param ranks: integer ranks, ``(num_simulations,)`` or
        ``(num_simulations, num_dims)``.
    :param int num_ranks: number of possible ranks, :math:`L + 1`.
    :param int num_bins: number of bins; default: the largest divisor of
        ``num_ranks`` that is at most 20 and leaves at least 5 expected counts
        per bin.
    :returns: ``(statistics, p_values)``, numpy arrays of shape ``(num_dims,)``.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    num_sims = ranks.shape[0]
    if ranks.min() < 0 or ranks.max() >= num_ranks:
        raise ValueError(f"ranks must lie in [0, {num_ranks - 1}]")
    if num_bins is None:
        candidates = [
            b for b in range(2, min(20, num_ranks) + 1) if num_ranks % b == 0 and num_sims / b >= 5
        ]
        if not candidates:
            raise ValueError(
                f"too few simulations ({num_sims}) for a chi-square test with at least 5 "
                "expected counts in each of 2 bins; use num_simulations >= 10"
            )
        num_bins = max(candidates)
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    # bins of equal width in rank space; when num_bins does not divide num_ranks the
    # expected counts are proportional to the number of ranks each bin holds
    edges = np.linspace(0, num_ranks, num_bins + 1)
    bin_of_rank = np.searchsorted(edges, np.arange(num_ranks), side="right") - 1
    ranks_per_bin = np.bincount(bin_of_rank, minlength=num_bins)
    expected = num_sims * ranks_per_bin / num_ranks
    chi2, p = [], []
    for d in range(ranks.shape[1]):
        counts = np.bincount(bin_of_rank[ranks[:, d]], minlength=num_bins)
        result = stats.chisquare(counts, expected)
        chi2.append(result.statistic)
        p.append(result.pvalue)
    return np.asarray(chi2), np.asarray(p)


def ecdf_confidence_band(num_simulations, num_ranks, prob=0.95, num_trials=1000, seed=0):
    r"""
    Simultaneous confidence band for the ECDF difference of uniform ranks
    (Säilynoja, Bürkner and Vehtari 2022, the simulation method): pointwise
    binomial intervals whose level is adjusted so that the whole ECDF of
    ``num_simulations`` uniform ranks stays inside with probability ``prob``.

    :param int num_simulations: number of ranks in the ECDF.
    :param int num_ranks: number of possible ranks, :math:`L + 1`.
    :param float prob: simultaneous coverage.
    :param int num_trials: simulated uniform rank sets used to adjust the level.
    :param int seed: seeds the simulation.
    :returns: ``(z, lower, upper)``: evaluation points in (0, 1] (fractional ranks)
        and the band of :math:`F(z) - z`.
    """
    n = int(num_simulations)
    z = np.arange(1, num_ranks + 1) / num_ranks  # ECDF evaluated after each rank value
    rng = np.random.default_rng(seed)
    sims = rng.integers(0, num_ranks, size=(num_trials, n))
    counts = np.stack([np.bincount(s, minlength=num_ranks) for s in sims]).cumsum(1)
    # the smallest two-sided binomial tail probability along each simulated ECDF
    lower_tail = stats.binom.cdf(counts, n, z)
    upper_tail = stats.binom.sf(counts - 1, n, z)
    gamma = 2 * np.minimum(lower_tail, upper_tail).min(1)
    adjusted = np.quantile(gamma, 1 - prob)
    lower = stats.binom.ppf(adjusted / 2, n, z) / n - z
    upper = stats.binom.ppf(1 - adjusted / 2, n, z) / n - z
    return z, lower, upper


@dataclass
class SBCResult:
    """
    Result of :func:`sbc`.

    :ivar numpy.ndarray ranks: ``(num_simulations, num_dims)`` integer ranks.
    :ivar list names: one name per dimension, e.g. ``"z[0,1]"``.
    :ivar int num_posterior_samples: :math:`L` (ranks lie in ``0..L``).
    :ivar numpy.ndarray chi2: chi-square statistic per dimension.
    :ivar numpy.ndarray p_values: uniformity p-value per dimension.
    :ivar float p_value: Bonferroni-combined p-value, ``min(1, D * min(p))``.

    :func:`pyro_adv.plotting.plot_sbc_ecdf` draws it (diagnostics never import
    plotting: the arrow runs from plotting to diagnostics only).
    """

    ranks: np.ndarray
    names: list
    num_posterior_samples: int
    chi2: np.ndarray
    p_values: np.ndarray
    true_values: dict = field(default_factory=dict, repr=False)

    @property
    def num_ranks(self):
        return self.num_posterior_samples + 1

    @property
    def p_value(self):
        return float(min(1.0, self.p_values.min() * len(self.p_values)))

    def passed(self, alpha=0.01):
        """Whether the combined uniformity test does not reject at level ``alpha``."""
        return self.p_value > alpha

    def __repr__(self):
        return (
            f"SBCResult(num_simulations={self.ranks.shape[0]}, dims={len(self.names)}, "
            f"L={self.num_posterior_samples}, p_value={self.p_value:.3g}, "
            f"min_p={self.p_values.min():.3g})"
        )


def _replace_data(args, kwargs, data_arg, value):
    args, kwargs = list(args), dict(kwargs)
    if isinstance(data_arg, int):
        if data_arg >= len(args):
            raise ValueError(
                f"data_arg={data_arg} but the model was given {len(args)} positional argument(s)"
            )
        args[data_arg] = value
    else:
        kwargs[data_arg] = value
    return tuple(args), kwargs


def sbc(
    model,
    guide,
    *args,
    observed_site=None,
    latent_sites=None,
    num_simulations=200,
    num_posterior_samples=99,
    data_arg=0,
    num_bins=None,
    parallel=True,
    seed=0,
    **kwargs,
):
    r"""
    Simulation-based calibration of an amortized guide (Talts et al. 2018).

    For each of ``num_simulations`` rounds: draw :math:`\tilde z` from the prior
    and :math:`\tilde x` from the model by running ``model(*args, **kwargs)`` with
    the data argument as given (typically ``None``, so the observed site is
    sampled); then draw ``num_posterior_samples`` latents from
    ``guide(*args', **kwargs')``, where the data argument ``data_arg`` is replaced
    by :math:`\tilde x`; then rank :math:`\tilde z` among them, per scalar
    component of each latent site. The ranks are tested for uniformity with
    :func:`rank_uniformity_test`.

    Example (amortized encoder on the thesis's exponential model)::

        result = sbc(exponential_model, guide, None, num_data=1,
                     observed_site="x", latent_sites=["z"],
                     num_simulations=200, num_posterior_samples=99)
        result.p_values      # one per component: z[0,0], z[0,1]
        plot_sbc_ecdf(result)  # from pyro_adv.plotting

    Choose ``num_posterior_samples + 1`` divisible by a handful of bin counts
    (99, 199, ...); with many posterior draws, ties are impossible for
    continuous latents.

    :param callable model: the Pyro model; with ``*args, **kwargs`` it must
        simulate the observed site.
    :param callable guide: the amortized guide, taking the same arguments with
        the data in place.
    :param str observed_site: the model site that holds the data (required).
    :param list latent_sites: latent sites to calibrate (default: every site the
        guide samples that the model also has).
    :param int num_simulations: number of prior simulations (at least 10).
    :param int num_posterior_samples: guide draws per simulation, :math:`L`.
    :param data_arg: position (int) or keyword (str) of the data argument of
        model and guide.
    :param int num_bins: bins of the chi-square test (see :func:`rank_uniformity_test`).
    :param bool parallel: vectorize the guide draws with a plate (requires the
        guide to declare batch dimensions with :class:`~pyro.plate`).
    :param int seed: seeds everything (the caller's random state is restored).
    :rtype: SBCResult
    """
    if observed_site is None:
        raise ValueError("sbc needs observed_site, the name of the model's data site")
    if num_simulations < 10:
        raise ValueError(f"num_simulations must be at least 10, got {num_simulations}")
    if num_posterior_samples < 1:
        raise ValueError(f"num_posterior_samples must be positive, got {num_posterior_samples}")
    if not isinstance(data_arg, (int, str)):
        raise TypeError(f"data_arg must be a position (int) or keyword (str), got {data_arg!r}")
    ranks, names, true_values = [], None, {}
    with seeded(seed), torch.no_grad():
        for i in range(num_simulations):
            sim = poutine.trace(model).get_trace(*args, **kwargs)
            latent, observed = latent_and_observed_sites(sim)
            if i == 0:
                sim_names = set(latent)
                if observed_site not in sim.nodes:
                    raise ValueError(f"the model has no site named {observed_site!r}")
                if observed_site in observed:
                    raise ValueError(
                        f"the model observed {observed_site!r} instead of simulating it: pass "
                        "the data argument as None (or whatever makes the model simulate)"
                    )
                if latent_sites is None:
                    latent_sites = [n for n in latent if n != observed_site]
                missing = [n for n in latent_sites if n not in sim_names]
                if missing:
                    raise ValueError(f"latent_sites {missing} are not latent sites of the model")
            x = sim.nodes[observed_site]["value"]
            guide_args, guide_kwargs = _replace_data(args, kwargs, data_arg, x)
            draws = Predictive(
                guide,
                num_samples=num_posterior_samples,
                return_sites=list(latent_sites),
                parallel=parallel,
            )(*guide_args, **guide_kwargs)
            row, row_names = [], []
            for name in latent_sites:
                if name not in draws:
                    raise ValueError(f"the guide does not sample latent site {name!r}")
                truth = sim.nodes[name]["value"]
                post = draws[name].reshape((num_posterior_samples,) + truth.shape)
                row.append((post < truth).sum(0).reshape(-1))
                row_names += _element_names(name, tuple(truth.shape))
                true_values.setdefault(name, []).append(truth)
            if names is None:
                names = row_names
            elif row_names != names:
                raise ValueError("latent shapes changed between simulations; fix the data size")
            ranks.append(torch.cat(row))
    ranks = torch.stack(ranks).cpu().numpy().astype(np.int64)
    chi2, p = rank_uniformity_test(ranks, num_posterior_samples + 1, num_bins)
    true_values = {k: torch.stack(v) for k, v in true_values.items()}
    return SBCResult(ranks, names, int(num_posterior_samples), chi2, p, true_values)
