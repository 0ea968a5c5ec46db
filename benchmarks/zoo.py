"""
Table 6, the model zoo (:mod:`pyro_adv.models.zoo`): is ``AutoImplicit`` +
``TraceAVB_ELBO`` a drop-in replacement for Pyro's autoguides? Every zoo model is fitted
once (seed 0) by each method, and the draws are compared with the model's reference
posterior (exact, or long stored NUTS runs; see ``benchmarks/make_zoo_references.py``).

Methods, each with its library's defaults:

* **AutoImplicit + AVB**: ``AutoImplicit(model)``, ``TraceAVB_ELBO()`` (16 particles,
  adaptive contrast) and the library's AVB schedule
  ``benchmarks.recipes.avb_default_adam(steps)`` (Adam at 5e-3 for guide and
  discriminator, decayed 20-fold over the run).
* **Pyro's autoguides** with ``Trace_ELBO()`` (one particle, Pyro's default), the same
  steps and Table 1's schedule (``ClippedAdam``, lr 0.03 decayed 20-fold; AVB's 5e-3
  left them far from converged): ``AutoNormal``, ``AutoMultivariateNormal``,
  ``AutoLowRankMultivariateNormal`` (rank ``sqrt(dim)``), ``AutoIAFNormal`` (one
  affine autoregressive transform) and, as Pyro has no spline-flow autoguide of its
  own, ``AutoNormalizingFlow`` with a spline autoregressive transform (Durkan et al.
  2019; 8 bins on [-3, 3]) followed by an affine autoregressive one (the spline alone
  is the identity outside [-3, 3], so it could not reach a posterior centred at 4).
* **NUTS**: one chain, JIT-compiled, 200 warm-up steps and 500 draws.

Columns: C2ST (``pyro_adv.diagnostics.c2st``: 5-fold MLP, hidden width 10 x dim capped
at 64; 1,000 draws a side, NUTS's 500 against 500) against reference draws; the
largest |mean error| over coordinates in reference sds; the range of sd ratios (method
sd / reference sd) over coordinates; wall time of fit + 10,000 draws (NUTS: warm-up +
draws). All moments are of the model's own (constrained) sites, from 10,000 draws
(NUTS: 500) against 10,000 reference draws. The funnel's x has tails so heavy that
the sd of 10,000 draws is itself about 80% uncertain: its sd ratios say little, v's
do. The *reference* row compares two disjoint halves of the reference draws: the floor
at this sample size.

    python -m benchmarks --suite full --tables zoo     # the table
    python -m benchmarks --suite quick --tables zoo    # smoke test
"""

import math
import time

import pyro
import pyro.distributions.transforms as T
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)

from benchmarks.recipes import avb_default_adam, draw_guide
from pyro_adv.diagnostics import c2st, moment_errors
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models.zoo import ZOO, get_model

__all__ = ["BUDGETS", "METHODS", "fit_svi", "run"]

NUM_DRAWS = 10_000


def _spline_flow(latent_dim):
    return T.ComposeTransformModule(
        [T.spline_autoregressive(latent_dim), T.affine_autoregressive(latent_dim)]
    )


#: method name -> guide factory (None: NUTS)
METHODS = {
    "AutoImplicit + AVB": AutoImplicit,
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoLowRankMultivariateNormal": AutoLowRankMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
    "AutoNormalizingFlow (spline)": lambda model: AutoNormalizingFlow(model, _spline_flow),
    "NUTS": None,
}

BUDGETS = {
    "full": {
        # SVI steps per model, the same for every SVI method
        # 600 steps (the README's AutoImplicit example): on 2 shared cores the 41 fits
        # must fit in about 20 minutes; the schedules decay the rate 20-fold over the run
        # whatever its length. At 300 steps AVB's eight schools (centred) C2ST was 0.93,
        # at 600 steps 0.73 (measured)
        "steps": {name: 600 for name in ZOO},
        "nuts": (200, 500),
        "max_tree_depth": 10,  # NUTS's default
        "draws": NUM_DRAWS,
        "c2st_samples": 1000,
        "c2st_kwargs": {},
        "jit": True,
    },
    # the smoke test: every code path, tiny budgets (uncompiled NUTS with shallow trees,
    # as a first step size far off makes full-depth trees slow)
    "quick": {
        "steps": {name: 3 for name in ZOO},
        "nuts": (3, 6),
        "max_tree_depth": 3,
        "draws": 200,
        "c2st_samples": 50,
        "c2st_kwargs": {"num_folds": 2, "num_steps": 10},
        "jit": False,
    },
}


def fit_svi(zoo_model, method, steps, seed=0):
    """
    Fits ``method`` (a key of :data:`METHODS` other than NUTS) to ``zoo_model`` with its
    library defaults: ``AutoImplicit`` with ``TraceAVB_ELBO()`` and
    ``avb_default_adam(steps)``, the others with ``Trace_ELBO()`` and ``ClippedAdam`` at
    0.03 decayed 20-fold over the run (Table 1's autoguide schedule).

    :returns: the guide and the last loss.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = METHODS[method](zoo_model.model)
    if method == "AutoImplicit + AVB":
        loss, optim = TraceAVB_ELBO(), avb_default_adam(steps)
    else:
        # Table 1's autoguide schedule: AVB's 5e-3 left AutoNormal's sds at 0.03-0.05 of
        # the posterior's on eight schools after 600 steps (measured), far from converged
        loss = Trace_ELBO()
        optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.05 ** (1 / steps)})
    svi = SVI(zoo_model.model, guide, optim, loss)
    last = None
    for _ in range(steps):
        last = svi.step(*zoo_model.args)
    return guide, last


#: (model, method) -> why the cell is not run, measured
SKIP = {}


def _svi_row(zoo_model, method, steps, num_draws, seed):
    start = time.perf_counter()
    guide, loss = fit_svi(zoo_model, method, steps, seed)
    draws = zoo_model.flat(draw_guide(guide, *zoo_model.args, num_samples=num_draws))
    return draws, {"seconds": time.perf_counter() - start, "final_loss": loss}


def _nuts_row(zoo_model, warmup, num_samples, jit, max_tree_depth, seed):
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    kernel = NUTS(
        zoo_model.model, jit_compile=jit, ignore_jit_warnings=True, max_tree_depth=max_tree_depth
    )
    mcmc = MCMC(kernel, num_samples, warmup, disable_progbar=True)
    mcmc.run(*zoo_model.args)
    draws = zoo_model.flat(mcmc.get_samples())
    divergences = len(mcmc.diagnostics()["divergences"]["chain 0"])
    return draws, {"seconds": time.perf_counter() - start, "divergences": divergences}


def _thin(draws, n):
    step = max(draws.shape[0] // n, 1)
    return draws[::step][:n]


def _metrics(draws, reference, c2st_reference, n, c2st_kwargs, seed):
    if not torch.isfinite(draws).all():
        return {"error": "non-finite draws"}
    errors = moment_errors(draws, reference)
    sd_ratio = errors["variance_ratio"] ** 0.5
    # equal sizes keep chance at 0.5; the reference's first n against a thinned chain
    n = min(n, draws.shape[0], c2st_reference.shape[0])
    hidden = min(10 * draws.shape[1], 64)
    score = c2st(c2st_reference[:n], _thin(draws, n), seed=seed, hidden_dim=hidden, **c2st_kwargs)
    return {
        "c2st": score,
        "c2st_samples": n,
        "mean_error": float(errors["mean_error"].max()),
        "sd_ratio_min": float(sd_ratio.min()),
        "sd_ratio_max": float(sd_ratio.max()),
    }


def _fmt(row):
    if "error" in row:
        return f"| {row['model']} | {row['method']} | {row['error']} | | | |"
    seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
    extra = f" ({row['divergences']} div.)" if row.get("divergences") else ""
    return (
        f"| {row['model']} | {row['method']} | {row['c2st']:.3f} | {row['mean_error']:.2f} "
        f"| {row['sd_ratio_min']:.2f}-{row['sd_ratio_max']:.2f} | {seconds}{extra} |"
    )


def _markdown(rows, budget, references):
    n = budget["c2st_samples"]
    bound = 0.5 + 3 * math.sqrt(0.25 / (2 * n))
    lines = [
        "| model | method | C2ST | max mean err (sd) | sd ratio | s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_fmt(r) for r in rows]
    steps = budget["steps"]
    warmup, draws = budget["nuts"]
    lines += [
        "",
        "SVI steps per model (every SVI method): "
        + ", ".join(f"{k} {v}" for k, v in steps.items())
        + f". NUTS: one chain, {warmup} warm-up steps, {draws} draws. References: "
        + ", ".join(f"{k} {v}" for k, v in references.items())
        + f". C2ST: {n} draws a side; 3 binomial sds above chance is {bound:.3f}. "
        "*reference*: two disjoint halves of the reference draws. Every run is "
        "single-threaded, seed 0, one run per cell.",
    ]
    return "\n".join(lines)


def run(quick=False, seed=0, outdir=None):
    """
    :returns: a list of result rows (dicts) and the table's Markdown.
    """
    torch.set_num_threads(1)
    budget = BUDGETS["quick" if quick else "full"]
    n = budget["c2st_samples"]
    rows, references = [], {}
    for name in ZOO:
        zoo_model = get_model(name)
        references[name] = zoo_model.reference_kind
        reference = zoo_model.flat(zoo_model.reference(budget["draws"], seed=seed))
        # moments against all reference draws, C2ST against the first n; the reference
        # row compares the two halves of the draws (disjoint)
        c2st_reference = reference[:n]
        half = budget["draws"] // 2
        row = {"model": name, "method": "reference", "seconds": None}
        row.update(
            _metrics(
                reference[half:], reference[:half], c2st_reference, n, budget["c2st_kwargs"], seed
            )
        )
        rows.append(row)
        for method in METHODS:
            row = {"model": name, "method": method}
            if not quick and (name, method) in SKIP:
                row["error"] = SKIP[name, method]
                rows.append(row)
                continue
            try:
                if METHODS[method] is None:
                    draws, info = _nuts_row(
                        zoo_model, *budget["nuts"], budget["jit"], budget["max_tree_depth"], seed
                    )
                else:
                    row["steps"] = budget["steps"][name]
                    draws, info = _svi_row(zoo_model, method, row["steps"], budget["draws"], seed)
            except Exception as e:  # a crash is a result: the table says which
                row["error"] = f"crashed: {type(e).__name__}"
                row["message"] = str(e).splitlines()[0][:300] if str(e) else ""
                rows.append(row)
                print(f"zoo: {name}, {method}: {row['error']} {row['message']}", flush=True)
                continue
            row.update(info)
            row.update(_metrics(draws, reference, c2st_reference, n, budget["c2st_kwargs"], seed))
            rows.append(row)
            print(f"zoo: {_fmt(row)}", flush=True)
    return rows, _markdown(rows, budget, references)
