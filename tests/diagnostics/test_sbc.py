import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.diagnostics import ecdf_confidence_band, rank_uniformity_test, sbc
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.models import ConjugateGaussian
from pyro_adv.nn import ImplicitEncoder
from pyro_adv.plotting import plot_sbc_ecdf


def exact_amortized_guide(cg, shrink=1.0):
    """q(z | x) = the exact posterior of ``cg`` (global z), its scale divided by ``shrink``."""

    def guide(x=None, num_data=None):
        mean, cov = cg.posterior(x)
        pyro.sample(
            "z", dist.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov) / shrink)
        )

    return guide


def test_sbc_exact_posterior_passes_and_shrunk_fails():
    cg = ConjugateGaussian()
    good = sbc(
        cg.model,
        exact_amortized_guide(cg),
        None,
        num_data=5,
        observed_site="x",
        num_simulations=200,
        num_posterior_samples=99,
        seed=0,
    )
    assert good.ranks.shape == (200, 2)
    assert good.names == ["z[0]", "z[1]"]
    assert good.ranks.min() >= 0 and good.ranks.max() <= 99
    assert good.p_value > 0.01 and good.passed()
    bad = sbc(
        cg.model,
        exact_amortized_guide(cg, 3.0),
        None,
        num_data=5,
        observed_site="x",
        num_simulations=100,
        num_posterior_samples=99,
        seed=0,
    )
    assert bad.p_value < 0.01 and not bad.passed()
    # too narrow: the truth falls outside the draws, ranks pile up at 0 and L
    extreme = np.isin(bad.ranks, [0, 99]).mean()
    assert extreme > 0.2 > np.isin(good.ranks, [0, 99]).mean()


def local_model(A, noise):
    def model(x=None, num_data=None):
        n = x.shape[0] if x is not None else num_data
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Normal(z @ A.T, noise).to_event(1), obs=x)

    return model


def test_sbc_avb_trained_implicit_encoder():
    # thesis 4.2.1 setup on a conjugate model: z_i ~ N(0, I), x_i | z_i ~ N(A z_i, 0.5^2 I),
    # an implicit encoder q(z | x) trained with AVB on fresh simulations each step
    cg = ConjugateGaussian(noise_scale=0.5)
    model = local_model(cg.design, cg.noise_scale)
    encoder = ImplicitEncoder(2, 2, hidden_dims=(32, 32))
    shrink = {"factor": 1.0}

    def guide(x=None, num_data=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            q = encoder(x)
            if shrink["factor"] != 1.0:
                centre = encoder.generate(x, x.new_zeros(x.shape[:-1] + (encoder.noise_dim,)))
                draw = q.generator
                q = ImplicitDistribution(
                    lambda eps: centre + (draw(eps) - centre) / shrink["factor"], q.base, (2,)
                )
            pyro.sample("z", q)

    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 1e-2}),
        TraceAVB_ELBO(num_particles=8, moment_particles=32, discriminator_hidden_dims=(32, 32)),
    )
    with pyro.validation_enabled(False):
        for _ in range(250):
            with torch.no_grad():
                x = model(num_data=32)
            svi.step(x)
    kwargs = dict(observed_site="x", num_simulations=100, num_posterior_samples=99, seed=1)
    good = sbc(model, guide, None, num_data=1, **kwargs)
    assert good.names == ["z[0,0]", "z[0,1]"]
    assert good.p_value > 0.01, good
    shrink["factor"] = 3.0
    bad = sbc(model, guide, None, num_data=1, **kwargs)
    assert bad.p_value < 0.01, bad


def test_rank_uniformity_test_and_band():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 100, size=(500, 3))
    _, p = rank_uniformity_test(uniform, 100)
    assert (p > 0.001).all()
    piled = np.concatenate([uniform[:250], np.zeros((250, 3), dtype=int)])
    _, p = rank_uniformity_test(piled, 100)
    assert (p < 1e-10).all()
    z, lower, upper = ecdf_confidence_band(500, 100, prob=0.95, num_trials=500)
    assert z.shape == lower.shape == upper.shape == (100,)
    assert (lower <= 1e-12).all() and (upper >= -1e-12).all()
    # simultaneous coverage: about 95% of uniform ECDFs stay inside the band
    sims = rng.integers(0, 100, size=(400, 500))
    ecdf = np.stack([np.bincount(s, minlength=100).cumsum() / 500 for s in sims]) - z
    inside = ((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)).all(1).mean()
    assert 0.9 < inside <= 1.0


def test_sbc_plot_and_errors():
    cg = ConjugateGaussian()
    result = sbc(
        cg.model,
        exact_amortized_guide(cg),
        None,
        num_data=3,
        observed_site="x",
        num_simulations=20,
        num_posterior_samples=19,
        parallel=False,
    )
    ax = plot_sbc_ecdf(result)
    assert ax.get_xlabel() == "fractional rank"
    plt.close("all")
    with pytest.raises(ValueError, match="observed_site"):
        sbc(cg.model, exact_amortized_guide(cg), None, num_data=3)
    with pytest.raises(ValueError, match="no site named"):
        sbc(cg.model, exact_amortized_guide(cg), None, num_data=3, observed_site="y")
    with pytest.raises(ValueError, match="instead of simulating"):
        sbc(cg.model, exact_amortized_guide(cg), torch.zeros(3, 2), observed_site="x")
    with pytest.raises(ValueError, match="at least 10"):
        sbc(
            cg.model,
            exact_amortized_guide(cg),
            None,
            num_data=3,
            observed_site="x",
            num_simulations=5,
        )
    with pytest.raises(ValueError, match="not latent sites"):
        sbc(
            cg.model,
            exact_amortized_guide(cg),
            None,
            num_data=3,
            observed_site="x",
            latent_sites=["w"],
        )
