"""The shared tolerances of the headline accuracy tasks (the recipes run in tests/infer)."""

import math

from benchmarks.recipes import TOLERANCES, describe_tolerance, failures


def test_failures_reads_bounds_intervals_and_nan():
    errors = {"mu to nearest mode": 0.05, "sigma": 0.3, "mu to basin optimum": 0.01}
    assert failures("gan_mixture_reverse_kl", errors) == []
    errors["sigma"] = 0.5
    (missed,) = failures("gan_mixture_reverse_kl", errors)
    assert missed.startswith("sigma = 0.5") and "in [0.2, 0.45]" in missed
    errors["mu to nearest mode"] = math.nan
    assert len(failures("gan_mixture_reverse_kl", errors)) == 2
    assert describe_tolerance(0.1) == "< 0.1"


def test_every_task_has_tolerances():
    assert set(TOLERANCES) == {
        "conjugate_gaussian",
        "gamma_poisson",
        "exponential_avb",
        "exponential_ali",
        "gan_bivariate_nonsaturating",
        "gan_bivariate_wasserstein",
        "gan_mixture_kl",
        "gan_mixture_reverse_kl",
    }
    # the bound on E[z] holds at both x for AVB
    assert TOLERANCES["exponential_avb"]["|E[z]| x=30"] == 0.15
    assert TOLERANCES["exponential_avb"]["|E[z]| x=1"] == 0.15
