"""
A GAN that learns to sample a bivariate normal (thesis section 3.2.1, Figure 1).

    target p = N((1, 1), Sigma),  sd 0.7 per coordinate, correlation 0.5
    generator x = G(eps), eps ~ N(0, I_2): 1 hidden layer of 20 softplus units
    discriminator: 2 hidden layers of 40 tanh units

The generator is an ordinary Pyro model whose observed site carries an
ImplicitDistribution; pyro_adv.infer.Trace_GAN fits it with SVI, minibatch against
minibatch (a subsampled plate), with each divergence asked for. Figure 1 shows
the target's contours and 1000 generated points after 2000 and 4000 steps; the
table gives the sample mean and covariance of 20000 generated points beside the
target's.

    python examples/bivariate_normal_gan.py            # full run
    python examples/bivariate_normal_gan.py --quick    # smoke test
"""

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Predictive  # noqa: E402

from pyro_adv.infer import Trace_GAN  # noqa: E402
from pyro_adv.models.gan_targets import (  # noqa: E402
    BIVARIATE_COVARIANCE,
    BIVARIATE_MEAN,
    bivariate_normal_gan,
    bivariate_normal_target,
    sample_bivariate_normal,
)
from pyro_adv.optim import two_timescale_adam  # noqa: E402
from pyro_adv.plotting import plot_density_contours  # noqa: E402
from pyro_adv.training import fit  # noqa: E402


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


def make_svi(name, args, objective=None):
    """
    The seeded generator model (``gan(data, n, batch_size)``) and its SVI with the
    divergence ``name`` (or any other ``objective``), on this script's optimizer.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    gan = bivariate_normal_gan()
    if objective is None:
        objective = Trace_GAN(
            name, discriminator_hidden_dims=(40, 40), discriminator_activation="tanh"
        )
    return gan, SVI(gan, no_guide, two_timescale(args), loss=objective)


def summarize(samples):
    mean = samples.mean(0)
    cov = torch.cov(samples.T)
    target_mean = torch.tensor(BIVARIATE_MEAN)
    target_cov = torch.tensor(BIVARIATE_COVARIANCE)
    err = max((mean - target_mean).abs().max().item(), (cov - target_cov).abs().max().item())
    return mean.tolist(), [cov[0, 0].item(), cov[0, 1].item(), cov[1, 1].item()], err


def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    data = sample_bivariate_normal(args.num_data)
    target = bivariate_normal_target()
    snapshots = sorted({min(int(s), args.steps) for s in args.snapshots.split(",")})
    divergences = args.divergences.split(",")
    lim = (-1.5, 3.5)

    rows = []
    fig, axes = plt.subplots(
        len(divergences),
        len(snapshots),
        figsize=(4 * len(snapshots), 4 * len(divergences)),
        squeeze=False,
    )
    for i, name in enumerate(divergences):
        gan, svi = make_svi(name, args)
        history, done, start = None, 0, time.perf_counter()
        for j, step in enumerate(snapshots):
            history = fit(
                svi,
                step - done,
                data,
                batch_size=args.batch_size,
                history=history,
                desc=f"{name} -> {step}",
                progress=not args.no_progress,
            )
            done = step
            seconds = time.perf_counter() - start
            with torch.no_grad():
                samples = Predictive(gan, num_samples=1)(n=args.num_samples)["x"][0]
            rows.append((name, step, *summarize(samples), seconds))
            plot_density_contours(
                target.log_prob, samples=samples[:1000], ax=axes[i, j], xlim=lim, ylim=lim
            )
            axes[i, j].set_title(f"Fig. 1: {name}, {step} steps")
    fig.tight_layout()
    path = os.path.join(args.outdir, "bivariate_normal_gan.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)

    header = (
        f"{'divergence':<16}{'steps':>7}{'mean 1':>9}{'mean 2':>9}"
        f"{'var 1':>8}{'cov 12':>8}{'var 2':>8}{'max err':>9}{'train s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, step, mean, cov, err, seconds in rows:
        print(
            f"{name:<16}{step:>7}{mean[0]:>9.3f}{mean[1]:>9.3f}"
            f"{cov[0]:>8.3f}{cov[1]:>8.3f}{cov[2]:>8.3f}{err:>9.3f}{seconds:>9.1f}"
        )
    (m1, m2), ((v1, c12), (_, v2)) = BIVARIATE_MEAN, BIVARIATE_COVARIANCE
    print(f"{'target':<16}{'':>7}{m1:>9.3f}{m2:>9.3f}{v1:>8.3f}{c12:>8.3f}{v2:>8.3f}")
    print(f"(moments of {args.num_samples} generated points; figure saved to {path})")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--divergences",
        default="minimax,nonsaturating,wasserstein",
        help="comma-separated names from pyro_adv.infer.divergences.DIVERGENCES",
    )
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--snapshots", default="2000,4000", help="steps at which to plot")
    parser.add_argument("--num-data", type=int, default=20000, help="observations")
    parser.add_argument("--batch-size", type=int, default=256, help="observations per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="generator learning rate")
    parser.add_argument("--disc-lr", type=float, default=4e-3, help="discriminator rate")
    parser.add_argument(
        "--decay", type=float, default=0.1, help="generator rate at the end / at the start"
    )
    parser.add_argument("--num-samples", type=int, default=20000)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for small networks)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", default="outputs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.snapshots, args.num_data, args.num_samples = 40, "20,40", 2000, 2000
    return args


if __name__ == "__main__":
    main(parse_args())
