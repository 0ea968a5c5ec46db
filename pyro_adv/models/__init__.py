"""The thesis's example models with exact references, shared by tests, examples and benchmarks."""

# amortized_guide moved to pyro_adv.infer.autoguide (it is generic); this alias keeps
# code written before session 5 working and is not part of the documented API
from pyro_adv.infer.autoguide.amortized import amortized_guide as amortized_guide
from pyro_adv.models.conjugate import ConjugateGaussian, GammaPoisson
from pyro_adv.models.exponential import (
    PRIOR_VARIANCE,
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
    BERNOULLI_GLM,
    GAUSSIAN_LINEAR,
    GAUSSIAN_MIXTURE,
    NPE_C2ST_10K,
    OBSERVATION_SEED,
    PUBLISHED_C2ST,
    SBI_TASKS,
    SLCP,
    TWO_MOONS,
    BernoulliGLM,
    BernoulliGLMLikelihood,
    GaussianLinear,
    GaussianMixture,
    SBITask,
    Slcp,
    TwoMoons,
    TwoMoonsLikelihood,
)
from pyro_adv.models.sbibm_files import load_sbibm, sbibm_available

__all__ = [
    "ConjugateGaussian",
    "GammaPoisson",
    "PRIOR_VARIANCE",
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
    "BERNOULLI_GLM",
    "GAUSSIAN_LINEAR",
    "GAUSSIAN_MIXTURE",
    "NPE_C2ST_10K",
    "OBSERVATION_SEED",
    "PUBLISHED_C2ST",
    "SBI_TASKS",
    "SLCP",
    "TWO_MOONS",
    "BernoulliGLM",
    "BernoulliGLMLikelihood",
    "GaussianLinear",
    "GaussianMixture",
    "SBITask",
    "Slcp",
    "TwoMoons",
    "TwoMoonsLikelihood",
    "load_sbibm",
    "sbibm_available",
]
