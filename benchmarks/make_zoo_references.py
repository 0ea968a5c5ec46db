"""
Makes the stored NUTS references of the model zoo (:mod:`pyro_adv.models.zoo`) for the
models without an exact posterior, and cross-checks an exact reference against NUTS.

    python -m benchmarks.make_zoo_references                       # both references + check
    python -m benchmarks.make_zoo_references --models logistic_regression --no-check

For each model: ``--chains`` NUTS chains (run one after another in this process, one
thread; chain ``c`` is seeded with ``seed + c`` and starts from Pyro's default
uniform initialization in [-2, 2] of the unconstrained space, so the chains start
apart), ``--warmup`` adaptation steps and ``--draws`` kept draws each. It prints the
largest split R-hat and the smallest effective sample size over all coordinates
(``pyro.ops.stats``), then keeps every ``thin``-th draw so that ``--rows`` rows remain,
and writes them, float32, with the diagnostics to
``pyro_adv/models/references/<name>.npz``.

The check (``--check``, on by default) runs the same NUTS on the non-centred eight
schools and reports the C2ST of its draws against the exact grid sampler (and of two
independent exact draws, the floor at that sample size).
"""

import argparse
import pathlib
import time

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size, split_gelman_rubin

from pyro_adv.diagnostics import c2st
from pyro_adv.models.zoo import REFERENCE_DIR, get_model

__all__ = ["SETTINGS", "main", "parse_args", "run_nuts"]

#: per model: NUTS chains, warm-up steps and draws per chain, rows stored (every draw:
#: 4 x 2500 = 10,000). On 2 shared cores each model takes 10-30 minutes.
SETTINGS = {
    "logistic_regression": {"chains": 4, "warmup": 500, "draws": 2500, "rows": 10_000},
    "hierarchical_poisson": {"chains": 4, "warmup": 500, "draws": 2500, "rows": 10_000},
}


def run_nuts(zoo_model, chains, warmup, draws, seed, target_accept_prob=0.9):
    """
    Runs ``chains`` seeded NUTS chains on ``zoo_model`` one after another.

    :returns: dict site name -> tensor ``(chains, draws) + site shape``, the number of
        divergent transitions and the seconds taken.
    """
    start = time.perf_counter()
    per_chain, divergences = [], 0
    for c in range(chains):
        pyro.set_rng_seed(seed + c)
        kernel = NUTS(
            zoo_model.model,
            target_accept_prob=target_accept_prob,
            jit_compile=True,
            ignore_jit_warnings=True,
        )
        mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(*zoo_model.args)
        per_chain.append(mcmc.get_samples())
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
    samples = {s: torch.stack([p[s] for p in per_chain]) for s in zoo_model.sites}
    return samples, divergences, time.perf_counter() - start


def diagnostics(zoo_model, samples):
    """Split R-hat and ESS of every coordinate, as ``(chains, draws, dim)`` flattened."""
    chains, draws = next(iter(samples.values())).shape[:2]
    pooled = {s: v.reshape((chains * draws,) + v.shape[2:]) for s, v in samples.items()}
    flat = zoo_model.flat(pooled)
    flat = flat.reshape(chains, draws, -1).double()
    return split_gelman_rubin(flat), effective_sample_size(flat)


def _report(name, rhat, ess, divergences, seconds, labels):
    worst = int(rhat.argmax())
    least = int(ess.argmin())
    print(
        f"{name}: max R-hat {rhat.max():.4f} ({labels[worst]}), min ESS {ess.min():.0f} "
        f"({labels[least]}), median ESS {ess.median():.0f}, {divergences} divergences, "
        f"{seconds:.0f} s",
        flush=True,
    )


def make_reference(name, chains, warmup, draws, rows, seed, outdir=REFERENCE_DIR):
    zoo_model = get_model(name)
    samples, divergences, seconds = run_nuts(zoo_model, chains, warmup, draws, seed)
    rhat, ess = diagnostics(zoo_model, samples)
    _report(name, rhat, ess, divergences, seconds, zoo_model.labels())
    total = chains * draws
    thin = max(total // rows, 1)
    arrays = {}
    for site, value in samples.items():
        # chains one after another, then every thin-th draw
        value = value.reshape((total,) + value.shape[2:])[::thin][:rows]
        arrays[site] = value.numpy().astype(np.float32)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{name}.npz"
    np.savez_compressed(
        path,
        **arrays,
        rhat=rhat.numpy().astype(np.float32),
        ess=ess.numpy().astype(np.float32),
        settings=np.array([chains, warmup, draws, thin, seed, divergences]),
    )
    print(f"  wrote {path} ({arrays[zoo_model.sites[0]].shape[0]} rows, thinned by {thin})")
    return rhat, ess


def check_eight_schools(chains, warmup, draws, seed, c2st_samples=4000):
    """C2ST of NUTS on the non-centred eight schools against the exact grid sampler."""
    zoo_model = get_model("eight_schools_noncentered")
    samples, divergences, seconds = run_nuts(zoo_model, chains, warmup, draws, seed)
    rhat, ess = diagnostics(zoo_model, samples)
    _report(zoo_model.name, rhat, ess, divergences, seconds, zoo_model.labels())
    nuts = zoo_model.flat({s: v.reshape((-1,) + v.shape[2:]) for s, v in samples.items()})
    thin = max(nuts.shape[0] // c2st_samples, 1)
    nuts = nuts[::thin][:c2st_samples]
    exact = zoo_model.flat(zoo_model.reference(c2st_samples, seed=seed))
    exact2 = zoo_model.flat(zoo_model.reference(c2st_samples, seed=seed + 1))
    score = c2st(exact, nuts, seed=seed)
    floor = c2st(exact, exact2, seed=seed)
    print(
        f"  C2ST, NUTS vs exact: {score:.3f}; two exact draws: {floor:.3f} "
        f"({nuts.shape[0]} draws a side)",
        flush=True,
    )
    return score, floor


def main(args):
    torch.set_num_threads(1)
    names = list(SETTINGS) if args.models == "all" else args.models.split(",")
    for name in names:
        settings = dict(SETTINGS[name])
        for key in ("chains", "warmup", "draws", "rows"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        make_reference(name, seed=args.seed, outdir=args.outdir, **settings)
    if args.check:
        check_eight_schools(
            chains=args.chains or 4,
            warmup=args.warmup or 500,
            draws=args.draws or 1000,
            seed=args.seed,
            c2st_samples=min(4000, (args.chains or 4) * (args.draws or 1000)),
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="stored NUTS references of the model zoo")
    parser.add_argument("--models", default="all", help="comma-separated: " + ", ".join(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=None, help="override SETTINGS")
    parser.add_argument("--warmup", type=int, default=None, help="override SETTINGS")
    parser.add_argument("--draws", type=int, default=None, help="override SETTINGS")
    parser.add_argument("--rows", type=int, default=None, help="override SETTINGS")
    parser.add_argument("--outdir", type=pathlib.Path, default=REFERENCE_DIR)
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
