"""The thesis's example models with exact references, shared by tests, examples and benchmarks."""

from pyro_adv.models.conjugate import ConjugateGaussian, GammaPoisson
from pyro_adv.models.exponential import (
    PRIOR_VARIANCE,
    exact_posterior_moments,
    exact_posterior_sample,
    exponential_log_joint,
    exponential_model,
    posterior_summary,
    sample_prior_predictive,
)

__all__ = [
    "ConjugateGaussian",
    "GammaPoisson",
    "PRIOR_VARIANCE",
    "exact_posterior_moments",
    "exact_posterior_sample",
    "exponential_log_joint",
    "exponential_model",
    "posterior_summary",
    "sample_prior_predictive",
]
