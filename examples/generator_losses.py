"""
The generator's loss as a function of the discriminator's output (thesis Figure 2).

For one generated sample with discriminator output D = sigmoid(v), each divergence
of pyro_adv.infer.divergences gives the generator a loss l(D) (Divergence.generator_loss
on the logit v):

    minimax (eq. 4)         log(1 - D)            flat where D -> 0: weak early gradient
    nonsaturating (eq. 8)   -log D                steep where D -> 0
    reverse KL (eq. 11)     log((1 - D) / D) + 1
    KL (3.3.1.1)            -exp(logit D) = -D / (1 - D)

and likewise for the others (the Wasserstein critic's score is unbounded; it is
shown through v = logit D). Figure 2 draws l(D) and |dl/dD|; the table prints both
at a few values of D.

    python examples/generator_losses.py            # full run
    python examples/generator_losses.py --quick    # smoke test
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_adv.infer.divergences import DIVERGENCES, get_divergence  # noqa: E402

TABLE_POINTS = (0.01, 0.1, 0.5, 0.9, 0.99)


def generator_loss_curve(name, d):
    """``l(D)`` and ``dl/dD`` for one sample per point of ``d`` (a tensor in (0, 1))."""
    divergence = get_divergence(name)
    d = d.detach().clone().requires_grad_(True)
    v = torch.logit(d)
    # one sample at a time: generator_loss averages over its batch
    losses = torch.stack([divergence.generator_loss(v[i : i + 1]) for i in range(len(v))])
    (grad,) = torch.autograd.grad(losses.sum(), d)
    return losses.detach(), grad


def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    torch.manual_seed(args.seed)
    names = list(DIVERGENCES) if args.divergences == "all" else args.divergences.split(",")
    d = torch.linspace(1e-3, 1 - 1e-3, args.grid, dtype=torch.float64)
    curves = {name: generator_loss_curve(name, d) for name in names}

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in ("minimax", "nonsaturating"):
        if name in curves:
            label = "eq. 4: log(1 - D)" if name == "minimax" else "eq. 8: -log D"
            axes[0].plot(d, curves[name][0], label=f"{name}, {label}")
    axes[0].set_title("Fig. 2: generator's loss")
    for name, (loss, grad) in curves.items():
        axes[1].plot(d, loss, label=name)
        axes[2].plot(d, grad.abs(), label=name)
    axes[1].set_ylim(-6, 6)
    axes[1].set_title("every divergence's generator loss")
    axes[2].set_yscale("log")
    axes[2].set_title("|d loss / dD|")
    for ax in axes:
        ax.set_xlabel("discriminator output D(G(z))")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(args.outdir, "generator_losses.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)

    points = torch.tensor(TABLE_POINTS, dtype=torch.float64)
    header = f"{'divergence':<18}" + "".join(f"{f'D={p:g}':>20}" for p in TABLE_POINTS)
    print("generator loss l(D)  [dl/dD]")
    print(header)
    print("-" * len(header))
    for name in names:
        loss, grad = generator_loss_curve(name, points)
        cells = "".join(
            f"{f'{lv:.4g} [{g:.2g}]':>20}" for lv, g in zip(loss.tolist(), grad.tolist())
        )
        print(f"{name:<18}{cells}")
    print(f"(figure saved to {path})")
    return curves


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--divergences", default="all", help="'all' or comma-separated divergence names"
    )
    parser.add_argument("--grid", type=int, default=400, help="points on D in (0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", default="outputs")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.grid = 50
    return args


if __name__ == "__main__":
    main(parse_args())
