"""
Table 1, the exponential-latent posterior (thesis section 4.2.1): how close each
method's posterior draws come to the exact posterior at x = 1 (a compact blob) and
x = 30 (a ring), and what each costs.

    z ~ N(0, 2 I) in R^2,    x | z ~ Exp(rate 1 / (1 + |z|^2)).

Methods:

* **amortized** (one training serves every x): AVB with and without adaptive
  contrast, and ALI on a simulation bank, each twice: with the library's defaults
  (as ``examples/exponential_posterior.py`` trains them:
  ``benchmarks.recipes.fit_exponential_*_defaults``) and with the tuned recipe
  (``benchmarks.recipes.fit_exponential_avb`` / ``fit_exponential_ali``: deeper
  networks, ``log1p`` contexts, more particles, hand-set rates); a new x costs one
  encoder call.
* **per x** (refitted for every new x, on the one-observation model
  ``exponential_model(torch.tensor([x]))``): Pyro's ``AutoNormal``,
  ``AutoMultivariateNormal`` and ``AutoIAFNormal`` (an affine autoregressive flow)
  with ``Trace_ELBO``, and NUTS, both a short run (timed) and a long one (a
  reference for what MCMC reaches).
* **exact**: a second, independent draw of the rejection sampler
  ``exact_posterior_sample``; its C2ST is the floor that sampling noise allows.

Columns: C2ST of the method's draws against exact draws (0.5 = indistinguishable),
the worst coordinate's mean error in posterior sds, the variance ratio of each
coordinate, the relative errors of E|z| and sd|z| against quadrature, the training
(or fitting, or NUTS warm-up) time, the time to draw 10,000 posterior draws once
trained, and the total cost of 10,000 draws for a new x. The short NUTS run draws
fewer than 10,000, so its sampling time is scaled up linearly (marked ~).

Reproduce with ``python -m benchmarks --suite full --tables exponential``; the
figure ``exponential_samples.png`` (draws over exact contours) lands in ``--outdir``.
"""

import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import (  # noqa: E402
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from benchmarks.recipes import (  # noqa: E402
    draw_encoder,
    fit_exponential_ali,
    fit_exponential_ali_defaults,
    fit_exponential_avb,
    fit_exponential_avb_defaults,
)
from pyro_adv.diagnostics import c2st, moment_errors  # noqa: E402
from pyro_adv.models import (  # noqa: E402
    exact_posterior_moments,
    exact_posterior_sample,
    exponential_log_joint,
    exponential_model,
    posterior_summary,
)
from pyro_adv.plotting import plot_density_contours  # noqa: E402
from pyro_adv.training import fit  # noqa: E402

__all__ = ["run"]

X_VALUES = (1.0, 30.0)
NUM_DRAWS = 10_000  # "time to draw 10,000 posterior samples for a new x"

BUDGETS = {
    # svi_steps: 2000 Adam steps at lr 0.03 decayed to 5% reach a plateau for all three
    # autoguides at both x: at x = 30, 6000 steps moved the -ELBO by < 0.03 nats and
    # C2ST by < 0.02
    "full": {
        "amortized_kwargs": {},
        "svi_steps": 2000,
        "nuts_short": (200, 2000),  # (warm-up, draws)
        "nuts_long": (1000, NUM_DRAWS),
        "c2st_samples": 3000,
        "c2st_kwargs": {},  # c2st's defaults: 5 folds, at most 1000 steps
        "jit": True,
    },
    # tiny budgets for the smoke test; JIT compilation alone would take seconds, so
    # NUTS runs uncompiled, and C2ST uses 2 folds of at most 50 steps
    "quick": {
        "amortized_kwargs": {
            "avb": {"steps": 10, "num_data": 256, "batch_size": 8},
            "ali": {"steps": 10, "num_simulations": 20_000, "num_pairs": 2000},
        },
        "svi_steps": 20,
        "nuts_short": (5, 10),
        "nuts_long": (5, 20),
        "c2st_samples": 100,
        "c2st_kwargs": {"num_folds": 2, "num_steps": 50},
        "jit": False,
    },
}

#: method -> (label, trainer, its keyword arguments, the budget's kwargs key)
AMORTIZED = {
    "avb-defaults": ("AVB, defaults", fit_exponential_avb_defaults, {}, "avb"),
    "avb": ("AVB, adaptive contrast (recipe)", fit_exponential_avb, {}, "avb"),
    "avb-plain-defaults": (
        "AVB, no adaptive contrast, defaults",
        fit_exponential_avb_defaults,
        {"adaptive_contrast": False},
        "avb",
    ),
    "avb-plain": (
        "AVB, no adaptive contrast (recipe)",
        fit_exponential_avb,
        {"adaptive_contrast": False},
        "avb",
    ),
    "ali-defaults": ("ALI, simulation bank, defaults", fit_exponential_ali_defaults, {}, "ali"),
    "ali": ("ALI, simulation bank (recipe)", fit_exponential_ali, {}, "ali"),
}
AUTOGUIDES = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    # three transforms: one affine autoregressive layer cannot bend a Gaussian into a ring
    "AutoIAFNormal": lambda model: AutoIAFNormal(model, hidden_dim=[32, 32], num_transforms=3),
}


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _amortized(method, budget, seed):
    _, trainer, kwargs, budget_key = AMORTIZED[method]
    kwargs = dict(kwargs, **budget["amortized_kwargs"].get(budget_key, {}))
    fitted, train_s = _timed(lambda: trainer(seed, **kwargs))
    encoder = fitted.encoder
    fits = {}
    for x in X_VALUES:
        draws, draw_s = _timed(draw_encoder, encoder, x, NUM_DRAWS)
        fits[x] = {"draws": draws, "train_s": train_s, "draw_s": draw_s, "new_x_s": draw_s}
    return fits


def _autoguide(make_guide, x, steps, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    obs = torch.tensor([x])
    guide = make_guide(exponential_model)
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.05 ** (1 / steps)})
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(exponential_model, guide, optim, elbo)
    history, train_s = _timed(lambda: fit(svi, steps, obs, progress=False))
    predictive = Predictive(
        exponential_model, guide=guide, num_samples=NUM_DRAWS, return_sites=["z"], parallel=True
    )
    with torch.no_grad():
        draws, draw_s = _timed(lambda: predictive(obs)["z"].reshape(-1, 2))
    # the -ELBO's drift between the last two tenths of the run: near 0 once converged
    tenth = max(steps // 10, 1)
    losses = history["loss"]
    drift = sum(losses[-tenth:]) / tenth - sum(losses[-2 * tenth : -tenth]) / tenth
    return {
        "draws": draws,
        "train_s": train_s,
        "draw_s": draw_s,
        "new_x_s": train_s + draw_s,
        "final_loss": sum(losses[-tenth:]) / tenth,
        "loss_drift": drift,
    }


def _nuts(x, warmup, num_samples, jit, seed):
    pyro.set_rng_seed(seed)
    marks = {}

    def hook(kernel, params, stage, i):
        # the time at which warm-up ends splits adaptation from sampling
        if stage.startswith("Warmup"):
            marks["warmup_end"] = time.perf_counter()

    kernel = NUTS(exponential_model, jit_compile=jit, ignore_jit_warnings=True, max_plate_nesting=1)
    mcmc = MCMC(kernel, num_samples, warmup, disable_progbar=True, hook_fn=hook)
    start = marks["warmup_end"] = time.perf_counter()
    mcmc.run(torch.tensor([x]))
    end = time.perf_counter()
    draws = mcmc.get_samples()["z"].reshape(-1, 2)
    warmup_s, sample_s = marks["warmup_end"] - start, end - marks["warmup_end"]
    # a run shorter than NUM_DRAWS is scaled up linearly (its "~" in the table)
    draw_s = sample_s * NUM_DRAWS / num_samples
    return {
        "draws": draws,
        "train_s": warmup_s,
        "draw_s": draw_s,
        "new_x_s": warmup_s + draw_s,
        "extrapolated": num_samples < NUM_DRAWS,
    }


def _exact(x, seed):
    generator = torch.Generator().manual_seed(seed)
    draws, draw_s = _timed(exact_posterior_sample, x, NUM_DRAWS, generator)
    return {"draws": draws, "train_s": 0.0, "draw_s": draw_s, "new_x_s": draw_s}


def _thin(draws, n):
    """``n`` draws spread evenly over a chain (MCMC draws are autocorrelated)."""
    step = max(draws.shape[0] // n, 1)
    return draws[::step][:n]


def _metrics(draws, reference, moments, n, c2st_kwargs, seed):
    errors = moment_errors(draws, reference)
    summary = posterior_summary(draws)
    # equal sizes on both sides keep chance at 0.5 (a short chain may have fewer than n)
    n = min(n, draws.shape[0])
    return {
        "c2st": c2st(reference[:n], _thin(draws, n), seed=seed, **c2st_kwargs),
        "c2st_samples": n,
        "mean_error": float(errors["mean_error"].max()),
        "variance_ratio_z1": float(errors["variance_ratio"][0]),
        "variance_ratio_z2": float(errors["variance_ratio"][1]),
        "mean_norm_error": summary["mean_norm"] / moments["mean_norm"] - 1,
        "sd_norm_error": summary["sd_norm"] / moments["sd_norm"] - 1,
    }


def _figure(results, methods, outdir):
    lim = (-6.5, 6.5)
    fig, axes = plt.subplots(
        len(X_VALUES), len(methods), figsize=(2.6 * len(methods), 2.8 * len(X_VALUES))
    )
    for i, x in enumerate(X_VALUES):
        for j, (key, name) in enumerate(methods.items()):
            ax = axes[i, j]
            draws = _thin(results[key][x]["draws"], 1000)
            plot_density_contours(
                lambda z, x=x: exponential_log_joint(z, x),
                samples=draws,
                ax=ax,
                xlim=lim,
                ylim=lim,
                scatter_kwargs={"s": 2},
            )
            ax.set_title(f"{name}\nx={x:g}", fontsize=8)
            # no tick labels: every panel spans [-6.5, 6.5]^2, and text is most of the
            # cost of drawing the figure
            ax.set_xticks([])
            ax.set_yticks([])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.25)
    name = "exponential_samples.png"
    fig.savefig(os.path.join(outdir, name), dpi=90)
    plt.close(fig)
    return name


def _fmt_s(seconds):
    return f"{seconds:.3f}" if seconds < 1 else f"{seconds:.1f}"


def _chance_bound(n):
    # C2ST's accuracy over 2n held-out points has a binomial sd of sqrt(0.25 / 2n) when
    # the two samples are alike; 3 sds above chance is where a difference starts
    return 0.5 + 3 * math.sqrt(0.25 / (2 * n))


def _findings(rows, n):
    """Statements computed from the rows, so that they stay true when the table is rerun."""
    lines = []
    for x in X_VALUES:
        at_x = [r for r in rows if r["x"] == x and r["fitted"] != "-"]
        close = [r["c2st"] <= _chance_bound(r["c2st_samples"]) for r in at_x]
        alike = [f"*{r['method']}*" for r, c in zip(at_x, close) if c]
        apart = [f"*{r['method']}* ({r['c2st']:.3f})" for r, c in zip(at_x, close) if not c]
        lines.append(
            f"- x = {x:g}: C2ST within 3 binomial sds of chance ({_chance_bound(n):.3f} at "
            f"{n} draws a side, more for fewer): {', '.join(alike) or 'none'}; "
            f"told apart from exact: {', '.join(apart) or 'none'}."
        )
    per_x = {
        name: sum(r["new_x_s"] for r in rows if r["method"] == name) / len(X_VALUES)
        for name in ("AutoIAFNormal", "NUTS, short")
    }
    for r in rows:
        if r["fitted"] == "amortized" and r["x"] == X_VALUES[0]:
            costs = ", or ".join(
                f"{r['train_s'] / s:.1f} new x with *{name}*" for name, s in per_x.items()
            )
            lines.append(
                f"- *{r['method']}*: training it once ({r['train_s']:.0f} s) costs as much "
                f"as answering {costs}."
            )
    drift = max(abs(r["loss_drift"]) for r in rows if "loss_drift" in r)
    lines.append(
        f"- Autoguides: the -ELBO moved by at most {drift:.3f} nats between the last two "
        "tenths of each fit."
    )
    return lines


def _markdown(rows, budget, figure):
    lines = [
        "| method | fitted | x | C2ST | mean err (sd) | var ratio z1 / z2 | E\\|z\\| err "
        "| sd\\|z\\| err | train s | 10k draws s | new x, 10k draws s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "~" if r.get("extrapolated") else ""
        lines.append(
            f"| {r['method']} | {r['fitted']} | {r['x']:g} | {r['c2st']:.3f} "
            f"| {r['mean_error']:.3f} | {r['variance_ratio_z1']:.2f} / "
            f"{r['variance_ratio_z2']:.2f} | {100 * r['mean_norm_error']:+.1f}% "
            f"| {100 * r['sd_norm_error']:+.1f}% "
            f"| {'-' if r['fitted'] == '-' else _fmt_s(r['train_s'])} "
            f"| {mark}{_fmt_s(r['draw_s'])} | {mark}{_fmt_s(r['new_x_s'])} |"
        )
    warm_short, n_short = budget["nuts_short"]
    warm_long, n_long = budget["nuts_long"]
    lines += [
        "",
        f"C2ST: {budget['c2st_samples']} draws of each method (a chain's draws thinned, or "
        "all of them where there are fewer) against as many exact draws "
        f"({budget['c2st_kwargs'].get('num_folds', 5)}-fold MLP, "
        "`pyro_adv.diagnostics.c2st`); 0.5 is indistinguishable, and the "
        "*exact* row (a second, independent exact draw) shows the floor at this sample "
        "size. Mean error: the worse coordinate's |mean - exact mean| in exact sds. "
        "E|z| and sd|z| errors are relative to quadrature.",
        "",
        "*amortized*: trained once on observations spread over x in [0, 40] (AVB) or "
        "on a bank of prior-predictive simulations (ALI), as "
        "`benchmarks/recipes.py` trains them (*defaults*: the library's, as "
        "`examples/exponential_posterior.py`; *recipe*: the tuned settings); the same "
        "training time "
        "serves both x, and a new x costs one encoder call. *per x*: fitted again for "
        "each x; a new x costs the fit plus the draws. Autoguides: "
        f"{budget['svi_steps']} steps of `Trace_ELBO` (8 particles, Adam lr 0.03 "
        "decayed to 5%); train s is the fit. NUTS short: "
        f"{warm_short} warm-up steps, {n_short} draws (~: sampling time scaled "
        f"linearly to 10,000 draws); NUTS long: {warm_long} warm-up steps, {n_long} "
        "draws; train s is the warm-up"
        + (", including JIT compilation" if budget["jit"] else "")
        + ". Every run is single-threaded.",
        "",
    ]

    lines += _findings(rows, budget["c2st_samples"])
    lines += ["", f"![draws of each method over exact posterior contours]({figure})", ""]
    return "\n".join(lines)


def run(quick=False, seed=0, outdir=None):
    """
    :returns: a list of result rows (dicts) and the table's Markdown.
    """
    torch.set_num_threads(1)
    budget = BUDGETS["quick" if quick else "full"]
    methods, results = {}, {}
    for method, (label, *_) in AMORTIZED.items():
        methods[method] = label
        results[method] = _amortized(method, budget, seed)
    for name, make_guide in AUTOGUIDES.items():
        methods[name] = name
        results[name] = {x: _autoguide(make_guide, x, budget["svi_steps"], seed) for x in X_VALUES}
    for key, (warmup, n) in (
        ("nuts-short", budget["nuts_short"]),
        ("nuts-long", budget["nuts_long"]),
    ):
        methods[key] = f"NUTS, {'short' if key == 'nuts-short' else 'long'}"
        results[key] = {x: _nuts(x, warmup, n, budget["jit"], seed) for x in X_VALUES}
    methods["exact"] = "exact (2nd draw)"
    # the reference and the "exact" row are independent draws of the same sampler
    results["exact"] = {x: _exact(x, seed + 1) for x in X_VALUES}

    rows = []
    n = budget["c2st_samples"]
    for x in X_VALUES:
        reference = exact_posterior_sample(
            x, max(NUM_DRAWS, n), generator=torch.Generator().manual_seed(seed)
        )
        moments = exact_posterior_moments(x)
        for key, name in methods.items():
            fitted = results[key][x]
            row = {
                "method": name,
                "fitted": "amortized" if key in AMORTIZED else ("-" if key == "exact" else "per x"),
                "x": x,
                **_metrics(fitted["draws"], reference, moments, n, budget["c2st_kwargs"], seed),
            }
            row.update({k: v for k, v in fitted.items() if k != "draws"})
            rows.append(row)
    rows.sort(key=lambda r: r["x"])
    figure = _figure(results, methods, outdir or ".")
    return rows, _markdown(rows, budget, figure)
