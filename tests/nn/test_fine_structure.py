"""The discriminator's input gain for sharply clustered data (``fine_structure_gain``)."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.infer import Trace_GAN
from pyro_adv.models.gan_targets import GRID_SD, gan_2d, grid_centres, sample_grid, sample_ring
from pyro_adv.nn import Discriminator, MLPGenerator, ModeFeatureDiscriminator
from pyro_adv.nn.mixture import kmeans
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


def _shifted_grid_game(discriminator, steps=200, seed=0):
    """
    Trains ``discriminator`` (nonsaturating loss, Trace_GAN's default rate and betas)
    to tell the 25-Gaussian grid from the same grid with every mode moved by 2 sd in a
    random direction; returns its accuracy and, per mode, the cosine between the mean
    gradient of its logit at the moved mode and the way back to the true centre.
    """
    torch.manual_seed(seed)
    centres = grid_centres()
    shift = torch.randn(25, 2)
    shift = 2 * GRID_SD * shift / shift.norm(dim=-1, keepdim=True)

    def real(n):
        return centres[torch.randint(25, (n,))] + GRID_SD * torch.randn(n, 2)

    def fake(n):
        k = torch.randint(25, (n,))
        return centres[k] + shift[k] + GRID_SD * torch.randn(n, 2), k

    discriminator.initialize(real(256))
    optim = torch.optim.Adam(discriminator.parameters(), lr=4e-3, betas=(0.5, 0.999))
    softplus = torch.nn.functional.softplus
    for _ in range(steps):
        loss = (
            softplus(-discriminator(real(256))).mean()
            + softplus(discriminator(fake(256)[0])).mean()
        )
        optim.zero_grad()
        loss.backward()
        optim.step()
    x, k = fake(4000)
    x.requires_grad_(True)
    grad = torch.autograd.grad(discriminator(x).sum(), x)[0]
    per_mode = torch.stack([grad[k == j].mean(0) for j in range(25)])
    cosine = torch.nn.functional.cosine_similarity(per_mode, -shift, dim=-1)
    with torch.no_grad():
        accuracy = 0.5 * (
            (discriminator(real(4000)) > 0).double().mean() + (discriminator(x) < 0).double().mean()
        )
    return accuracy.item(), cosine


def test_mode_features_let_the_discriminator_see_a_moved_mode():
    # What the generator of Table 9's grid needs from its discriminator: with every
    # component 2 sd off its mode, a gradient back to it. After 200 steps the default
    # discriminator (input gain alone) measured accuracy 0.50 / 0.49 (seeds 0 / 1),
    # its gradient pointing back (cosine > 0.5) at 11 / 14 of 25 modes (400 steps: 14 /
    # 18); with mode features 0.72 / 0.70 and 25 / 25, mean cosine 0.98
    torch.manual_seed(0)
    centres = kmeans(sample_grid(256), 25)
    accuracy, cosine = _shifted_grid_game(ModeFeatureDiscriminator(centres, GRID_SD))
    assert accuracy > 0.65, accuracy
    assert (cosine > 0.5).sum() >= 24, cosine
    assert cosine.mean() > 0.9, cosine


def test_trace_gan_gives_a_placed_mixture_generator_mode_features():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = sample_grid(4096)

    def first_discriminator(generator, objective=None):
        objective = objective or Trace_GAN()
        svi = SVI(gan_2d(generator), lambda *a, **k: None, objective.default_optim(1), objective)
        svi.step(data, batch_size=256)
        pyro.clear_param_store()
        (disc,) = objective.discriminators.values()
        return disc

    generator = MLPGenerator(2, 2, (8,), num_components=25)
    disc = first_discriminator(generator)
    assert isinstance(disc, ModeFeatureDiscriminator)
    # the placement's k-means centres (~10 points a mode) and the modes' sd
    nearest = torch.cdist(disc.centres, grid_centres()).min(-1)
    assert nearest.values.max() < 0.1 and len(set(nearest.indices.tolist())) == 25
    assert math.isclose(disc.bandwidth, 0.7 * GRID_SD, rel_tol=0.2), disc.bandwidth
    assert disc.net[0].in_features == 2 + 25
    assert disc(data[:7]).shape == (7,)
    # and the input gain, as the plain default
    assert (data.std(0) / disc.input_scale).mean() > 3
    # one network, random starting offsets, or the user's discriminator: no mode features
    for generator in (
        MLPGenerator(2, 2, (8,)),
        MLPGenerator(2, 2, (8,), num_components=25, component_init="spread"),
    ):
        assert type(first_discriminator(generator)) is Discriminator
    mine = first_discriminator(
        MLPGenerator(2, 2, (8,), num_components=25),
        Trace_GAN(discriminator=lambda key: Discriminator((8,))),
    )
    assert type(mine) is Discriminator


def test_mode_feature_discriminator_refuses_bad_input():
    with pytest.raises(ValueError, match="centres"):
        ModeFeatureDiscriminator(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        ModeFeatureDiscriminator(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="3 features"):
        ModeFeatureDiscriminator(torch.zeros(3, 2), 1.0)(torch.zeros(5, 3))
