"""The references of adaptive contrast: the Gaussian-mixture reference against known
mixtures (its density by quadrature, its fit against the generating parameters)."""

import math

import pytest
import torch

from pyro_adv.infer.contrast import GaussianMixtureReference


def _mixture_draws(n, generator):
    # 0.3 N(-2, 0.5^2) + 0.7 N(1.5, 0.3^2), in 1-D
    upper = torch.rand(n, generator=generator) < 0.7
    eps = torch.randn(n, generator=generator)
    return torch.where(upper, 1.5 + 0.3 * eps, -2.0 + 0.5 * eps).unsqueeze(-1)


def test_em_recovers_a_known_mixture():
    torch.manual_seed(0)
    reference = GaussianMixtureReference(2).fit(
        _mixture_draws(4000, torch.Generator().manual_seed(1))
    )
    log_w, means, tril = (p[0] for p in reference.params)  # the one context
    order = means[:, 0].argsort()
    assert torch.allclose(log_w.exp()[order], torch.tensor([0.3, 0.7]), atol=0.03)
    assert torch.allclose(means[order, 0], torch.tensor([-2.0, 1.5]), atol=0.05)
    assert torch.allclose(tril[order, 0, 0], torch.tensor([0.5, 0.3]), atol=0.03)


@pytest.mark.parametrize("dim", [1, 2])
def test_density_integrates_to_one_and_matches_its_draws(dim):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    draws = _mixture_draws(2000 * dim, g).reshape(-1, dim) if dim == 1 else None
    if dim == 2:  # two correlated clusters: full covariances
        a = torch.randn(1500, 2, generator=g) @ torch.tensor([[0.6, 0.0], [0.4, 0.3]])
        b = torch.randn(1500, 2, generator=g) * 0.4 + torch.tensor([2.0, -1.0])
        draws = torch.cat([a, b])
    reference = GaussianMixtureReference(2).fit(draws.double())
    reference.fit(draws.double())  # warm-started from its own (full-covariance) fit
    # quadrature on a grid: the density integrates to one
    axis = torch.linspace(-6, 6, 601, dtype=torch.float64)
    step = (axis[1] - axis[0]).item()
    grid = torch.cartesian_prod(*[axis] * dim).reshape(-1, dim)
    mass = reference.log_prob(grid).exp().sum().item() * step**dim
    assert abs(mass - 1) < 1e-3, mass
    # its own draws have its moments (sampling and density agree)
    sample = reference.sample(20000)
    weights = reference.log_prob(grid).exp() * step**dim
    mean = (weights.unsqueeze(-1) * grid).sum(0)
    assert torch.allclose(sample.mean(0), mean, atol=0.05)


def test_warm_start_refits_moving_draws():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    reference = GaussianMixtureReference(2)
    reference.fit(_mixture_draws(1000, g))
    # the guide moves: a few warm-started iterations follow it
    reference.fit(_mixture_draws(1000, g) + 0.5)
    means = reference.params[1][0, :, 0].sort().values
    assert torch.allclose(means, torch.tensor([-1.5, 2.0]), atol=0.1)


def test_one_mixture_per_context():
    # amortized guides: every context (observation) has its own mixture
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    first = _mixture_draws(3000, g)
    second = 3.0 - _mixture_draws(3000, g)  # mirrored and shifted: 0.7 at 1.5, 0.3 at 5
    reference = GaussianMixtureReference(2).fit(torch.stack([first, second], 1))
    means = reference.params[1][..., 0].sort(-1).values
    assert torch.allclose(means, torch.tensor([[-2.0, 1.5], [1.5, 5.0]]), atol=0.06)
    draws = reference.sample(20000)
    assert draws.shape == (20000, 2, 1)
    data_means = torch.stack([first.mean(), second.mean()])
    assert torch.allclose(draws.mean(0)[:, 0], data_means, atol=0.05)
    # log r per context: each context's density where the other one has none
    point = torch.tensor([[[5.0], [5.0]]])
    log_r = reference.log_prob(point)
    assert log_r.shape == (1, 2) and log_r[0, 1] > log_r[0, 0] + 10


def test_bad_component_count_is_refused():
    with pytest.raises(ValueError, match="num_components"):
        GaussianMixtureReference(0)
    assert math.isfinite(
        GaussianMixtureReference(1).fit(torch.randn(64, 3)).log_prob(torch.zeros(3))
    )
