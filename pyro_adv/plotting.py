r"""
The thesis's figures: contours of an (unnormalized) 2-D log density with samples
on top (thesis figures 7-8), 1-D densities against histograms, training curves
of both players, and SBC rank plots.

Every function draws on a given matplotlib ``ax`` (or a new figure), returns
its axes or figure, and never calls ``plt.show()``.
"""

import numpy as np
import torch

from pyro_adv.diagnostics.sbc import ecdf_confidence_band

__all__ = [
    "plot_density_1d",
    "plot_density_contours",
    "plot_sbc_ecdf",
    "plot_training_history",
]


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    return ax


def _numpy(x, name):
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _evaluate(log_density, points):
    """``log_density`` on a numpy array of points, through torch."""
    with torch.no_grad():
        values = log_density(torch.as_tensor(points, dtype=torch.get_default_dtype()))
    values = _numpy(values, "log_density values")
    if values.shape != points.shape[:-1]:
        raise ValueError(
            f"log_density returned shape {values.shape} for points of shape {points.shape}; "
            "it must return one value per point"
        )
    return values


def _limits(samples, lim, axis, default=(-3.0, 3.0)):
    if lim is not None:
        return tuple(lim)
    if samples is None:
        return default
    lo, hi = np.quantile(samples[:, axis], [0.005, 0.995])
    pad = 0.25 * (hi - lo) + 1e-6
    return lo - pad, hi + pad


def plot_density_contours(
    log_density=None,
    samples=None,
    ax=None,
    xlim=None,
    ylim=None,
    grid_size=100,
    levels=8,
    max_points=1000,
    contour_kwargs=None,
    scatter_kwargs=None,
):
    r"""
    Contours of :math:`\exp(\log p(z))` for a 2-D (unnormalized) log density, with
    samples scattered on top, as in the thesis's figures 7-8.

    Example::

        ax = plot_density_contours(lambda z: exponential_log_joint(z, 30.0),
                                   samples=guide_samples, xlim=(-8, 8), ylim=(-8, 8))

    :param callable log_density: maps a tensor ``(..., 2)`` to log densities
        ``(...)``; may be unnormalized. Optional (samples alone).
    :param samples: ``(n, 2)`` samples to scatter (tensor or array); at most
        ``max_points`` are drawn.
    :param ax: matplotlib axes (a new figure if omitted).
    :param xlim: x range of the grid (default: from the samples, else (-3, 3)).
    :param ylim: y range of the grid.
    :param int grid_size: grid points per axis.
    :param levels: number (or list) of contour levels.
    :param int max_points: most samples drawn.
    :param dict contour_kwargs: passed to ``ax.contour``.
    :param dict scatter_kwargs: passed to ``ax.scatter``.
    :returns: the axes.
    """
    if log_density is None and samples is None:
        raise ValueError("plot_density_contours needs a log_density, samples, or both")
    ax = _axes(ax)
    if samples is not None:
        samples = _numpy(samples, "samples")
        if samples.ndim != 2 or samples.shape[1] != 2:
            raise ValueError(f"samples must have shape (n, 2), got {samples.shape}")
    xlim = _limits(samples, xlim, 0)
    ylim = _limits(samples, ylim, 1)
    if log_density is not None:
        xs = np.linspace(*xlim, grid_size)
        ys = np.linspace(*ylim, grid_size)
        grid = np.stack(np.meshgrid(xs, ys), -1)
        logp = _evaluate(log_density, grid)
        density = np.exp(logp - np.max(logp[np.isfinite(logp)]))
        ax.contour(xs, ys, density, levels=levels, **{"cmap": "viridis", **(contour_kwargs or {})})
    if samples is not None:
        shown = samples[:max_points]
        style = {"s": 4, "alpha": 0.4, "color": "C3", "label": "samples"}
        ax.scatter(shown[:, 0], shown[:, 1], **{**style, **(scatter_kwargs or {})})
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")
    return ax


def plot_density_1d(
    samples=None,
    log_density=None,
    reference=None,
    ax=None,
    bins=50,
    xlim=None,
    grid_size=400,
    label="samples",
):
    r"""
    A 1-D density against histograms: the histogram of ``samples``, the curve of
    ``log_density`` normalized numerically on the plotted range, and optionally
    the histogram of ``reference`` samples.

    :param samples: 1-D samples (tensor or array).
    :param callable log_density: maps a tensor ``(n,)`` to log densities ``(n,)``
        (may be unnormalized).
    :param reference: 1-D reference samples drawn as a step histogram.
    :param ax: matplotlib axes (a new figure if omitted).
    :param int bins: histogram bins.
    :param xlim: plotted range (default: from the samples).
    :param int grid_size: evaluation points of the density.
    :param str label: legend label of ``samples``.
    :returns: the axes.
    """
    if samples is None and log_density is None and reference is None:
        raise ValueError("plot_density_1d needs samples, a log_density or reference samples")
    ax = _axes(ax)
    data = [_numpy(s, "samples").reshape(-1) for s in (samples, reference) if s is not None]
    if xlim is None:
        if data:
            pooled = np.concatenate(data)
            lo, hi = np.quantile(pooled, [0.001, 0.999])
            pad = 0.1 * (hi - lo) + 1e-6
            xlim = (lo - pad, hi + pad)
        else:
            xlim = (-3.0, 3.0)
    edges = np.linspace(*xlim, bins + 1)
    if samples is not None:
        ax.hist(
            _numpy(samples, "samples").reshape(-1), bins=edges, density=True, alpha=0.5, label=label
        )
    if reference is not None:
        ax.hist(
            _numpy(reference, "reference").reshape(-1),
            bins=edges,
            density=True,
            histtype="step",
            color="k",
            label="reference",
        )
    if log_density is not None:
        xs = np.linspace(*xlim, grid_size)
        logp = _evaluate_1d(log_density, xs)
        density = np.exp(logp - np.max(logp[np.isfinite(logp)]))
        density /= np.trapezoid(density, xs) if hasattr(np, "trapezoid") else np.trapz(density, xs)
        ax.plot(xs, density, color="C1", label="density")
    ax.set_xlim(*xlim)
    ax.legend()
    return ax


def _evaluate_1d(log_density, xs):
    with torch.no_grad():
        values = log_density(torch.as_tensor(xs, dtype=torch.get_default_dtype()))
    values = _numpy(values, "log_density values")
    if values.shape != xs.shape:
        raise ValueError(
            f"log_density returned shape {values.shape} for {xs.shape[0]} points; it must "
            "return one value per point"
        )
    return values


def _smooth(values, window):
    values = np.asarray(values, dtype=np.float64)
    if window is None or window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    # a trailing moving average, so early steps are not shifted forward
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_training_history(history, axes=None, smooth=None, log_scale=False):
    """
    Training curves from a history (see :func:`pyro_adv.training.fit`): the loss
    (and the generator and discriminator losses when present) on one panel, the
    discriminator's accuracy on each side of its game on another (when present):
    p, the target side (data for GAN, simulated pairs for ALI, the reference for
    AVB), and q, the side being fitted (the model, or the guide), with the 0.5
    line of a discriminator that cannot tell them apart.

    :param dict history: dict of lists with ``"loss"`` and optionally ``"step"``,
        ``"generator_loss"``, ``"discriminator_loss"``,
        ``"discriminator_accuracy_p"``, ``"discriminator_accuracy_q"``.
    :param axes: a sequence of one or two axes (new figure if omitted).
    :param int smooth: moving-average window.
    :param bool log_scale: logarithmic y axis for the losses (positive losses only).
    :returns: the figure.
    """
    if "loss" not in history or not len(history["loss"]):
        raise ValueError("history has no 'loss' entries to plot")
    has_acc = any(k in history for k in ("discriminator_accuracy_p", "discriminator_accuracy_q"))
    if axes is None:
        import matplotlib.pyplot as plt

        ncols = 2 if has_acc else 1
        fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.5), squeeze=False)
        axes = axes[0]
    else:
        axes = list(np.atleast_1d(axes))
        if has_acc and len(axes) < 2:
            raise ValueError("the history has discriminator accuracies: pass two axes")
        fig = axes[0].figure
    steps = np.asarray(history.get("step", range(len(history["loss"]))))
    loss_ax = axes[0]
    for key, label in (
        ("loss", "loss"),
        ("generator_loss", "generator"),
        ("discriminator_loss", "discriminator"),
    ):
        if key in history:
            loss_ax.plot(steps, _smooth(history[key], smooth), label=label)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    if log_scale:
        loss_ax.set_yscale("log")
    loss_ax.legend()
    if has_acc:
        acc_ax = axes[1]
        for key, label in (
            ("discriminator_accuracy_p", "on p (data, simulations or reference)"),
            ("discriminator_accuracy_q", "on q (model or guide)"),
        ):
            if key in history:
                acc_ax.plot(steps, _smooth(history[key], smooth), label=label)
        acc_ax.axhline(0.5, color="k", lw=0.8, ls="--")
        acc_ax.set_ylim(-0.02, 1.02)
        acc_ax.set_xlabel("step")
        acc_ax.set_ylabel("discriminator accuracy")
        acc_ax.legend()
    return fig


def plot_sbc_ecdf(result, ax=None, prob=0.95, names=None, max_lines=20, seed=0):
    r"""
    SBC rank plot as the ECDF difference (Säilynoja, Bürkner and Vehtari 2022):
    for each latent component, :math:`F(u) - u` of the fractional ranks
    :math:`u = (r + 1) / (L + 1)`, inside the simultaneous ``prob`` band of
    uniform ranks (grey). A guide that is too narrow piles ranks at both ends:
    the curve rises above zero in the first half and falls below it in the
    second. A guide that is too wide gives the mirror image, and a biased one a
    single hump above or below zero.

    :param result: an :class:`~pyro_adv.diagnostics.SBCResult`.
    :param ax: matplotlib axes (a new figure if omitted).
    :param float prob: coverage of the band.
    :param list names: components to draw (default: all, at most ``max_lines``).
    :param int max_lines: most curves drawn.
    :param int seed: seeds the band's simulation.
    :returns: the axes.
    """
    ax = _axes(ax)
    ranks = np.asarray(result.ranks)
    num_sims, num_ranks = ranks.shape[0], result.num_ranks
    z, lower, upper = ecdf_confidence_band(num_sims, num_ranks, prob=prob, seed=seed)
    z_plot = np.concatenate([[0.0], z])
    ax.fill_between(
        z_plot,
        np.concatenate([[0.0], lower]),
        np.concatenate([[0.0], upper]),
        step="post",
        color="0.85",
        label=f"{prob:.0%} band",
    )
    chosen = result.names if names is None else names
    unknown = [n for n in chosen if n not in result.names]
    if unknown:
        raise ValueError(f"unknown components {unknown}; available: {result.names}")
    for name in chosen[:max_lines]:
        d = result.names.index(name)
        counts = np.bincount(ranks[:, d], minlength=num_ranks).cumsum() / num_sims
        ax.step(
            z_plot,
            np.concatenate([[0.0], counts - z]),
            where="post",
            label=f"{name} (p={result.p_values[d]:.2g})",
        )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fractional rank")
    ax.set_ylabel("ECDF difference")
    ax.legend(fontsize="small")
    return ax
