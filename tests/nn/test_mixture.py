"""Mixture samplers and packed discriminators (issue 11): shapes, bins, packing."""

import math

import pytest
import torch

from pyro_adv.diagnostics import mode_coverage
from pyro_adv.models.gan_targets import (
    GRID_SD,
    RING_SD,
    grid_centres,
    ring_centres,
    sample_grid,
    sample_ring,
)
from pyro_adv.nn import ImplicitEncoder, MixtureMLP, MLPGenerator, PackedDiscriminator
from pyro_adv.nn.averaging import raw_weights
from pyro_adv.nn.mixture import component_index


def test_components_are_equally_likely():
    k = component_index(torch.randn(200_000), 8)
    share = torch.bincount(k, minlength=8).double() / len(k)
    assert (share - 1 / 8).abs().max() < 0.005


def test_mixture_mlp_is_piecewise_and_offsets_are_antithetic():
    torch.manual_seed(0)
    net = MixtureMLP(3, 2, 4, hidden_dims=(8,), spread=1.0)
    assert torch.allclose(net.offsets[:2], -net.offsets[2:])
    x = torch.randn(50, 3)
    y = net(x)
    assert y.shape == (50, 2)
    # the same noise with the selector moved across a bin edge changes the component
    a, b = x[:1].clone(), x[:1].clone()
    a[0, -1], b[0, -1] = -0.01, 0.01  # Phi = 0.496 and 0.504: bins 1 and 2 of 4
    assert net.component(a).item() == 1 and net.component(b).item() == 2
    assert (net(a) - net(b)).abs().max() > 0.1


def test_generators_and_encoders_take_components():
    g = MLPGenerator(2, 2, num_components=5)
    assert g(torch.randn(7, 2)).shape == (7, 2)
    assert g.distribution(11).sample().shape == (11, 2)
    enc = ImplicitEncoder(3, 2, num_components=4)
    assert enc(torch.randn(6, 3)).rsample((5,)).shape == (5, 6, 2)
    with pytest.raises(ValueError, match="num_components"):
        MLPGenerator(2, 2, num_components=0)
    with pytest.raises(ValueError, match="num_components"):
        MixtureMLP(2, 2, 1.5)


def test_packed_discriminator_scores_packs():
    torch.manual_seed(0)
    d = PackedDiscriminator(pack=3, hidden_dims=(8,))
    x = torch.randn(10, 2)
    d.initialize(x)
    assert d.inner.input_dim == 6
    logits = d(x)
    assert logits.shape == (10,)
    # every pack's logit is shared by its rows: at most ceil(10 / 3) distinct values
    assert len(torch.unique(logits.detach())) <= 4
    assert d(torch.randn(4, 10, 2)).shape == (4, 10)
    with pytest.raises(ValueError, match="pack"):
        PackedDiscriminator(pack=0)


def test_mode_coverage_of_exact_and_collapsed_samples():
    torch.manual_seed(0)
    exact = mode_coverage(sample_ring(2500), ring_centres(), RING_SD)
    # within 3 sd in 2-D: P(chi2_2 <= 9) = 1 - exp(-4.5) = 0.989
    assert exact.modes == 8 and abs(exact.high_quality - 0.989) < 0.01
    assert exact.reverse_kl < 0.01
    grid = mode_coverage(sample_grid(2500), grid_centres(), GRID_SD)
    assert grid.modes == 25 and grid.reverse_kl < 0.03
    collapsed = mode_coverage(ring_centres()[:1].expand(100, 2), ring_centres(), RING_SD)
    assert collapsed.modes == 1 and collapsed.high_quality == 1.0
    assert collapsed.reverse_kl == pytest.approx(math.log(8))
    between = mode_coverage(torch.zeros(100, 2), ring_centres(), RING_SD)
    assert between.modes == 0 and between.high_quality == 0.0 and math.isnan(between.reverse_kl)


CORNERS = torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]])


def _corner_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CORNERS[torch.randint(4, (n,), generator=g)] + 0.05 * torch.randn(n, 2, generator=g)


def _matched_error(found, exact):
    # every exact centre has its own found one: the largest distance of the best matching
    distances = torch.cdist(exact, found)
    assert len(set(distances.argmin(-1).tolist())) == len(exact), distances
    return distances.min(-1).values.max().item()


def test_kmeans_finds_separated_centres():
    from pyro_adv.models.gan_targets import grid_centres, sample_grid
    from pyro_adv.nn.mixture import kmeans

    torch.manual_seed(0)
    centres = kmeans(_corner_data(400), 4)
    # exact centres up to the sampling error of ~100 points of sd 0.05 each
    assert _matched_error(centres, CORNERS) < 0.03
    # 25 modes from 256 points (~10 a mode): one Lloyd run put two centres on one mode
    # on 11 of 50 seeds, the best of 10 runs on none of them
    for seed in range(5):
        torch.manual_seed(seed)
        assert _matched_error(kmeans(sample_grid(256), 25), grid_centres()) < 0.1


def test_mixture_generator_places_its_components_on_the_data():
    torch.manual_seed(0)
    generator = MLPGenerator(2, 2, (16,), num_components=4)

    def component_means():
        eps = torch.randn(8000, 2)
        with torch.no_grad():
            y, k = generator(eps), generator.component(eps)
        return torch.stack([y[k == j].mean(0) for j in range(4)])

    # before: the random offsets leave some corner without a component near it
    assert torch.cdist(CORNERS, component_means()).min(-1).values.max() > 0.3
    assert generator.component_placement_pending
    generator.place_components(_corner_data(1024))
    assert not generator.component_placement_pending
    assert _matched_error(component_means(), CORNERS) < 0.05
    # a generator whose offsets were trained or loaded is never placed again
    loaded = MLPGenerator(2, 2, (16,), num_components=4)
    with torch.no_grad():
        loaded.offsets.add_(0.1)
    assert not loaded.component_placement_pending
    assert not MLPGenerator(
        2, 2, num_components=4, component_init="spread"
    ).component_placement_pending
    assert not MLPGenerator(2, 2).component_placement_pending
    with pytest.raises(ValueError, match="component_init"):
        MLPGenerator(2, 2, num_components=4, component_init="kmeans")
    with pytest.raises(ValueError, match="cannot place"):
        MLPGenerator(2, 2, num_components=4).place_components(torch.zeros(3, 2))


def test_trace_gan_places_mixture_components_before_its_first_step():
    import pyro
    from pyro.infer import SVI

    from pyro_adv.infer import Trace_GAN
    from pyro_adv.models.gan_targets import gan_2d

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    generator = MLPGenerator(2, 2, (16,), num_components=4)
    before = generator.offsets.detach().clone()
    gan = gan_2d(generator)
    objective = Trace_GAN()
    svi = SVI(gan, lambda *a, **k: None, objective.default_optim(10), objective)
    svi.step(_corner_data(2000), batch_size=128)
    # placed on the first batch, then moved by one Adam step (<= lr = 1e-3 each)
    eps = torch.randn(8000, 2)
    with torch.no_grad(), raw_weights():
        y, k = generator(eps), generator.component(eps)
    means = torch.stack([y[k == j].mean(0) for j in range(4)])
    assert _matched_error(means, CORNERS) < 0.05
    assert (generator.offsets.detach() - before).abs().max() > 0.5
    assert not generator.component_placement_pending
