"""
How the divergence shapes a GAN's fit (thesis section 3.3.2.1, Figures 3-5, Table 1).

    data p = 0.5 N(1, 0.3^2) + 0.5 N(3, 0.3^2)
    generator x = G(z) = mu + sigma z, z ~ N(0, 1)   (so q = N(mu, sigma^2))
    discriminator: 2 hidden layers of 40 tanh units

The generator is fitted with pyro_adv.infer.Trace_GAN under every divergence of
pyro_adv.infer.divergences. Mass-covering divergences (forward KL, Pearson) put q
between the modes; mode-seeking ones (reverse KL, the non-saturating game)
collapse onto one mode. Table 1 is extended to every divergence and set beside
the exact optimum of that divergence over (mu, sigma), computed by quadrature and
numerical optimization (pyro_adv.models.gan_targets.exact_divergence_optimum): the
global optimum, and the local optimum of the basin the GAN ended in.

Figure 3: the mixture, the latent density and the initial generator; Figures 4-5:
after training with forward and reverse KL; and a panel per divergence.

    python examples/mixture_divergences.py            # full run
    python examples/mixture_divergences.py --quick    # smoke test
"""

import argparse
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI  # noqa: E402

from pyro_adv.infer import Trace_GAN  # noqa: E402
from pyro_adv.infer.divergences import DIVERGENCES  # noqa: E402
from pyro_adv.models.gan_targets import (  # noqa: E402
    exact_divergence_optimum,
    location_scale_gan,
    mixture_log_density,
    sample_mixture,
)
from pyro_adv.optim import two_timescale_adam  # noqa: E402
from pyro_adv.training import fit  # noqa: E402

#: thesis Table 1 (mean, sd)
THESIS = {"kl": (2.09541, 0.95154), "reverse_kl": (2.99796, 0.30128)}


def no_guide(*args, **kwargs):
    """A GAN infers no latents: its guide is empty."""


def two_timescale(args):
    """
    Adam, the discriminator a few times faster (TTUR), GAN momentum, the generator's
    rate decaying: ``Trace_GAN().default_optim`` with this script's rates.
    """
    return two_timescale_adam(
        args.lr,
        discriminator_lr=args.disc_lr,
        num_steps=args.steps,
        decay=args.decay,
        decay_discriminator=False,
        betas=(0.5, 0.999),
        clip_norm=10.0,  # ClippedAdam's default clamp: the tables were measured with it
    )


def train(name, data, args, objective=None):
    """
    Fits the location-scale generator with the divergence ``name`` (or any other
    ``objective`` of the same model, e.g. ``pyro.infer.EnergyDistance``) on this
    script's optimizer; returns the fitted ``(mu, sigma)`` and the training seconds.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if objective is None:
        objective = Trace_GAN(
            name, discriminator_hidden_dims=(40, 40), discriminator_activation="tanh"
        )

    def model(data=None, subsample_size=None):
        return location_scale_gan(
            data, loc=args.init_loc, scale=args.init_scale, subsample_size=subsample_size
        )

    svi = SVI(model, no_guide, two_timescale(args), loss=objective)
    start = time.perf_counter()
    fit(
        svi,
        args.steps,
        data,
        subsample_size=args.batch_size,
        desc=name,
        progress=not args.no_progress,
    )
    store = pyro.get_param_store()
    return store["loc"].item(), store["scale"].item(), time.perf_counter() - start


def _normal_pdf(x, loc, scale):
    return np.exp(-0.5 * ((x - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


def plot_fit(ax, loc, scale, title, optimum=None):
    """The mixture, the latent density and the fitted N(loc, scale²); ``optimum``
    (``(loc, scale)`` of an exact optimum) is drawn dashed."""
    x = np.linspace(-3.0, 6.0, 600)
    ax.plot(x, np.exp(mixture_log_density(x)), color="k", label="mixture p")
    ax.plot(x, _normal_pdf(x, 0.0, 1.0), color="C2", ls=":", label="latent z ~ N(0, 1)")
    ax.plot(x, _normal_pdf(x, loc, scale), color="C3", label=f"G(z): N({loc:.2f}, {scale:.2f}²)")
    if optimum is not None:
        ax.plot(x, _normal_pdf(x, optimum[0], optimum[1]), color="C0", ls="--", label="exact")
    ax.set_title(title)
    ax.set_ylim(0, 1.45)
    ax.legend(fontsize=7, loc="upper left")


def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    data = sample_mixture(args.num_data)
    names = list(DIVERGENCES) if args.divergences == "all" else args.divergences.split(",")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    plot_fit(ax, args.init_loc, args.init_scale, "Fig. 3: before training")
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "mixture_fig3_initial.png"), dpi=110)
    plt.close(fig)

    rows = []
    for name in names:
        loc, scale, seconds = train(name, data, args)
        best = exact_divergence_optimum(name, num=args.quadrature_points)
        basin = exact_divergence_optimum(name, init=(loc, scale), num=args.quadrature_points)
        rows.append((name, loc, scale, best, basin, seconds))

    fitted = {row[0]: row for row in rows}
    for number, name, label in ((4, "kl", "KL(p || q)"), (5, "reverse_kl", "KL(q || p)")):
        if name in fitted:
            fig, ax = plt.subplots(figsize=(5, 3.6))
            plot_fit(ax, fitted[name][1], fitted[name][2], f"Fig. {number}: after {label}")
            fig.tight_layout()
            fig.savefig(os.path.join(args.outdir, f"mixture_fig{number}_{name}.png"), dpi=110)
            plt.close(fig)
    cols = 3
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.3 * nrows), squeeze=False)
    for ax, (name, loc, scale, _, basin, _) in zip(axes.flat, rows):
        plot_fit(ax, loc, scale, name, optimum=(basin.loc, basin.scale))
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "mixture_all_divergences.png"), dpi=110)
    plt.close(fig)

    header = (
        f"{'divergence':<18}{'GAN mean':>9}{'GAN sd':>8}{'exact mean':>12}{'exact sd':>10}"
        f"{'basin mean':>12}{'basin sd':>10}{'thesis':>16}{'train s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, loc, scale, best, basin, seconds in rows:
        thesis = "{:.3f} / {:.3f}".format(*THESIS[name]) if name in THESIS else ""
        print(
            f"{name:<18}{loc:>9.3f}{scale:>8.3f}{best.loc:>12.3f}{best.scale:>10.3f}"
            f"{basin.loc:>12.3f}{basin.scale:>10.3f}{thesis:>16}{seconds:>9.1f}"
        )
    print(
        "exact: global minimizer of the divergence over (mu, sigma); basin: the local "
        "minimizer\nreached from the GAN's fit (mode-seeking divergences have one per mode). "
        f"Init ({args.init_loc}, {args.init_scale}), {args.steps} steps."
    )
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--divergences", default="all", help="'all' or comma-separated divergence names"
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--num-data", type=int, default=20000, help="observations")
    parser.add_argument("--batch-size", type=int, default=256, help="observations per step")
    parser.add_argument("--lr", type=float, default=5e-3, help="generator learning rate")
    parser.add_argument("--disc-lr", type=float, default=5e-3, help="discriminator rate")
    parser.add_argument(
        "--decay", type=float, default=0.1, help="generator rate at the end / at the start"
    )
    parser.add_argument(
        "--quadrature-points", type=int, default=2001, help="grid of the exact optima"
    )
    parser.add_argument("--init-loc", type=float, default=0.0, help="initial mu")
    parser.add_argument("--init-scale", type=float, default=1.0, help="initial sigma")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for small networks)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", default="outputs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.num_data, args.quadrature_points = 30, 2000, 401
    return args


if __name__ == "__main__":
    main(parse_args())
