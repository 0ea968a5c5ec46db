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
