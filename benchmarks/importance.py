"""
Table 7, importance diagnostics from AVB's discriminator: how often PSIS's
:math:`\\hat k` raises a false alarm on a good guide, and how often it misses a bad
one (Yao et al. 2018: :math:`\\hat k > 0.7` means the weights cannot be trusted).

Guides with a known density are presented to AVB as implicit
(:class:`~pyro_adv.distributions.HiddenDensity`), so the oracle :math:`\\hat k` of
the exact weights is known too:

* *Gamma-Poisson*: the exact Gamma posterior (good) and a Gamma of the same mean
  and a third of the sd (bad);
* *hierarchical Gaussian* (a global and six dependent locals): the exact
  factorized posterior (good) and the same with every sd divided by three (bad);
* *AutoImplicit* on the conjugate Gaussian: a fit with the README's defaults
  (good) and the untrained guide (bad).

Only the discriminator is trained for the hidden guides (the guide is fixed). Each
row gives, over seeds, the alarms with the discriminator's logits bounded to the
range seen on its training draws (the default) and unbounded, and the oracle's.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_adv.diagnostics import importance_diagnostics, importance_log_weights
from pyro_adv.distributions import HiddenDensity
from pyro_adv.infer import TraceAVB_ELBO, is_discriminator_param
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models import ConjugateGaussian

__all__ = ["run"]

ALARM = 0.7
X_COUNTS = torch.tensor([3.0, 5.0, 4.0, 6.0, 2.0, 4.0])
X_HIER = torch.tensor([1.2, -0.3, 2.1, 0.4, 1.7, 0.9])


def _sample(name, fn, hide):
    return pyro.sample(name, HiddenDensity(fn) if hide else fn)


def gamma_poisson(x):
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Poisson(rate), obs=x)


def gamma_poisson_guide(shrink):
    alpha, beta = 2.0 + X_COUNTS.sum(), 0.5 + len(X_COUNTS)
    # the same mean, sd / shrink
    alpha, beta = alpha * shrink**2, beta * shrink**2

    def guide(x, hide=True):
        _sample("rate", dist.Gamma(alpha, beta), hide)

    return guide


def hierarchical(x):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(g, 0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def hierarchical_guide(shrink):
    # exact: z_i | g, x_i ~ N((4 g + x_i) / 5, 1/5); g | x from the marginal
    # x_i | g ~ N(g, 1.25): precision 1 + n / 1.25
    n = len(X_HIER)
    g_var = 1.0 / (1.0 + n / 1.25)
    g_loc = g_var * X_HIER.sum() / 1.25

    def guide(x, hide=True):
        g = _sample("g", dist.Normal(g_loc, g_var**0.5 / shrink), hide)
        with pyro.plate("data", len(x)):
            _sample("z", dist.Normal((4 * g + x) / 5, 0.2**0.5 / shrink), hide)

    return guide


def _khats(model, guide, objective, x, num_samples):
    bounded = objective.importance_log_weights(model, guide, x, num_samples=num_samples)
    unbounded = objective.importance_log_weights(
        model, guide, x, num_samples=num_samples, bounded=False
    )
    return (
        importance_diagnostics(bounded).khat,
        importance_diagnostics(unbounded).khat,
        objective.diagnostic_stats["extrapolated_fraction"],
    )


def _hidden_case(model, guide, x, steps, num_samples):
    objective = TraceAVB_ELBO()
    optim = Adam(lambda name, *_: {"lr": 3e-3 if is_discriminator_param(name) else 0.0})
    svi = SVI(model, guide, optim, loss=objective)
    for _ in range(steps):
        svi.step(x)
    bounded, unbounded, outside = _khats(model, guide, objective, x, num_samples)
    explicit = lambda *a: guide(*a, hide=False)  # noqa: E731
    oracle = importance_log_weights(model, explicit, x, num_samples=num_samples)
    return bounded, unbounded, importance_diagnostics(oracle).khat, outside


def _autoimplicit_case(trained, steps, num_samples):
    problem = ConjugateGaussian()
    _, x = problem.simulate(10)
    guide = AutoImplicit(problem.model)
    objective = TraceAVB_ELBO()
    if trained:
        optim = Adam({"lr": 5e-3})
    else:
        optim = Adam(lambda name, *_: {"lr": 3e-3 if is_discriminator_param(name) else 0.0})
    svi = SVI(problem.model, guide, optim, loss=objective)
    for _ in range(steps):
        svi.step(x)
    bounded, unbounded, outside = _khats(problem.model, guide, objective, x, num_samples)
    return bounded, unbounded, float("nan"), outside


def run(quick=False, seed=0, outdir="."):
    seeds = range(seed, seed + (1 if quick else 5))
    steps = 20 if quick else 600
    num_samples = 200 if quick else 4000
    cases = [
        ("Gamma-Poisson", "exact posterior", lambda: (gamma_poisson, gamma_poisson_guide(1.0))),
        ("Gamma-Poisson", "sd / 3", lambda: (gamma_poisson, gamma_poisson_guide(3.0))),
        (
            "hierarchical Gaussian",
            "exact posterior",
            lambda: (hierarchical, hierarchical_guide(1.0)),
        ),
        ("hierarchical Gaussian", "sd / 3", lambda: (hierarchical, hierarchical_guide(3.0))),
        ("AutoImplicit, conjugate Gaussian", f"AVB fit, {steps} steps", True),
        ("AutoImplicit, conjugate Gaussian", "untrained guide", False),
    ]
    rows = []
    for problem, guide_name, make in cases:
        results = []
        for s in seeds:
            pyro.clear_param_store()
            pyro.set_rng_seed(s)
            if isinstance(make, bool):
                results.append(_autoimplicit_case(make, steps, num_samples))
            else:
                model, guide = make()
                data = X_COUNTS if model is gamma_poisson else X_HIER
                results.append(_hidden_case(model, guide, data, steps, num_samples))
        bad = guide_name in ("sd / 3", "untrained guide")
        columns = list(zip(*results))
        rows.append(
            {
                "problem": problem,
                "guide": guide_name,
                "should_alarm": bad,
                "seeds": len(results),
                "khat_bounded": list(columns[0]),
                "khat_unbounded": list(columns[1]),
                "khat_oracle": list(columns[2]),
                "extrapolated_fraction": list(columns[3]),
            }
        )
    return rows, _markdown(rows)


def _alarms(values):
    return sum(v > ALARM for v in values)


def _markdown(rows):
    lines = [
        "| problem | guide | should alarm | alarms, bounded (default) | alarms, unbounded "
        "| alarms, exact weights | k-hat bounded (median) | k-hat unbounded (median) "
        "| draws bounded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["seeds"]
        oracle = r["khat_oracle"]
        has_oracle = all(v == v for v in oracle)
        lines.append(
            f"| {r['problem']} | {r['guide']} | {'yes' if r['should_alarm'] else 'no'} "
            f"| {_alarms(r['khat_bounded'])}/{n} | {_alarms(r['khat_unbounded'])}/{n} "
            f"| {f'{_alarms(oracle)}/{n}' if has_oracle else '–'} "
            f"| {_median(r['khat_bounded']):.2f} | {_median(r['khat_unbounded']):.2f} "
            f"| {100 * sum(r['extrapolated_fraction']) / n:.1f}% |"
        )
    return "\n".join(lines)


def _median(values):
    return float(torch.tensor(values).median())
