"""The thesis's example models with exact references, shared by tests, examples and benchmarks."""

from pyro_adv.models.conjugate import ConjugateGaussian, GammaPoisson
from pyro_adv.models.exponential import (
    PRIOR_VARIANCE,
    amortized_guide,
    exact_posterior_moments,
    exact_posterior_sample,
    exponential_log_joint,
    exponential_model,
    posterior_summary,
    sample_prior_predictive,
    sample_training_observations,
    spread_bank,
)
from pyro_adv.models.gan_targets import (
    exact_divergence_optimum,
    location_scale_gan,
    sample_bivariate_normal,
    sample_mixture,
)
from pyro_adv.models.sbi_tasks import (
    GAUSSIAN_LINEAR,
    NPE_C2ST_10K,
    OBSERVATION_SEED,
    TWO_MOONS,
    GaussianLinear,
    SBITask,
    TwoMoons,
    TwoMoonsLikelihood,
)

__all__ = [
    "ConjugateGaussian",
    "GammaPoisson",
    "PRIOR_VARIANCE",
    "amortized_guide",
    "sample_training_observations",
    "spread_bank",
    "exact_posterior_moments",
    "exact_posterior_sample",
    "exponential_log_joint",
    "exponential_model",
    "posterior_summary",
    "sample_prior_predictive",
    "exact_divergence_optimum",
    "location_scale_gan",
    "sample_bivariate_normal",
    "sample_mixture",
    "GAUSSIAN_LINEAR",
    "NPE_C2ST_10K",
    "OBSERVATION_SEED",
    "TWO_MOONS",
    "GaussianLinear",
    "SBITask",
    "TwoMoons",
    "TwoMoonsLikelihood",
]
