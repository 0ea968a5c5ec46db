"""
Diagnostics for implicit and explicit guides: ArviZ export, importance
diagnostics (Pareto k-hat) from density ratios, held-out log-likelihood from any
encoder's draws, simulation-based calibration,
two-sample metrics against reference samples, and mode coverage.
"""

from pyro_adv.diagnostics.arviz import to_inference_data
from pyro_adv.diagnostics.importance import (
    ImportanceDiagnostics,
    diagnose_guide,
    effective_sample_size,
    importance_diagnostics,
    importance_log_weights,
    log_evidence,
    psis,
)
from pyro_adv.diagnostics.likelihood import (
    LogLikelihoodEstimate,
    fitted_proposal_log_likelihood,
)
from pyro_adv.diagnostics.modes import ModeCoverage, mode_coverage
from pyro_adv.diagnostics.sbc import SBCResult, ecdf_confidence_band, rank_uniformity_test, sbc
from pyro_adv.diagnostics.two_sample import (
    c2st,
    c2st_sbibm,
    energy_distance,
    mmd,
    moment_errors,
    two_sample_metrics,
)

__all__ = [
    "ImportanceDiagnostics",
    "LogLikelihoodEstimate",
    "ModeCoverage",
    "SBCResult",
    "c2st",
    "c2st_sbibm",
    "diagnose_guide",
    "ecdf_confidence_band",
    "effective_sample_size",
    "energy_distance",
    "fitted_proposal_log_likelihood",
    "importance_diagnostics",
    "importance_log_weights",
    "log_evidence",
    "mode_coverage",
    "mmd",
    "moment_errors",
    "psis",
    "rank_uniformity_test",
    "sbc",
    "to_inference_data",
    "two_sample_metrics",
]
