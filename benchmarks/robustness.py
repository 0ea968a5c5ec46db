"""
Table 5, robustness on tasks nobody tuned for: **library defaults only** (each objective's
default networks and its default optimizer, ``objective.default_optim(num_steps)``), 10
seeds, on the headline tasks and on *randomized task families* drawn by a seeded
generator (``pyro_adv.models.random_families``) that no test was tuned on:

* headline tasks: ``gan_bivariate``, ``Trace_GAN()`` on the thesis's bivariate normal;
  ``avb_conjugate_2d``, ``AutoImplicit`` + ``TraceAVB_ELBO()`` on the tests' correlated
  2-D conjugate Gaussian; and the exponential model at x = 1 and 30 (below);
* ``gan_gaussian_2d`` / ``gan_gaussian_5d``: ``Trace_GAN()`` with ``MLPGenerator(d, d)``
  on a random Gaussian with random mean, scales and correlation (20,000 data points);
* ``avb_conjugate``: ``AutoImplicit`` + ``TraceAVB_ELBO()`` on a random conjugate
  linear-Gaussian model (latent dimension 2-10, random design, exact posterior);
* ``ali_linear_simulator`` / ``avb_linear_simulator``: an amortized
  ``ImplicitEncoder(m, d)`` on a random linear-Gaussian simulator (d 2-4, m d..d+3),
  trained with ``Trace_ALI()`` (fresh simulations every step, likelihood-free) or
  amortized ``TraceAVB_ELBO()`` (fresh prior-predictive batches, likelihood), checked
  at 3 observations from the prior predictive against the exact posterior at each;
* ``exponential_avb``: the thesis's exponential model with an amortized
  ``ImplicitEncoder(1, 2)`` and ``TraceAVB_ELBO()`` on 4,096 observations spread over
  the range where it is queried (:func:`~pyro_adv.models.sample_training_observations`,
  [0, 40]; drawn once per seed, minibatches of 32, as the README trains), checked at the
  headline x = 1 and 30 and at 3 x drawn across [0.2, 40].

Seed ``s`` is both the task's seed (the family's draw) and Pyro's seed. A task passes
when every criterion of ``TOLERANCES`` holds (worst over its observations); a crash or a
non-finite draw is a miss.

    python -m benchmarks --suite full --tables robustness    # the reported table
    python -m benchmarks --suite quick --tables robustness   # the smoke test's tiny budgets
    python -m benchmarks.robustness --family gan_gaussian_2d --seeds 0-9 --out part.json
"""

import argparse
import json
import math
import os
import time
import warnings

import pyro
import torch
from pyro.infer import SVI, Predictive

from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit, amortized_guide
from pyro_adv.models.conjugate import ConjugateGaussian
from pyro_adv.models.exponential import (
    exact_posterior_moments,
    exponential_model,
    posterior_summary,
    sample_training_observations,
)
from pyro_adv.models.gan_targets import bivariate_normal_target
from pyro_adv.models.random_families import (
    GaussianTarget,
    RandomConjugateGaussian,
    gaussian_errors,
    random_conjugate_gaussian,
    random_exponential_observations,
    random_gaussian_target,
    random_linear_simulator,
)
from pyro_adv.nn import ImplicitEncoder, MLPGenerator
from pyro_adv.training import fit

__all__ = ["BUDGETS", "FAMILIES", "TOLERANCES", "failures", "run", "run_family"]

NUM_SEEDS = 10

#: Gaussian posteriors and targets: mean within 0.2 sd (worst coordinate), sd ratio
#: within 20% along the worst direction (which also checks the correlations)
_GAUSSIAN = {"mean (sd)": 0.2, "sd ratio - 1": 0.2}

#: family -> criterion -> bound: a criterion passes when its error is below the bound
TOLERANCES = {
    "gan_bivariate": _GAUSSIAN,
    "avb_conjugate_2d": _GAUSSIAN,
    "gan_gaussian_2d": _GAUSSIAN,
    "gan_gaussian_5d": _GAUSSIAN,
    "avb_conjugate": _GAUSSIAN,
    "ali_linear_simulator": _GAUSSIAN,
    "avb_linear_simulator": _GAUSSIAN,
    # E|z| and sd|z| within 10% of quadrature (the radius carries the whole posterior:
    # it is rotation invariant)
    "exponential_avb": {"E|z| rel. error": 0.1, "sd|z| rel. error": 0.1},
}

#: family -> suite -> settings (``steps`` of ``svi.step``, draws for the checks)
BUDGETS = {
    "gan_bivariate": {
        "full": {"steps": 3000, "draws": 20000},
        "test": {"steps": 1500, "draws": 5000},
        "quick": {"steps": 5, "draws": 200},
    },
    "avb_conjugate_2d": {
        "full": {"steps": 1500, "draws": 4000},
        "test": {"steps": 800, "draws": 2000},
        "quick": {"steps": 5, "draws": 200},
    },
    "gan_gaussian_2d": {
        "full": {"steps": 3000, "draws": 20000},
        "test": {"steps": 1500, "draws": 5000},
        "quick": {"steps": 5, "draws": 200},
    },
    "gan_gaussian_5d": {
        "full": {"steps": 3000, "draws": 20000},
        "test": {"steps": 1500, "draws": 5000},
        "quick": {"steps": 5, "draws": 200},
    },
    "avb_conjugate": {
        "full": {"steps": 1500, "draws": 4000},
        "test": {"steps": 800, "draws": 2000},
        "quick": {"steps": 5, "draws": 200},
    },
    "ali_linear_simulator": {
        "full": {"steps": 3000, "draws": 4000, "batch": 256},
        # half the table's steps: with the encoder's regression base seed 5 (4-D, the
        # table's worst before the base) is within 0.13 sd and 6% at 1500 steps; with
        # the base off 0.57 sd and 42% off
        "test": {"steps": 1500, "draws": 2000, "batch": 256},
        "quick": {"steps": 5, "draws": 200, "batch": 32},
    },
    "avb_linear_simulator": {
        "full": {"steps": 2000, "draws": 4000, "batch": 64},
        "test": {"steps": 800, "draws": 2000, "batch": 64},
        "quick": {"steps": 5, "draws": 200, "batch": 8},
    },
    "exponential_avb": {
        "full": {"steps": 3000, "draws": 4000, "batch": 32, "num_data": 4096},
        # two thirds of the table's steps: 1000 were too few for any seed to pass reliably
        # (2/8 seeds with the regression base, 1/4 without; 0/3 with the automatic log)
        "test": {"steps": 2000, "draws": 2000, "batch": 32, "num_data": 4096},
        "quick": {"steps": 5, "draws": 200, "batch": 8, "num_data": 64},
    },
}

#: the headline observations of the exponential model (Table 1)
EXPONENTIAL_HEADLINE_X = (1.0, 30.0)
#: held-out observations per linear simulator
NUM_OBSERVATIONS = 3


def _default_optim(objective, steps):
    """The objective's own default optimizer: what a user gets without choosing one."""
    make = getattr(objective, "default_optim", None)
    if make is not None:
        return make(steps)
    # before the objectives carried default optimizer settings
    return pyro.optim.Adam({"lr": 1e-3})


def _worst(errors_list):
    """Merges per-observation error dicts, keeping each criterion's worst value."""
    merged = {}
    for errors in errors_list:
        for key, value in errors.items():
            old = merged.get(key, -math.inf)
            merged[key] = value if not math.isfinite(value) or value > old else old
    return merged


# ---------------------------------------------------------------------------- families
def _gan_gaussian(make_target):
    def task(seed, budget):
        target = make_target(seed)
        dim = target.dim
        data = target.sample(20000, torch.Generator().manual_seed(seed))
        generator = MLPGenerator(dim, dim)

        def gan(data=None, n=1000, batch_size=None):
            pyro.module("generator", generator)
            size = n if data is None else len(data)
            with pyro.plate("data", size, subsample_size=batch_size) as ind:
                obs = None if data is None else data[ind]
                pyro.sample("x", generator.distribution(len(ind)), obs=obs)

        objective = Trace_GAN()
        svi = SVI(gan, _no_guide, _default_optim(objective, budget["steps"]), objective)
        fit(svi, budget["steps"], data, batch_size=256, progress=False)
        with torch.no_grad():
            samples = Predictive(gan, num_samples=1)(n=budget["draws"])["x"][0]
        return gaussian_errors(samples, target.loc, target.covariance)

    return task


def _no_guide(*args, **kwargs):
    pass


def _thesis_bivariate(seed):
    target = bivariate_normal_target()
    return GaussianTarget(target.loc, target.covariance_matrix)


def _headline_conjugate(seed):
    # the 2-D correlated conjugate Gaussian of the AVB tests (noise sd 2, 10 observations)
    model = ConjugateGaussian(noise_scale=2.0)
    _, x = model.simulate(10, torch.Generator().manual_seed(1))
    return RandomConjugateGaussian(model, x, *model.posterior(x))


def _avb_conjugate(seed, budget, make_task=random_conjugate_gaussian):
    task = make_task(seed)
    guide = AutoImplicit(task.model.model)
    objective = TraceAVB_ELBO()
    svi = SVI(task.model.model, guide, _default_optim(objective, budget["steps"]), objective)
    fit(svi, budget["steps"], task.data, progress=False)
    with torch.no_grad():
        z = Predictive(task.model.model, guide=guide, num_samples=budget["draws"])(task.data)["z"]
    errors = gaussian_errors(
        z.reshape(budget["draws"], -1), task.posterior_loc, task.posterior_covariance
    )
    return errors | {"latent dim": float(task.model.latent_dim)}


def _linear_simulator(objective_class):
    def task(seed, budget):
        sim = random_linear_simulator(seed)
        encoder = ImplicitEncoder(sim.dim_data, sim.dim_parameters)
        objective = objective_class()
        svi = SVI(
            sim.model, sim.guide(encoder), _default_optim(objective, budget["steps"]), objective
        )
        for _ in range(budget["steps"]):
            _, x = sim.sample_joint(budget["batch"])  # fresh simulations every step
            svi.step(x)
        _, x_obs = sim.sample_joint(NUM_OBSERVATIONS, torch.Generator().manual_seed(seed))
        errors = []
        for x in x_obs:
            with torch.no_grad():
                theta = sim.posterior(encoder, x.unsqueeze(0)).sample((budget["draws"],))
            errors.append(gaussian_errors(theta.squeeze(1), *sim.posterior_moments(x)))
        return _worst(errors) | {"latent dim": float(sim.dim_parameters)}

    return task


def _exponential_avb(seed, budget):
    encoder = ImplicitEncoder(1, 2)
    objective = TraceAVB_ELBO()
    svi = SVI(
        exponential_model,
        amortized_guide(encoder),
        _default_optim(objective, budget["steps"]),
        objective,
    )
    # the README's amortized code: the encoder is trained where it is queried, on
    # observations spread over [0, 40] (half uniform, half log-uniform from 0.25; drawn
    # once, seeded by the task), minibatches of 32. Amortized AVB maximizes the ELBO at
    # every training x, so its optimum q(z | x) = p(z | x) does not depend on how the
    # training x are distributed. Fresh prior-predictive batches put 2.6% of x above
    # 25 (these, 23%) and left sd|z| 16-27% off at x = 30 (0/3 seeds)
    data = sample_training_observations(
        budget["num_data"], generator=torch.Generator().manual_seed(seed)
    )
    for _ in range(budget["steps"]):
        svi.step(data, subsample_size=budget["batch"])
    xs = list(EXPONENTIAL_HEADLINE_X) + random_exponential_observations(seed)
    errors, by_x = [], {}
    for x in xs:
        with torch.no_grad():
            z = encoder(torch.tensor([[x]])).sample((budget["draws"],)).squeeze(1)
        got, exact = posterior_summary(z), exact_posterior_moments(x)
        e = {
            "E|z| rel. error": abs(got["mean_norm"] / exact["mean_norm"] - 1),
            "sd|z| rel. error": abs(got["sd_norm"] / exact["sd_norm"] - 1),
        }
        by_x[f"x={x:.3g}"] = e
        errors.append(e)
    return _worst(errors) | {"per x": by_x}


#: family -> (description, ``task(seed, budget) -> errors``)
FAMILIES = {
    "gan_bivariate": (
        "headline: Trace_GAN, the thesis's bivariate normal (3.2.1)",
        _gan_gaussian(_thesis_bivariate),
    ),
    "avb_conjugate_2d": (
        "headline: AutoImplicit + TraceAVB_ELBO, the tests' 2-D conjugate Gaussian",
        lambda seed, budget: _avb_conjugate(seed, budget, _headline_conjugate),
    ),
    "gan_gaussian_2d": (
        "Trace_GAN, random 2-D Gaussian",
        _gan_gaussian(lambda seed: random_gaussian_target(seed, 2)),
    ),
    "gan_gaussian_5d": (
        "Trace_GAN, random 5-D Gaussian",
        _gan_gaussian(lambda seed: random_gaussian_target(seed, 5)),
    ),
    "avb_conjugate": (
        "AutoImplicit + TraceAVB_ELBO, random conjugate linear-Gaussian (dim 2-10)",
        _avb_conjugate,
    ),
    "ali_linear_simulator": (
        "Trace_ALI + ImplicitEncoder, random linear-Gaussian simulator",
        _linear_simulator(Trace_ALI),
    ),
    "avb_linear_simulator": (
        "amortized TraceAVB_ELBO + ImplicitEncoder, random linear-Gaussian simulator",
        _linear_simulator(TraceAVB_ELBO),
    ),
    "exponential_avb": (
        "amortized TraceAVB_ELBO, exponential model at x = 1, 30 and 3 random x",
        _exponential_avb,
    ),
}


def failures(family, errors):
    """The criteria of ``family`` that ``errors`` misses (a NaN misses)."""
    return [
        f"{name} = {errors.get(name, math.nan):.3g} (< {bound})"
        for name, bound in TOLERANCES[family].items()
        if not errors.get(name, math.nan) < bound
    ]


def run_seed(family, seed, suite="full"):
    """One seed of one family: ``{"seed", "passed", "errors", "failures", "seconds", "note"}``."""
    _, task = FAMILIES[family]
    budget = BUDGETS[family][suite]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    note = ""
    # the training loops' advisory warnings would bury the output; a bad fit shows in
    # its errors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            errors = task(seed, budget)
        except Exception as e:  # a crashed seed is a failed seed, not a crashed table
            errors = {name: math.nan for name in TOLERANCES[family]}
            note = f"{type(e).__name__}: {str(e)[:160]}"
    missed = failures(family, errors)
    return {
        "seed": seed,
        "passed": not missed,
        "errors": errors,
        "failures": missed,
        "seconds": time.perf_counter() - start,
        "note": note,
    }


def run_family(family, seeds, suite="full", out=None):
    """
    A row of the table: every seed of ``family`` and the pass count. With ``out``,
    the row so far is written there (JSON) after every seed, so a long run that is
    cut short keeps its finished seeds.
    """
    per_seed = []
    for s in seeds:
        per_seed.append(run_seed(family, s, suite))
        if out is not None:
            _write(out, _row(family, per_seed, suite))
    return _row(family, per_seed, suite)


def _write(path, row):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(row, f, indent=2)
    os.replace(f"{path}.tmp", path)


def _row(family, per_seed, suite):
    description, _ = FAMILIES[family]
    seeds = [s["seed"] for s in per_seed]
    worst = {
        name: max((s["errors"].get(name, math.nan) for s in per_seed), key=_nan_last)
        for name in TOLERANCES[family]
    }
    return {
        "task": family,
        "description": description,
        "budget": BUDGETS[family][suite],
        "seeds": seeds,
        "passed": sum(s["passed"] for s in per_seed),
        "num_seeds": len(per_seed),
        "worst": worst,
        "tolerances": TOLERANCES[family],
        "seconds_per_seed": sum(s["seconds"] for s in per_seed) / len(per_seed),
        "per_seed": per_seed,
    }


def _nan_last(value):
    return math.inf if not math.isfinite(value) else value


def _markdown(rows):
    lines = [
        "| family | seeds passed | worst over seeds (tolerance) | steps | s / seed |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = "<br>".join(
            f"{name}: {row['worst'][name]:.3f} (< {bound})"
            for name, bound in row["tolerances"].items()
        )
        missed = "<br>".join(
            f"seed {s['seed']}: {s['note'] or '; '.join(s['failures'])}"
            for s in row["per_seed"]
            if not s["passed"]
        )
        cells = cells.replace("|", "\\|")
        missed = missed.replace("|", "\\|")
        lines.append(
            f"| {row['description']} | {row['passed']} / {row['num_seeds']} | {cells}"
            f"{'<br>*missed: ' + missed + '*' if missed else ''} | {row['budget']['steps']} | "
            f"{row['seconds_per_seed']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run(quick=False, seed=0, outdir=None, families=None, num_seeds=None):
    """
    :returns: a list of result rows (dicts, one per family, with every seed's errors)
        and the table's Markdown.
    """
    torch.set_num_threads(1)
    suite = "quick" if quick else "full"
    num_seeds = num_seeds or (2 if quick else NUM_SEEDS)
    seeds = range(seed, seed + num_seeds)
    rows = [run_family(f, seeds, suite) for f in (families or FAMILIES)]
    pyro.clear_param_store()
    return rows, _markdown(rows)


def _seeds(text):
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description="one family of Table 5")
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--seeds", default="0-9", help="a range, e.g. 0-9")
    parser.add_argument("--suite", choices=["full", "test", "quick"], default="full")
    parser.add_argument("--out", default=None, help="write the row as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    row = run_family(args.family, _seeds(args.seeds), args.suite, out=args.out)
    print(_markdown([row]), flush=True)
    return row


if __name__ == "__main__":
    main()
