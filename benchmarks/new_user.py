"""
Table 10: library defaults on targets nobody tuned for (issue 12, "tried as a new user").

Each case is written as a new user would write it from the README: the classes'
defaults, the public API, and either the objective's default optimizer
(``objective.default_optim(num_steps)``) or plain ``Adam({"lr": 1e-3})``:

* ``exponential_avb``: ``ImplicitEncoder(1, 2)`` + ``TraceAVB_ELBO()`` on fresh
  prior-predictive batches of the exponential model (no ``log1p``, no bank), checked
  at held-out ``x`` = 1 and 8 against the exact sampler (E|z|, sd|z|, C2ST).
* ``gan_bivariate``: ``Trace_GAN()`` with an ``MLPGenerator(2, 2)`` on a bivariate
  normal with mean (-1, 2), sds (0.5, 2) and correlation -0.6 (not the thesis's).
* ``ali_two_moons``: ``Trace_ALI()`` with an ``ImplicitEncoder(2, 2)`` on sbibm's
  two_moons with fresh simulations every step (no bank), C2ST at one observation.
* ``zoo_<name>``: ``AutoImplicit`` + ``TraceAVB_ELBO()`` on a model of the zoo, C2ST
  against its reference.

``python -m benchmarks.new_user --case exponential_avb --optim default`` prints one
JSON line; ``--optim adam`` is the plain-Adam baseline. The numbers land in
``benchmarks/results/new_user.json`` (``--out``).
"""

import argparse
import contextlib
import json
import os
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive

from pyro_adv.diagnostics.two_sample import c2st
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit, amortized_guide
from pyro_adv.models.exponential import (
    exact_posterior_moments,
    exact_posterior_sample,
    exponential_model,
    posterior_summary,
    sample_prior_predictive,
)
from pyro_adv.models.sbi_tasks import TWO_MOONS
from pyro_adv.models.zoo import get_model
from pyro_adv.nn import ImplicitEncoder, MLPGenerator, raw_weights

__all__ = ["CASES", "run_case"]

NUM_DRAWS = 2000
#: every sample is drawn twice: with the objective's weight averages (the default)
#: and with the raw last weights (the " raw" columns)
_WEIGHTS = (("", contextlib.nullcontext), (" raw", raw_weights))


#: overrides of the default optimizer's settings (``--override lr=1e-3``), for sweeps
OVERRIDES = {}


def _optim(objective, name, steps):
    if name == "adam":
        return pyro.optim.Adam({"lr": 1e-3})
    if name == "default":
        return objective.default_optim(steps, **OVERRIDES)
    raise ValueError(f"unknown optimizer {name!r}")


def _c2st(x, y, quick):
    kwargs = {"num_folds": 2, "num_steps": 20} if quick else {}
    return c2st(x, y, **kwargs)


def exponential_avb(optim, steps, seed, quick=False, batch=64):
    encoder = ImplicitEncoder(1, 2)
    avb = TraceAVB_ELBO()
    svi = SVI(exponential_model, amortized_guide(encoder), _optim(avb, optim, steps), avb)
    for _ in range(steps):
        _, x = sample_prior_predictive(batch)  # a fresh prior-predictive batch
        svi.step(x)
    out = {}
    n = 200 if quick else NUM_DRAWS
    for x in (1.0, 8.0):
        ref = exact_posterior_sample(x, n, torch.Generator().manual_seed(1))
        exact = exact_posterior_moments(x)
        for tag, weights in _WEIGHTS:
            with torch.no_grad(), weights():
                z = encoder(torch.tensor([[x]])).sample((n,)).squeeze(1)
            got = posterior_summary(z)
            out[f"E|z| err x={x:g}{tag}"] = got["mean_norm"] / exact["mean_norm"] - 1
            out[f"sd|z| err x={x:g}{tag}"] = got["sd_norm"] / exact["sd_norm"] - 1
            out[f"C2ST x={x:g}{tag}"] = _c2st(ref, z, quick)
    return out


#: the GAN target: another mean, other scales, a negative correlation
GAN_MEAN = (-1.0, 2.0)
GAN_SD = (0.5, 2.0)
GAN_CORRELATION = -0.6


def gan_bivariate(optim, steps, seed, quick=False, batch=256):
    sd = torch.tensor(GAN_SD)
    corr = torch.tensor([[1.0, GAN_CORRELATION], [GAN_CORRELATION, 1.0]])
    cov = corr * sd[:, None] * sd[None, :]
    target = dist.MultivariateNormal(torch.tensor(GAN_MEAN), cov)
    data = target.sample((20000,))
    generator = MLPGenerator(2, 2)

    def gan(data=None, n=1000, batch_size=None):
        pyro.module("generator", generator)
        size = n if data is None else len(data)
        with pyro.plate("data", size, subsample_size=batch_size) as ind:
            obs = None if data is None else data[ind]
            pyro.sample("x", generator.distribution(len(ind)), obs=obs)

    gan_loss = Trace_GAN()
    svi = SVI(gan, lambda *a, **k: None, _optim(gan_loss, optim, steps), gan_loss)
    for _ in range(steps):
        svi.step(data, batch_size=batch)
    n = 500 if quick else 20000
    ref = target.sample((NUM_DRAWS if not quick else 200,))
    out = {}
    for tag, weights in _WEIGHTS:
        with torch.no_grad(), weights():
            x = Predictive(gan, num_samples=1)(n=n)["x"][0]
        out[f"mean err (sd){tag}"] = ((x.mean(0) - target.mean) / sd).abs().max().item()
        out[f"sd ratio - 1{tag}"] = (x.std(0) / sd - 1).abs().max().item()
        out[f"corr err{tag}"] = abs(torch.corrcoef(x.T)[0, 1].item() - GAN_CORRELATION)
        out[f"C2ST{tag}"] = _c2st(ref, x[: len(ref)], quick)
    return out


def ali_two_moons(optim, steps, seed, quick=False, batch=256):
    task = TWO_MOONS
    encoder = ImplicitEncoder(2, 2)
    ali = Trace_ALI()
    svi = SVI(task.model, task.guide(encoder), _optim(ali, optim, steps), ali)
    for _ in range(steps):
        _, x = task.sample_joint(batch)  # fresh simulations every step
        svi.step(x)
    _, x_obs = task.observations(1)
    n = 200 if quick else NUM_DRAWS
    ref = task.reference_posterior_sample(x_obs[0], n, torch.Generator().manual_seed(1))
    out = {}
    for tag, weights in _WEIGHTS:
        with torch.no_grad(), weights():
            theta = task.posterior(encoder, x_obs).sample((n,)).squeeze(1)
        out[f"C2ST{tag}"] = _c2st(ref, theta, quick)
        out[f"minor crescent{tag}"] = task.minor_crescent_share(theta)
    return out


def zoo(name):
    def case(optim, steps, seed, quick=False):
        zoo_model = get_model(name)
        guide = AutoImplicit(zoo_model.model)
        avb = TraceAVB_ELBO()
        svi = SVI(zoo_model.model, guide, _optim(avb, optim, steps), avb)
        for _ in range(steps):
            svi.step(*zoo_model.args)
        n = 200 if quick else NUM_DRAWS
        with torch.no_grad(), pyro.plate("draws", n, dim=-2):
            draws = guide(*zoo_model.args)
        q = zoo_model.flat(draws)
        ref = zoo_model.flat(zoo_model.reference(n, seed=1))
        hidden = min(10 * q.shape[1], 64)
        kwargs = {"num_folds": 2, "num_steps": 20} if quick else {}
        return {"C2ST": c2st(ref, q, hidden_dim=hidden, **kwargs)}

    return case


CASES = {
    "exponential_avb": (exponential_avb, 3000),
    "gan_bivariate": (gan_bivariate, 4000),
    "ali_two_moons": (ali_two_moons, 4000),
    "zoo_eight_schools_noncentered": (zoo("eight_schools_noncentered"), 1000),
    "zoo_eight_schools_centered": (zoo("eight_schools_centered"), 1000),
    "zoo_hierarchical_poisson": (zoo("hierarchical_poisson"), 1000),
    "zoo_funnel": (zoo("funnel"), 1000),
}


def run_case(case, optim="default", steps=None, seed=0, quick=False):
    fn, default_steps = CASES[case]
    steps = default_steps if steps is None else steps
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    result = fn(optim, steps, seed, quick=quick)
    row = {"case": case, "optim": optim, "steps": steps, "seed": seed}
    row.update({k: round(v, 4) for k, v in result.items()})
    row["train s"] = round(time.perf_counter() - start, 1)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--optim", choices=("default", "adam"), default="default")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a tag stored with the row")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--override", action="append", default=[], help="default_optim setting, e.g. lr=1e-3"
    )
    parser.add_argument("--out", default=None, help="append the row to this JSON-lines file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for item in args.override:
        key, value = item.split("=")
        OVERRIDES[key] = float(value)
    row = run_case(args.case, args.optim, args.steps, args.seed, args.quick)
    if args.label:
        row["label"] = args.label
    if OVERRIDES:
        row["overrides"] = dict(OVERRIDES)
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return row


if __name__ == "__main__":
    main()
