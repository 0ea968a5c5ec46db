"""
Our sbibm tasks against sbibm's own stored files (skipped when sbibm is not installed;
`make install` installs it with `pip install sbibm --no-deps`):

* our priors and simulators, seeded with sbibm's observation seeds, reproduce sbibm's
  true parameters and observations (exact up to float rounding);
* sbibm's reference posterior draws are consistent with our likelihood x prior: the
  Stein identity E[f(theta) d/dtheta log p(theta | x) + f'(theta)] = 0 holds on them,
  and on the tasks with exact samplers their moments match ours;
* c2st_sbibm equals sbibm's own c2st on fixed data.
"""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from pyro_adv.diagnostics import c2st_sbibm
from pyro_adv.models import (
    BERNOULLI_GLM,
    GAUSSIAN_LINEAR,
    GAUSSIAN_MIXTURE,
    SBI_TASKS,
    SLCP,
    TWO_MOONS,
    TwoMoonsLikelihood,
    load_sbibm,
    sbibm_available,
    sbibm_files,
)
from pyro_adv.models.sbibm_files import sbibm_task_dir

needs_sbibm = pytest.mark.skipif(
    not sbibm_available(), reason="sbibm is not installed (pip install sbibm --no-deps)"
)


def test_loader_says_how_to_install_sbibm(monkeypatch):
    monkeypatch.setattr(sbibm_files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install sbibm --no-deps"):
        load_sbibm("two_moons", 1)


@needs_sbibm
def test_loader_shapes_and_bad_names():
    obs = load_sbibm("slcp", 3)
    assert obs.true_parameters.shape == (5,) and obs.observation.shape == (8,)
    assert obs.reference_samples.shape == (10_000, 5) and obs.seed == 1000002
    assert obs.reference_samples.dtype == torch.float32
    with pytest.raises(ValueError, match="no stored files for task 'moons'"):
        load_sbibm("moons", 1)
    with pytest.raises(ValueError, match="no observation 11"):
        load_sbibm("slcp", 11)


@needs_sbibm
@pytest.mark.parametrize("name", list(SBI_TASKS))
def test_our_simulators_reproduce_sbibm_observations(name):
    task = SBI_TASKS[name]
    theta, x = task.observations(10)
    for k in range(10):
        stored = load_sbibm(name, k + 1)
        assert stored.seed == task.observation_seeds[k]
        assert torch.allclose(theta[k], stored.true_parameters, rtol=0, atol=1e-5)
        assert torch.allclose(x[k], stored.observation, rtol=0, atol=1e-4)


@needs_sbibm
def test_bernoulli_glm_design_and_summary_are_sbibm_s():
    path = sbibm_task_dir("bernoulli_glm")
    design = torch.load(os.path.join(path, "design_matrix.pt"))
    stimulus = torch.load(os.path.join(path, "stimulus_I.pt"))
    assert torch.equal(BERNOULLI_GLM.stimulus, stimulus)
    assert torch.equal(BERNOULLI_GLM.design, design)
    for k in (1, 7):
        raw = sbibm_files._read_csv(
            os.path.join(path, f"num_observation_{k}", "observation_raw.csv")
        )
        spikes = torch.from_numpy(raw[0]).float()
        # x = X^T y: spike count and spike-triggered sums, as sbibm's conv1d computes them
        assert torch.allclose(
            spikes @ design, load_sbibm("bernoulli_glm", k).observation, atol=1e-4
        )
        # our likelihood of x is the Bernoulli likelihood of the spike train
        theta = BERNOULLI_GLM.sample_prior(3, torch.Generator().manual_seed(k)).double()
        psi = theta @ design.double().T
        direct = torch.distributions.Bernoulli(logits=psi).log_prob(spikes.double()).sum(-1)
        ours = BERNOULLI_GLM.log_likelihood(theta, spikes.double() @ design.double())
        assert torch.allclose(ours, direct, atol=1e-8)


def _stein_z(task, x, draws, bound=None):
    r"""
    z-scores of the Stein identity E[f_i(theta) d_i log p(theta | x) + d_i f_i(theta)] = 0,
    one per dimension, on posterior draws: f_i = 1 for an unbounded prior, and
    f_i = bound^2 - theta_i^2 (zero on the box's faces) for a flat prior on a box.
    """
    theta = draws.double().clone().requires_grad_(True)
    log_p = task.log_likelihood(theta, x.double())
    if bound is None:
        log_p = log_p + task.prior(theta).log_prob(theta)
    (score,) = torch.autograd.grad(log_p.sum(), theta)
    theta = theta.detach()
    if bound is None:
        terms = score
    else:
        terms = (bound**2 - theta**2) * score - 2 * theta
    return (terms.mean(0) / (terms.std(0) / math.sqrt(terms.shape[0]))).abs()


@needs_sbibm
@pytest.mark.parametrize(
    "task, bound",
    [(SLCP, SLCP.PRIOR_BOUND), (BERNOULLI_GLM, None), (GAUSSIAN_LINEAR, None)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_sbibm_reference_draws_satisfy_stein_identity_of_our_posterior(task, bound):
    # 10 observations x dims z-scores of a zero-mean statistic; a wrong likelihood
    # (a swapped summary, a wrong correlation map, a wrong noise scale) gives z of 10-1000
    worst = 0.0
    for k in range(1, 11):
        obs = load_sbibm(task.name, k)
        worst = max(worst, _stein_z(task, obs.observation, obs.reference_samples, bound).max())
    assert worst < 5.0, worst


@needs_sbibm
def test_sbibm_references_match_our_exact_samplers():
    for k in (1, 2, 3):
        # gaussian_linear: N(x / 2, 0.05 I)
        obs = load_sbibm("gaussian_linear", k)
        s = obs.reference_samples.double()
        mean, cov = GAUSSIAN_LINEAR.posterior_moments(obs.observation.double())
        assert ((s.mean(0) - mean).abs() / math.sqrt(0.05 / s.shape[0])).max() < 5
        assert (s.var(0) / 0.05 - 1).abs().max() < 5 * math.sqrt(2 / s.shape[0])
        # gaussian_mixture: the truncated mixture; share in the narrow component's
        # 3-sd disc, and the spread, against our rejection sampler's
        obs = load_sbibm("gaussian_mixture", k)
        ours = GAUSSIAN_MIXTURE.reference_posterior_sample(
            obs.observation, 200_000, torch.Generator().manual_seed(k)
        ).double()
        s = obs.reference_samples.double()
        center = obs.observation.double()
        for power in (0, 2):
            # power 0: the share within 0.3 of x (mostly the narrow component); power
            # 2: the mean squared distance from x (the broad one, cut by the box)
            a, b = ((t - center).norm(dim=-1) for t in (s, ours))
            a, b = (((d < 0.3).double() if power == 0 else d**2) for d in (a, b))
            assert abs(a.mean() - b.mean()) < 5 * a.std() / math.sqrt(a.shape[0])
        # two_moons: every draw lies on the observation's crescent, both crescents filled
        obs = load_sbibm("two_moons", k)
        s = obs.reference_samples.double()
        p = obs.observation.double() - TwoMoonsLikelihood.shift(s)
        r = (p - torch.tensor([0.25, 0.0], dtype=torch.float64)).norm(dim=-1)
        assert (p[:, 0] >= 0.25 - 1e-5).all()
        assert abs(r.mean() - 0.1) < 5 * 0.01 / math.sqrt(s.shape[0])
        assert abs(r.std() / 0.01 - 1) < 0.05
        assert torch.isfinite(TWO_MOONS.log_likelihood(s, obs.observation.double())).all()
        ours = TWO_MOONS.reference_posterior_sample(
            obs.observation, 10_000, torch.Generator().manual_seed(k)
        )
        share = TWO_MOONS.minor_crescent_share
        assert abs(share(obs.reference_samples) - share(ours)) < 0.03


def _sbibm_c2st_module():
    # sbibm's metric file imports only numpy, torch and scikit-learn; importing the
    # sbibm package itself would pull pandas, pyro's sbibm tasks and more
    path = os.path.join(os.path.dirname(sbibm_task_dir("two_moons")), "..", "..")
    path = os.path.join(os.path.normpath(path), "metrics", "c2st.py")
    spec = importlib.util.spec_from_file_location("_sbibm_c2st", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # sklearn's MLP trains to convergence: 18 s at load 13
@needs_sbibm
def test_c2st_sbibm_equals_sbibm_s_own_metric():
    pytest.importorskip("sklearn")
    theirs = _sbibm_c2st_module().c2st
    # 1-D, 100 a side: sklearn's MLP stops within seconds (2-D at 400 takes minutes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 1, generator=g) * 3.0 + 2.0
    y = torch.randn(100, 1, generator=g) * 3.0 + 3.0
    for seed in (1, 3):
        expected = float(theirs(x, y, seed=seed)[0])
        assert c2st_sbibm(x, y, seed=seed) == expected
    assert c2st_sbibm(x.numpy(), y.double()) == float(theirs(x, y)[0])


def test_c2st_sbibm_rejects_a_constant_reference():
    with pytest.raises(ValueError, match="zero variance"):
        c2st_sbibm(np.ones((20, 2)), np.zeros((20, 2)))
