"""The discriminator's input gain for sharply clustered data (``fine_structure_gain``)."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.infer import Trace_GAN
from pyro_adv.models.gan_targets import gan_2d, sample_grid, sample_ring
from pyro_adv.nn import Discriminator, MLPGenerator
from pyro_adv.nn.mlp import fine_structure_gain


def standardized(x):
    return (x - x.mean(0)) / x.std(0)


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_gaussian_data_keep_gain_one(dim):
    generator = torch.Generator().manual_seed(dim)
    for _ in range(20):
        mixing = torch.randn(dim, dim, generator=generator)
        x = torch.randn(256, dim, generator=generator) @ mixing
        assert fine_structure_gain(standardized(x)) == 1.0


def test_heavy_tails_and_small_batches_keep_gain_one():
    torch.manual_seed(0)
    heavy = torch.distributions.StudentT(3.0).sample((256, 2))
    assert fine_structure_gain(standardized(heavy)) == 1.0
    assert fine_structure_gain(standardized(torch.rand(256, 3))) == 1.0
    # too few rows to tell clustering from chance
    ring = standardized(sample_ring(31))
    assert fine_structure_gain(ring) == 1.0


def test_separated_sharp_modes_get_a_gain():
    torch.manual_seed(0)
    # ring: 8 modes of sd 0.02 at radius 2 (measured ratio ~23: the cap 8)
    assert fine_structure_gain(standardized(sample_ring(256))) == 8.0
    # grid: 25 modes of sd 0.05 two apart (ratio ~10)
    assert 4.0 <= fine_structure_gain(standardized(sample_grid(256))) <= 6.5
    # wider modes: a smaller gain, monotone in the modes' sharpness
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]])
    k = torch.randint(4, (256,))
    gains = [
        fine_structure_gain(standardized(centres[k] + sd * torch.randn(256, 2)))
        for sd in (0.5, 0.1, 0.03)
    ]
    assert gains[0] == 1.0 and 1.0 < gains[1] < gains[2], gains
    # repeated rows (more than half): the cap
    assert fine_structure_gain(torch.randn(4, 2).repeat(16, 1)) == 8.0


def test_gain_leaves_the_global_random_stream_alone():
    x = standardized(sample_ring(256))
    state = torch.get_rng_state()
    fine_structure_gain(x)
    assert torch.equal(state, torch.get_rng_state())


def test_discriminator_folds_the_gain_into_its_standardization():
    torch.manual_seed(1)
    ring = sample_ring(256)
    d = Discriminator((8,), input_gain="auto")
    d(ring)
    assert torch.allclose(d.input_scale, ring.std(0) / 8.0)
    # Gaussian data: the plain standardization
    gauss = torch.randn(256, 2) * torch.tensor([3.0, 0.5])
    d = Discriminator((8,), input_gain="auto")
    d(gauss)
    assert torch.allclose(d.input_scale, gauss.std(0))
    # a fixed gain, and the library default (no gain)
    d = Discriminator((8,), input_gain=4.0)
    d(gauss)
    assert torch.allclose(d.input_scale, gauss.std(0) / 4.0)
    d = Discriminator((8,))
    d(ring)
    assert torch.allclose(d.input_scale, ring.std(0))
    # the state (gain folded into input_scale) round-trips
    d = Discriminator((8,), input_gain="auto")
    d(ring)
    loaded = Discriminator((8,), input_gain="auto")
    loaded.initialize(torch.randn(64, 2))  # builds it; the loaded state replaces this
    loaded.load_state_dict(d.state_dict())
    x = torch.randn(5, 2)
    assert torch.allclose(loaded(x), d(x))


@pytest.mark.parametrize("bad", [0.0, -1.0, "fine", True])
def test_bad_input_gain_is_refused(bad):
    with pytest.raises(ValueError, match="input_gain"):
        Discriminator((8,), input_gain=bad)
    with pytest.raises(ValueError, match="standardize_input"):
        Discriminator((8,), standardize_input=False, input_gain=2.0)


def test_trace_gan_default_discriminator_uses_the_gain():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    for data, expected in ((sample_ring(2048), 8.0), (torch.randn(2048, 2) * 2.0, 1.0)):
        generator = MLPGenerator(2, 2, (8,))
        objective = Trace_GAN()
        svi = SVI(gan_2d(generator), lambda *a, **k: None, objective.default_optim(1), objective)
        svi.step(data, batch_size=256)
        (disc,) = objective.discriminators.values()
        spread = data.std(0)
        gain = (spread / disc.input_scale).mean().item()
        # the batch's spread, not the whole data's: about 5% apart
        assert math.isclose(gain, expected, rel_tol=0.15), gain
        pyro.clear_param_store()
