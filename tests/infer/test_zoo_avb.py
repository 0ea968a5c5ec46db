"""
Issue 10, item 6: ``AutoImplicit(model)`` + ``TraceAVB_ELBO()`` with the library's
defaults (``recipes.avb_default_adam``: Adam at 5e-3, decayed 20-fold over the run) on
the zoo models it fits, against the zoo's reference posteriors
(:mod:`pyro_adv.models.zoo`).

Each unimodal model has a step budget and tolerances (:data:`CASES`) on three numbers:
C2ST of 2,000 guide draws against 2,000 reference draws, the largest |mean error|
over coordinates in reference sds, and the range of sd ratios. The bimodal model is a
documented limit (covering both modes is a separate issue).
"""

import pytest
import torch
from pyro.infer import SVI

from benchmarks.recipes import avb_default_adam, draw_guide
from pyro_adv.diagnostics import c2st, moment_errors
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models.zoo import get_model

pytest.importorskip("sklearn")

# each test trains for one to two minutes on one shared core
pytestmark = pytest.mark.slow

NUM_SAMPLES = 2000

#: The same bounds for every model, set from what sampling noise and a good guide
#: allow, not from AVB's results: C2ST at 2,000 draws a side has a binomial sd of 0.008
#: around 0.5 for two samples of one distribution, so 0.6 is a visible but small
#: difference; 0.1 sd of mean error is 4x the Monte Carlo sd (0.025) of a mean of
#: 2,000 draws against one of 10,000; sd ratios within 15% leave 3x room over their
#: noise at 2,000 draws (1.7% per coordinate, about 4.5% for the worst of 50).
TOLERANCES = {"c2st": 0.6, "mean_error": 0.1, "sd_ratio": (0.85, 1.15)}

#: name -> SVI steps; and the coordinates whose moments are checked (all by default):
#: the funnel's x has tails so heavy (kurtosis 3 e^9) that the sd of 10,000 reference
#: draws is itself 80% uncertain, so only v's moments are checked (C2ST sees all)
#: The other zoo models are documented limits of the defaults at these budgets (Table 6
#: of the benchmarks, seed 0, measured after the engine fix): eight schools C2ST 0.66
#: (non-centred) and 0.69 (centred), the funnel 0.83 (mean errors up to 1.8 sd), the
#: GLMM's sigma 0.14 sd off its mean (C2ST and sds pass), and the bimodal posterior
#: (one mode only: the separated-modes issue). They are not run here: each costs a
#: minute or two of the suite's ten and asserts nothing a benchmark row does not.
CASES = {
    "logistic_regression": 800,
    "correlated_gaussian": 1000,
}
MOMENT_SITES = {}


def fit_avb_defaults(zoo_model, steps):
    guide = AutoImplicit(zoo_model.model)
    svi = SVI(zoo_model.model, guide, avb_default_adam(steps), TraceAVB_ELBO())
    for _ in range(steps):
        svi.step(*zoo_model.args)
    return guide


def _draws(zoo_model, guide):
    return zoo_model.flat(draw_guide(guide, *zoo_model.args, num_samples=NUM_SAMPLES))


@pytest.mark.parametrize("name", list(CASES))
def test_avb_defaults_meet_the_zoo_tolerances(name):
    zoo_model = get_model(name)
    reference = zoo_model.flat(zoo_model.reference(10_000, seed=0))
    draws = _draws(zoo_model, fit_avb_defaults(zoo_model, CASES[name]))
    # the benchmark's C2ST: sbibm's classifier, hidden width 10 x dim capped at 64
    score = c2st(reference[:NUM_SAMPLES], draws, hidden_dim=min(10 * zoo_model.dim, 64))
    sites = MOMENT_SITES.get(name, zoo_model.sites)
    keep = [i for i, label in enumerate(zoo_model.labels()) if label.split("[")[0] in sites]
    labels = [zoo_model.labels()[i] for i in keep]
    errors = moment_errors(draws[:, keep], reference[:, keep])
    mean_error = torch.as_tensor(errors["mean_error"])
    sd_ratio = torch.as_tensor(errors["variance_ratio"]).sqrt()
    lo, hi = TOLERANCES["sd_ratio"]
    assert score < TOLERANCES["c2st"], (name, score)
    assert mean_error.max() < TOLERANCES["mean_error"], (
        labels[int(mean_error.argmax())],
        mean_error,
    )
    assert lo < sd_ratio.min() and sd_ratio.max() < hi, dict(zip(labels, sd_ratio.tolist()))
