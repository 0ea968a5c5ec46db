import pytest
import torch

from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.nn import MLP, Discriminator, ImplicitEncoder, MLPGenerator, PairDiscriminator


def test_lazy_discriminator_follows_input_dtype():
    d = Discriminator(hidden_dims=(8,))
    x = torch.randn(10, 3, dtype=torch.float64) * 100 + 50
    out = d(x)
    assert out.shape == (10,) and out.dtype == torch.float64
    assert next(d.parameters()).dtype == torch.float64
    # first-batch standardization makes the inputs unit scale
    assert torch.allclose(((x - d.input_loc) / d.input_scale).std(0), torch.ones(3, dtype=x.dtype))
    with pytest.raises(ValueError, match="expected inputs with 3 features"):
        d(torch.randn(10, 4, dtype=torch.float64))


def test_pair_discriminator_broadcasts():
    d = PairDiscriminator(hidden_dims=(8,))
    assert d(torch.randn(7, 1), torch.randn(4, 7, 2)).shape == (4, 7)


def test_encoder_returns_implicit_distribution():
    enc = ImplicitEncoder(input_dim=1, latent_dim=2, noise_dim=3)
    q = enc(torch.rand(6, 1))
    assert isinstance(q, ImplicitDistribution)
    assert q.batch_shape == (6,) and q.event_shape == (2,)
    assert q.rsample((5,)).shape == (5, 6, 2)
    # noise follows the context's dtype
    enc64 = ImplicitEncoder(1, 2).double()
    assert enc64(torch.rand(3, 1, dtype=torch.float64)).rsample().dtype == torch.float64
    with pytest.raises(ValueError, match="unsqueeze"):
        enc(torch.rand(6))
    with pytest.raises(ValueError, match="input_dim=1"):
        enc(torch.rand(6, 2))


def test_generator_distribution_and_activation_errors():
    g = MLPGenerator(2, 3, hidden_dims=(8,), activation="tanh")
    assert g.distribution(5).rsample().shape == (5, 3)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(2, 2, activation="nope")


def test_joint_whitening_of_a_known_gaussian():
    # [x, z] with x = A z + noise: W is lower-triangular with a positive diagonal, the
    # whitened pairs have identity covariance up to the jitter eps (exactly I - eps W W^T:
    # the map is fixed on these rows), and the z rows are z's residuals given x
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.5])
    a = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 1.0]], dtype=torch.float64)
    x = z @ a + 0.3 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    d = PairDiscriminator(hidden_dims=(8,), standardize_input="joint")
    d(x, z)
    w = d.input_whitener
    assert w.shape == (5, 5) and torch.equal(w, w.tril()) and (w.diagonal() > 0).all()
    u = ((torch.cat([x, z], -1) - d.input_loc) / d.input_scale) @ w.mT
    assert torch.allclose(torch.cov(u.mT), torch.eye(5, dtype=u.dtype) - 1e-4 * w @ w.mT)
    # exact: W D^{-1} (the map on centred raw pairs) is the inverse Cholesky factor of
    # the pairs' population covariance, to sampling error: the z rows are z minus its
    # linear regression on x, in units of the conditional covariance's factor
    cov_z = torch.diag(torch.tensor([4.0, 0.25], dtype=torch.float64))
    cov_x = a.mT @ cov_z @ a + 0.09 * torch.eye(3, dtype=torch.float64)
    joint = torch.cat([torch.cat([cov_x, a.mT @ cov_z], 1), torch.cat([cov_z @ a, cov_z], 1)])
    exact = torch.linalg.inv(torch.linalg.cholesky(joint))
    got = w / d.input_scale  # W D^{-1}: the map on centred raw pairs
    assert torch.allclose(got, exact, rtol=0.05, atol=0.05)


def test_joint_whitening_degenerate_inputs():
    from pyro_adv.nn.mlp import joint_whitening

    # a duplicated and a constant coordinate: finite, amplification bounded by the jitter
    x = torch.randn(200, 2)
    x = torch.cat([x, x[:, :1], torch.zeros(200, 1)], -1)
    d = PairDiscriminator(hidden_dims=(8,), standardize_input="joint")
    out = d(x[:, :2], x[:, 2:])
    assert torch.isfinite(out).all() and torch.isfinite(d.input_whitener).all()
    assert d.input_whitener.abs().max() < 200
    # too few rows for a covariance, or one feature: the diagonal standardization
    assert joint_whitening(torch.randn(7, 3)) is None
    assert joint_whitening(torch.randn(50, 1)) is None
    with pytest.raises(ValueError, match="standardize_input"):
        MLP(None, 1, standardize_input="full")
