"""
The thesis's exponential-latent posterior (section 4.2.1), end to end.

    z ~ N(0, 2 I) in R^2,    x | z ~ Exp(rate 1 / (1 + |z|^2)).

For x = 1 the posterior is a compact blob; for x = 30 it is a ring around the origin.
An amortized implicit posterior q(z | x) = G(x, eps) is trained once on a data set of
observations spanning both regimes, then queried at x = 1 and x = 30 and compared with
the exact posterior (1-D quadrature over the radius).

The recipes live in `pyro_adv.models.recipes`, shared with the tests and the
benchmarks. Two objectives train the same kind of posterior. AVB evaluates the likelihood and trains
on the data set of `sample_training_observations`. ALI never evaluates it: it trains on
simulations only, a bank of (z, x) pairs drawn once from the prior predictive. The
prior predictive puts 1.5% of its mass near x = 30, so the bank is resampled to spread
log(1 + x) evenly; the weights depend on x alone, so the pairs still follow p(z | x) and
ALI's optimum is unchanged, while x = 30 gets about as many pairs as x = 1. ALI's encoder is
the thesis's generator (3 x 20 tanh units fed with x and 3-D noise), its discriminator
Trace_ALI's default (64 x 64 ELU, logit output), and the encoder's weights are averaged
over the last third of the run (the two players circle the equilibrium).

Figures: 6 (prior contours), 7 (unnormalized posterior contours for x = 1, 30) and 8
(the same contours with 1000 draws from each trained posterior). The table gives E[z],
Var(z1), E|z| and sd|z| beside the exact values, and the training time.

    python examples/exponential_posterior.py            # full run
    python examples/exponential_posterior.py --quick    # smoke test
"""

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_adv.models import (  # noqa: E402
    PRIOR_VARIANCE,
    exact_posterior_moments,
    exponential_log_joint,
    posterior_summary,
)
from pyro_adv.models.recipes import (  # noqa: E402
    EXPONENTIAL_AVB_HIDDEN,
    draw_encoder,
    fit_exponential_ali,
    fit_exponential_avb,
)
from pyro_adv.plotting import plot_density_contours  # noqa: E402

X_VALUES = (1.0, 30.0)
METHODS = {
    "avb": "AVB, adaptive contrast",
    "avb-plain": "AVB, no adaptive contrast",
    "ali": "ALI, simulation bank",
}


def train(method, args):
    """Trains one amortized posterior with the recipe of ``pyro_adv.models.recipes``."""
    start = time.perf_counter()
    if method == "ali":
        # likelihood-free: a fixed bank of simulations, no evaluation of p(x | z)
        fitted = fit_exponential_ali(
            args.seed,
            steps=args.ali_steps,
            num_simulations=args.num_simulations,
            num_pairs=args.num_simulations // 10,
            batch_size=args.ali_batch_size,
            lr=args.ali_lr,
            progress=not args.no_progress,
        )
    elif method in ("avb", "avb-plain"):
        fitted = fit_exponential_avb(
            args.seed,
            steps=args.steps,
            num_data=args.num_data,
            batch_size=args.batch_size,
            num_particles=args.particles,
            noise_dim=args.noise_dim,
            hidden_dims=tuple(int(h) for h in args.hidden_dims.split(",")),
            lr=args.lr,
            adaptive_contrast=(method == "avb"),
            progress=not args.no_progress,
        )
    else:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return fitted.encoder, fitted.history, time.perf_counter() - start


def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(args.threads)
    lim = (-6.5, 6.5)

    # Figure 6: prior contours; Figure 7: unnormalized posterior contours
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    plot_density_contours(
        lambda z: -z.pow(2).sum(-1) / (2 * PRIOR_VARIANCE), ax=axes[0], xlim=lim, ylim=lim
    )
    axes[0].set_title("Fig. 6: prior N(0, 2I)")
    for ax, x in zip(axes[1:], X_VALUES):
        plot_density_contours(lambda z, x=x: exponential_log_joint(z, x), ax=ax, xlim=lim, ylim=lim)
        ax.set_title(f"Fig. 7: unnormalized p(z | x={x:g})")
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "exponential_prior_posterior.png"), dpi=110)
    plt.close(fig)

    exact = {x: exact_posterior_moments(x) for x in X_VALUES}
    rows = []
    methods = args.methods.split(",")
    fig, axes = plt.subplots(len(methods), 2, figsize=(9, 4.2 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        encoder, history, seconds = train(method, args)
        for j, x in enumerate(X_VALUES):
            samples = draw_encoder(encoder, x, args.num_samples)
            summary = posterior_summary(samples)
            rows.append((METHODS.get(method, method), x, summary, seconds))
            plot_density_contours(
                lambda z, x=x: exponential_log_joint(z, x),
                samples=samples[:1000],
                ax=axes[i, j],
                xlim=lim,
                ylim=lim,
            )
            axes[i, j].set_title(f"Fig. 8: {METHODS.get(method, method)}, x={x:g}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "exponential_posterior_samples.png"), dpi=110)
    plt.close(fig)

    header = (
        f"{'method':<28}{'x':>5}{'E[z1]':>8}{'E[z2]':>8}"
        f"{'Var(z1)':>16}{'E|z|':>16}{'sd|z|':>16}{'train s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, x, s, seconds in rows:
        e = exact[x]
        cell = {key: f"{s[key]:.3f} ({e[key]:.3f})" for key in ("var_z1", "mean_norm", "sd_norm")}
        print(
            f"{name:<28}{x:>5g}{s['mean'][0]:>8.3f}{s['mean'][1]:>8.3f}"
            f"{cell['var_z1']:>16}{cell['mean_norm']:>16}{cell['sd_norm']:>16}{seconds:>9.1f}"
        )
    print("(exact values in parentheses; exact E[z] = 0)")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--methods", default="avb,ali", help="comma-separated: " + ", ".join(METHODS)
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument(
        "--num-data", type=int, default=4096, help="AVB training observations (fixed, seed 0)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="observations per step")
    parser.add_argument("--particles", type=int, default=32, help="guide draws per observation")
    parser.add_argument("--noise-dim", type=int, default=8, help="noise width of the AVB encoder")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument(
        "--hidden-dims",
        default=",".join(map(str, EXPONENTIAL_AVB_HIDDEN)),
        help="hidden widths of the AVB encoder",
    )
    parser.add_argument("--ali-steps", type=int, default=2500)
    parser.add_argument("--ali-batch-size", type=int, default=512, help="simulated pairs per step")
    parser.add_argument("--ali-lr", type=float, default=3e-3)
    parser.add_argument(
        "--num-simulations", type=int, default=1_000_000, help="size of ALI's simulation bank"
    )
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest for these small networks)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", default="outputs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.num_data, args.num_samples = 30, 256, 500
        args.ali_steps, args.num_simulations = 30, 20_000
    return args


if __name__ == "__main__":
    main(parse_args())
