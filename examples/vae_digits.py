"""
A VAE with an implicit encoder on real images: the VAE experiment of the AVB paper
(Mescheder, Nowozin and Geiger 2017) on scikit-learn's 8x8 digits.

Data: the 1797 images of `sklearn.datasets.load_digits` (it ships with scikit-learn,
the `dev` extra: `pip install scikit-learn`), binarized at half intensity (pixel >= 8
of 16), split once into 1437 training and 360 test images. Model, the same for every
encoder:

    z ~ N(0, I_8),    x | z ~ Bernoulli(logits = decoder(z))  over the 64 pixels,

with decoder an MLP 8 -> 128 -> 128 -> 64 (ELU). Three ways to fit it:

* **Gaussian VAE** (Pyro's examples/vae): q(z | x) = N(mu(x), diag sigma(x)^2) from an
  MLP 64 -> 128 -> 128 -> 16, trained with `Trace_ELBO`.
* **AVB**: an `ImplicitEncoder` z = G(x, eps), eps ~ N(0, I_16), MLP (64 + 16) -> 128
  -> 128 -> 8, trained with `TraceAVB_ELBO` (adaptive contrast, its default): the
  discriminator T(x, z) estimates log q(z | x) - log r(z | x) for the Gaussian r of q's
  own moments, so the ELBO needs no density of q. Per image and step it also draws
  64 encoder samples (no gradient) for r's moments and 16 for the discriminator.
* **ALI/BiGAN**: the same implicit encoder and decoder trained with `Trace_ALI`: a
  discriminator tells (x ~ data, z ~ encoder) pairs from (z ~ prior, x ~ decoder) pairs
  and both networks play against it. The decoder's Bernoulli draws are simulated as
  `RelaxedBernoulliStraightThrough` (forward: exact Bernoulli 0/1 draws; backward: the
  relaxation's gradient), so ALI trains the same Bernoulli model without evaluating it.

All three train with the same budget (steps, minibatch of 100 images, one gradient
draw of z per image, Adam with the same rate and decay for encoder and decoder)
through `pyro_adv.distributed`: the script runs alone as one rank, or data-parallel
under `torchrun --standalone --nproc-per-node 2 examples/vae_digits.py`, each rank
taking its half of every minibatch.

**Held-out log-likelihood, estimated the same way for every encoder**
(`pyro_adv.diagnostics.fitted_proposal_log_likelihood`): for each test image, a
Gaussian is fitted to 500 encoder draws (covariance inflated by 1.2^2) and

    log p(x) ~ log (1/K) sum_k p(x, z_k) / r(z_k | x),    z_k ~ r,   K = 1000,

a stochastic lower bound of the decoder's log p(x) whose tightness depends on the
encoder only through the proposal. Reported: its mean over the test images with its
standard error, the median effective sample size of the K weights, and the test ELBO
(exact for the Gaussian encoder, AVB's discriminator estimate for AVB, none for ALI).
For the Gaussian encoder the importance-weighted bound with q itself as proposal is
given as a cross-check of the fitted proposal.

Figures: test images and their reconstructions (decoder probabilities at one encoder
draw), and samples (decoder probabilities at prior draws), for the three fits. All
use the weights as trained, not the adversarial objectives' weight averages
(`pyro_adv.nn.averaging`), so that the three fits are evaluated alike.

    python examples/vae_digits.py              # full run (a few CPU minutes per fit)
    python examples/vae_digits.py --quick      # smoke test
    torchrun --standalone --nproc-per-node 2 examples/vae_digits.py --quick
"""

import argparse
import json
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import torch.distributed as torch_dist  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pyro_adv import distributed  # noqa: E402
from pyro_adv.diagnostics import fitted_proposal_log_likelihood  # noqa: E402
from pyro_adv.infer import Trace_ALI, TraceAVB_ELBO  # noqa: E402
from pyro_adv.nn import MLP, ImplicitEncoder  # noqa: E402
from pyro_adv.nn.averaging import raw_weights  # noqa: E402
from pyro_adv.optim import two_timescale_adam  # noqa: E402

METHODS = {
    "gaussian": "Gaussian VAE, Trace_ELBO",
    "avb": "AVB, implicit encoder",
    "ali": "ALI/BiGAN, implicit encoder",
}
NUM_TEST = 360


# ------------------------------------------------------------------------ data
def load_digits(split_seed=0):
    """Binarized 8x8 digits as ``(train, test)`` float tensors of 64 pixels each."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise SystemExit(
            "examples/vae_digits.py needs scikit-learn for its data set "
            "(sklearn.datasets.load_digits): pip install scikit-learn"
        ) from e
    images = torch.as_tensor(sklearn_digits().data, dtype=torch.float32)  # (1797, 64), 0..16
    x = (images >= 8).float()
    # one fixed split, whatever --seed is, so every run is scored on the same images
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    return x[order[NUM_TEST:]], x[order[:NUM_TEST]]


# ---------------------------------------------------------------- the networks
class GaussianEncoder(nn.Module):
    """Pyro's VAE encoder: ``x -> (mu(x), sigma(x))`` of a diagonal Gaussian."""

    def __init__(self, input_dim, latent_dim, hidden_dims):
        super().__init__()
        self.net = MLP(input_dim, 2 * latent_dim, hidden_dims, "elu")

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1)


def make_model(decoder, latent_dim, relaxed=False):
    """The VAE's model; ``relaxed=True`` simulates its Bernoulli pixels with a
    straight-through relaxation (for ALI, which trains through simulated values)."""

    def model(x, idx):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0], subsample=idx):  # scaled by N / len(idx)
            z = pyro.sample("z", dist.Normal(x.new_zeros(latent_dim), 1.0).to_event(1))
            logits = decoder(z)
            if relaxed:
                pixels = dist.RelaxedBernoulliStraightThrough(
                    torch.tensor(0.5, device=x.device), logits=logits
                )
            else:
                pixels = dist.Bernoulli(logits=logits)
            pyro.sample("x", pixels.to_event(1), obs=x[idx])

    return model


def make_guide(encoder):
    def guide(x, idx):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0], subsample=idx):
            pyro.sample("z", encoder(x[idx]))

    return guide


def log_joint(decoder, x):
    """``z (k, B, D) -> log p(x_b, z)`` of shape ``(k, B)``, the model's density."""

    def fn(z):
        prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return prior + dist.Bernoulli(logits=decoder(z)).log_prob(x).sum(-1)

    return fn


# ------------------------------------------------------------------ training
def train(method, x_train, args):
    """Trains one fit on this rank's share of every minibatch; returns the networks."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)  # the same initial networks on every rank
    hidden = (args.hidden,) * 2
    decoder = MLP(args.latent_dim, x_train.shape[1], hidden, "elu")
    if method == "gaussian":
        encoder = GaussianEncoder(x_train.shape[1], args.latent_dim, hidden)
        objective = Trace_ELBO(
            num_particles=args.particles, vectorize_particles=True, max_plate_nesting=1
        )
    else:
        encoder = ImplicitEncoder(
            x_train.shape[1], args.latent_dim, noise_dim=args.noise_dim, hidden_dims=hidden
        )
        if method == "avb":
            objective = TraceAVB_ELBO(
                num_particles=args.particles,
                moment_particles=args.moment_particles,
                discriminator_particles=args.discriminator_particles,
                discriminator_hidden_dims=hidden,
            )
        else:
            objective = Trace_ALI(args.ali_divergence, discriminator_hidden_dims=hidden)
    model = make_model(decoder, args.latent_dim, relaxed=(method == "ali"))
    guide = make_guide(encoder)
    # one schedule for every fit; discriminators (AVB, ALI) learn twice as fast
    optim = two_timescale_adam(
        args.lr,
        discriminator_lr=2 * args.lr,
        num_steps=args.steps,
        decay=0.1,
        betas=(0.5, 0.9) if method == "ali" else (0.9, 0.999),
    )
    svi = SVI(model, guide, distributed.DistributedOptimizer(optim), objective)
    batches = distributed.ShardedSubsample(len(x_train), args.batch_size, seed=args.seed)
    distributed.broadcast_parameters(svi, x_train, batches.indices(0))
    distributed.set_rng_seed(args.seed)  # distinct, reproducible draws per rank
    history = []
    start = time.perf_counter()
    bar = tqdm(
        range(args.steps),
        desc=method,
        disable=args.no_progress or distributed.rank() != 0,
        mininterval=1.0,
    )
    # the ELBOs are sums over the training set (the plate is scaled): shown per image;
    # ALI's loss is a divergence estimate, a mean over pairs
    per = 1 if method == "ali" else len(x_train)
    for step in bar:
        loss = svi.step(x_train, batches.indices(step))
        if not math.isfinite(loss):
            raise FloatingPointError(f"{method}: non-finite loss at step {step}")
        history.append(loss / per)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss / per:.3f}", refresh=False)
    seconds = time.perf_counter() - start
    return {
        "encoder": encoder,
        "decoder": decoder,
        "svi": svi,
        "model": model,
        "guide": guide,
        "seconds": seconds,
        "history": history,
    }


# ---------------------------------------------------------------- evaluation
def encoder_draws(encoder, x, num_draws):
    with torch.no_grad():
        return encoder(x).sample((num_draws,))  # (S, B, D)


def evaluate(method, fit, x_test, args):
    """Held-out log p(x) (fitted-proposal importance sampling) and test ELBO, per image."""
    encoder, decoder = fit["encoder"], fit["decoder"]
    generator = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        draws = encoder_draws(encoder, x_test, args.proposal_draws)
        est = fitted_proposal_log_likelihood(
            log_joint(decoder, x_test),
            draws,
            num_samples=args.importance_samples,
            chunk_size=250,
            generator=generator,
        )
        row = {
            "key": method,
            "method": METHODS[method],
            "train_seconds": fit["seconds"],
            "log_likelihood": est.log_likelihood.mean().item(),
            "log_likelihood_se": (est.log_likelihood.std() / math.sqrt(len(x_test))).item(),
            "ess_median": est.effective_sample_size.median().item(),
            "elbo": None,
            "iw_bound_q": None,
            "per_image": est.log_likelihood.tolist(),
        }
        if method == "gaussian":
            q = encoder(x_test)
            z = q.sample((args.importance_samples,))
            log_w = log_joint(decoder, x_test)(z) - q.log_prob(z)
            row["elbo"] = log_w.mean().item()  # exact ELBO (Monte Carlo over K draws)
            row["iw_bound_q"] = (log_w.logsumexp(0) - math.log(len(z))).mean().item()
    if method == "avb":
        # AVB's own ELBO estimate: log q from the discriminator (one draw per image,
        # averaged over the test images; the plate is not subsampled, so no scaling)
        idx = torch.arange(len(x_test))
        losses = [fit["svi"].evaluate_loss(x_test, idx) for _ in range(args.elbo_repeats)]
        row["elbo"] = -sum(losses) / len(losses) / len(x_test)
    return row


def reconstruct(fit, x):
    with torch.no_grad():
        z = fit["encoder"](x).sample()
        return torch.sigmoid(fit["decoder"](z))


def sample(fit, num, latent_dim, seed):
    z = torch.randn(num, latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return torch.sigmoid(fit["decoder"](z))


def _grid(images, rows, cols, pad=1):
    """Images of 8x8 pixels tiled ``rows x cols`` with ``pad`` blank pixels between."""
    images = nn.functional.pad(images.reshape(rows, cols, 8, 8), (0, pad, 0, pad))
    size = 8 + pad
    return images.permute(0, 2, 1, 3).reshape(rows * size, cols * size).numpy()


def save_figures(fits, x_test, args):
    methods = list(fits)
    num = min(12, len(x_test))
    shown = x_test[:num]
    fig, axes = plt.subplots(len(methods) + 1, 1, figsize=(num * 0.6, 0.8 * (len(methods) + 1)))
    panels = [("test images", shown)] + [(METHODS[m], reconstruct(fits[m], shown)) for m in methods]
    for ax, (title, images) in zip(axes, panels):
        ax.imshow(_grid(images, 1, num), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("Reconstructions: decoder probabilities at one encoder draw", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "vae_digits_reconstructions.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        images = sample(fits[m], 64, args.latent_dim, args.seed + 2)
        ax.imshow(_grid(images, 8, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(METHODS[m], fontsize=9)
        ax.axis("off")
    fig.suptitle("Samples: decoder probabilities at 64 prior draws (same draws)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.outdir, "vae_digits_samples.png"), dpi=110)
    plt.close(fig)


def _cell(value, fmt="{:.2f}"):
    return "-" if value is None else fmt.format(value)


def paired_differences(rows, reference="gaussian"):
    """Each fit's per-image log p(x) minus the reference fit's on the same images:
    mean and standard error (paired, so the images' spread cancels)."""
    ref = next((r for r in rows if r["key"] == reference), None)
    for r in rows:
        if ref is None or r is ref:
            r["vs_gaussian"] = r["vs_gaussian_se"] = None
            continue
        diff = torch.tensor(r["per_image"]) - torch.tensor(ref["per_image"])
        r["vs_gaussian"] = diff.mean().item()
        r["vs_gaussian_se"] = (diff.std() / math.sqrt(len(diff))).item()


def print_table(rows, args, num_test):
    header = (
        f"{'method':<30}{'train s':>9}{'test log p(x)':>17}{'vs Gaussian':>16}"
        f"{'ESS (of K)':>12}{'test ELBO':>11}{'IW bound, q':>13}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ll = f"{r['log_likelihood']:.2f} +- {r['log_likelihood_se']:.2f}"
        vs = (
            "-"
            if r["vs_gaussian"] is None
            else f"{r['vs_gaussian']:+.2f} +- {r['vs_gaussian_se']:.2f}"
        )
        print(
            f"{r['method']:<30}{r['train_seconds']:>9.1f}{ll:>17}{vs:>16}{r['ess_median']:>12.0f}"
            f"{_cell(r['elbo']):>11}{_cell(r['iw_bound_q']):>13}"
        )
    print(
        f"(nats per test image, {num_test} images, mean +- standard error; log p(x): "
        f"K = {args.importance_samples} draws of a Gaussian fitted to {args.proposal_draws} "
        "encoder draws; vs Gaussian: paired difference on the same images; ESS: median "
        "over images; AVB's ELBO uses its discriminator's log q; IW bound, q: the "
        "Gaussian encoder itself as proposal, a cross-check)"
    )


def main(args):
    torch.set_num_threads(args.threads)
    started_here = False
    if "RANK" in os.environ and not torch_dist.is_initialized():
        torch_dist.init_process_group("gloo")  # torchrun; "nccl" with one GPU per rank
        started_here = True
    try:
        x_train, x_test = load_digits()
        if args.num_train:
            x_train = x_train[: args.num_train]
        x_test = x_test[: args.num_test]
        fits = {}
        rows = []
        for method in args.methods.split(","):
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
            fits[method] = train(method, x_train, args)
            if distributed.rank() == 0:
                # the weights as trained: the adversarial objectives' weight averages
                # (pyro_adv.nn.averaging) would also move the decoder, which the
                # Gaussian VAE's Trace_ELBO does not average
                with raw_weights():
                    rows.append(evaluate(method, fits[method], x_test, args))
        if distributed.rank() != 0:
            return None
        os.makedirs(args.outdir, exist_ok=True)
        with raw_weights():
            save_figures(fits, x_test, args)
        print(
            f"8x8 digits, {len(x_train)} training / {len(x_test)} test images, "
            f"{args.steps} steps of {args.batch_size} images on {distributed.world_size()} "
            f"rank(s), latent dim {args.latent_dim}, seed {args.seed}"
        )
        paired_differences(rows)
        print_table(rows, args, len(x_test))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": _settings(args), "rows": rows}, f, indent=2)
        return rows
    finally:
        if started_here:
            torch_dist.destroy_process_group()


def _settings(args):
    skip = {"json", "outdir", "no_progress"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--methods", default="gaussian,avb,ali", help=", ".join(METHODS))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=100, help="images per step, all ranks")
    parser.add_argument("--particles", type=int, default=1, help="gradient draws of z per image")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--noise-dim", type=int, default=16, help="noise width of G(x, eps)")
    parser.add_argument("--hidden", type=int, default=128, help="width of the 2 hidden layers")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--moment-particles", type=int, default=64, help="AVB: draws for r")
    parser.add_argument(
        "--discriminator-particles", type=int, default=16, help="AVB: draws for T per image"
    )
    parser.add_argument(
        "--ali-divergence", default="reverse_kl", help="Trace_ALI's divergence (its default)"
    )
    parser.add_argument("--proposal-draws", type=int, default=500, help="encoder draws per x")
    parser.add_argument("--importance-samples", type=int, default=1000, help="K per test x")
    parser.add_argument("--elbo-repeats", type=int, default=20, help="AVB ELBO evaluations")
    parser.add_argument("--num-train", type=int, default=None, help="use fewer training images")
    parser.add_argument("--num-test", type=int, default=NUM_TEST)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", default="outputs")
    parser.add_argument("--json", default=None, help="also write the table to this file")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.num_test = 40, 60
        args.proposal_draws, args.importance_samples, args.elbo_repeats = 50, 100, 2
        args.hidden, args.moment_particles = 64, 32
    return args


if __name__ == "__main__":
    main(parse_args())
