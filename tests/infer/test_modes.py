"""
Issue 11, item 5: separated modes with small honest budgets.

* AVB on the zoo's symmetric bimodal posterior (``Bimodal``: z ~ N(0, 2^2), 20
  observations y ~ N(z^2, 1), modes at z = +-1.1, 11 posterior sds apart): an
  ``AutoImplicit`` with 2 mixture components puts each mode's share of the mass (the
  exact 0.5, from the quadrature reference) within 0.1, each mode with its exact
  width within 25% (Table 9, 600 steps: 0.47-0.52 and 0.95-1.08 on 10 of 10 seeds).
  With one component (``num_components=1``) the same 400-step run puts 0.00 on
  z > 0, so the test fails without the mechanism (at 600 steps 4 of 4 seeds gave 0.00
  or 1.00); with the components' starting offsets reflected about the init instead of
  the prior's centre (before session 10) this seed started and stayed with both
  components on one mode (0.00 from step 50 on).
* The same posterior tilted by a prior mean of 1.5 (exact mass 0.70 on z > 0): a
  4-component ``AutoImplicit`` with the defaults (components started on the
  likelihood, mixture weights learned by the score function) puts 0.683 on z > 0
  after 500 steps, each mode with its width within 4% (seeds 1-3: 0.699, 0.705,
  0.699). With equal weights (``learn_weights=False``) a mode gets a multiple of
  1/4: 0.49-0.51 on 9 of 10 seeds in Table 9.
* Amortized, with masses that change with the observation (``AmortizedBimodal``:
  z ~ N(0.75, 1.5^2), x ~ N(z^2, 0.5^2); exact mass on z > 0 0.635 at x = 1 and
  0.788 at x = 4, by quadrature): ``Trace_ALI`` with its defaults fits an
  ``ImplicitEncoder(1, 1, num_components=2)`` whose weights w_k(x) are learned by
  the score function; 2,000 steps put 0.666 and 0.788 on z > 0 (seeds 1-3: max
  error 0.064, 0.041, 0.132 over x = 0.5, 1, 2, 4). With equal weights
  (``learn_weights=False``) 0.50 at every x (error 0.29 at x = 4).
* A GAN on four separated, sharp modes (sd 0.02 at the corners of a square of side
  3), ``Trace_GAN``'s defaults (its optimizer and its discriminator): a mixture
  generator (``MLPGenerator(num_components=4)``, its components placed on the first
  batch's k-means centres, its discriminator given mode features at those centres)
  covers all four, in equal shares, with high-quality points (measured: 4 modes,
  99.9% high quality, reverse KL 0.002; seeds 1-3: 99.9-100%; before the mode
  features 97.5%, seeds 1-3 95.6-98.9%).
  The mechanism has three parts and the test fails without any of them: with the
  discriminator's input gain off (``Discriminator(input_gain=1.0)``, so it cannot
  resolve 0.02-wide modes early) 71.6% (seed 1: 64.8%); with random starting offsets
  (``component_init="spread"``) 82.7%; with one component 1 mode, 23%.
"""

import pytest
import torch
from pyro.infer import SVI, Predictive

from benchmarks.recipes import avb_default_adam, draw_guide, no_guide
from pyro_adv.diagnostics import mode_coverage
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit, amortized_guide
from pyro_adv.models.gan_targets import gan_2d
from pyro_adv.models.zoo import AmortizedBimodal, Bimodal
from pyro_adv.nn import ImplicitEncoder, MLPGenerator

pytestmark = pytest.mark.slow


def fit_bimodal(num_components, steps=400, seed=0, prior_loc=0.0, **options):
    zoo_model = Bimodal(prior_loc=prior_loc)
    pyro_seed(seed)
    guide = AutoImplicit(zoo_model.model, num_components=num_components, **options)
    svi = SVI(zoo_model.model, guide, avb_default_adam(steps), TraceAVB_ELBO())
    for _ in range(steps):
        svi.step(*zoo_model.args)
    return zoo_model, draw_guide(guide, *zoo_model.args, num_samples=4000)["z"].reshape(-1)


def pyro_seed(seed):
    import pyro

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_avb_mixture_guide_gives_each_mode_its_share():
    zoo_model, z = fit_bimodal(num_components=2)
    exact = (zoo_model.reference(10_000)["z"] > 0).double().mean().item()
    share = (z > 0).double().mean().item()
    assert abs(share - exact) <= 0.1, (share, exact)
    # and both shares sit on the modes, not between them
    assert (z.abs() > 0.7).double().mean() > 0.95
    # each mode as wide as the exact one: the mixture-aware reference of adaptive
    # contrast (measured sd ratios 1.16 / 1.04 at seed 0; 1.04-1.11 over seeds 1-3)
    ref = zoo_model.reference(10_000)["z"].reshape(-1)
    for side in (1, -1):
        ratio = z[z * side > 0].std() / ref[ref * side > 0].std()
        assert abs(ratio - 1) < 0.25, (side, ratio.item())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_avb_mixture_guide_learns_unequal_mode_masses():
    # the prior's mean at 1.5 tilts the masses to 0.70 / 0.30; equal weights cannot
    # give that with few components, learned ones can
    zoo_model, z = fit_bimodal(num_components=4, steps=500, prior_loc=1.5)
    ref = zoo_model.reference(10_000)["z"].reshape(-1)
    exact = (ref > 0).double().mean().item()
    assert abs(exact - 0.70) < 0.02, exact
    share = (z > 0).double().mean().item()
    assert abs(share - exact) <= 0.1, (share, exact)
    assert (z.abs() > 0.7).double().mean() > 0.95
    for side in (1, -1):
        ratio = z[z * side > 0].std() / ref[ref * side > 0].std()
        assert abs(ratio - 1) < 0.25, (side, ratio.item())


def test_ali_encoder_learns_mode_masses_that_depend_on_the_observation():
    problem = AmortizedBimodal()
    pyro_seed(0)
    encoder = ImplicitEncoder(1, 1, num_components=2)
    objective, steps = Trace_ALI(), 2000
    svi = SVI(problem.model, amortized_guide(encoder), objective.default_optim(steps), objective)
    x = problem.simulate(20_000)
    for _ in range(steps):
        svi.step(x, subsample_size=256)
    for x_query in (1.0, 4.0):
        exact = problem.exact(x_query)
        with torch.no_grad():
            z = encoder(torch.full((20_000, 1), x_query)).sample().reshape(-1)
        share = (z > 0).double().mean().item()
        assert abs(share - exact["share"]) <= 0.1, (x_query, share, exact["share"])
        # on the modes, not between them
        assert ((z - exact["mean_pos"]).abs() < 1.0).double().mean() > 0.5
        assert ((z - exact["mean_neg"]).abs() < 1.0).double().mean() > 0.1


CORNERS = torch.tensor([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]])
SD = 0.02


def fit_corners(num_components, steps=600, seed=0):
    pyro_seed(seed)
    k = torch.randint(4, (20000,))
    data = CORNERS[k] + SD * torch.randn(20000, 2)
    generator = MLPGenerator(2, 2, (64, 64), num_components=num_components)
    gan = gan_2d(generator)
    objective = Trace_GAN()
    svi = SVI(gan, no_guide, objective.default_optim(steps), objective)
    for _ in range(steps):
        svi.step(data, batch_size=256)
    with torch.no_grad():
        points = Predictive(gan, num_samples=1)(n=2000)["x"][0]
    return mode_coverage(points, CORNERS, SD)


def test_gan_mixture_generator_covers_every_mode():
    result = fit_corners(num_components=4)
    assert result.modes == 4, result
    assert result.high_quality > 0.9, result
    assert result.reverse_kl < 0.01, result
