"""Issue 13, clear errors: bad options and data fail early with a message that says why."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

from pyro_adv.distributions import ImplicitDensityError, ImplicitDistribution
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.infer.checks import check_positive_int
from pyro_adv.nn import MLP, ImplicitEncoder, MLPGenerator
from pyro_adv.training import fit

SMALL = dict(num_particles=2, moment_particles=16, discriminator_particles=8)


def local(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def counts(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Poisson(z.exp()), obs=x)


def encoder_guide():
    encoder = ImplicitEncoder(1, 1, hidden_dims=(8,))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            d = encoder(x.unsqueeze(-1))
            scalar = ImplicitDistribution(lambda e: d.generator(e).squeeze(-1), d.base)
            pyro.sample("z", scalar)

    return guide


@pytest.mark.parametrize("make", [lambda: TraceAVB_ELBO(**SMALL), lambda: Trace_ALI()])
@pytest.mark.parametrize(
    "model,data",
    [
        (local, torch.randn(16, dtype=torch.float64)),  # old: "mat1 and mat2 ... Double and Float"
        (counts, torch.randint(5, (16,))),  # old: "normal_kernel_cpu" not implemented for 'Long'
    ],
    ids=["float64", "int64"],
)
def test_float64_and_integer_observations_meet_float32_networks(make, model, data):
    svi = SVI(model, encoder_guide(), pyro.optim.Adam({"lr": 1e-3}), loss=make())
    assert torch.isfinite(torch.tensor(svi.step(data)))


@pytest.mark.parametrize(
    "objective", [lambda: TraceAVB_ELBO(**SMALL), lambda: Trace_GAN(max_plate_nesting=1)]
)
def test_empty_data(objective):
    def gan(data):
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.Normal(pyro.param("m", torch.zeros(())), 1.0), obs=data)

    model, guide = (local, AutoNormal(local)) if "AVB" in repr(objective()) else (gan, None)
    guide = guide or (lambda *a, **k: None)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=objective())
    # old code: ZeroDivisionError "size cannot be zero"
    with pytest.raises(ValueError, match="argument 0 is empty"):
        svi.step(torch.randn(0))


@pytest.mark.parametrize("value", [2.5, 0, -1, True])
def test_num_particles_must_be_a_positive_integer(value):
    # old code: 2.5 silently rescaled the ELBO (int(2.5) draws, divided by 2.5)
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        TraceAVB_ELBO(num_particles=value)
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        Trace_GAN(num_particles=value)


def test_discriminator_particles_and_discriminator_spec_of_avb():
    assert check_positive_int(3, "discriminator_particles", "X") == 3
    svi = SVI(local, encoder_guide(), pyro.optim.Adam({"lr": 1e-3}), loss=None)
    for bad, match in [
        (dict(discriminator_particles=0), "discriminator_particles must be a positive integer"),
        (dict(discriminator=3), "discriminator must be None, an nn.Module or a factory"),
    ]:
        options = dict(SMALL, **bad)
        # old code: IndexError / "'int' object is not callable" deep in a step; now the
        # constructor refuses the option
        with pytest.raises((ValueError, TypeError), match=match):
            objective = TraceAVB_ELBO(**options)
            SVI(local, svi.guide, pyro.optim.Adam({"lr": 1e-3}), loss=objective).step(
                torch.randn(8)
            )


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: MLP(2, 1, hidden_dims=(0,)), "hidden_dims must be positive integers"),
        (lambda: MLPGenerator(0, 2), "noise_dim must be a positive integer"),
        (lambda: ImplicitEncoder(1, 2, noise_dim=0), "noise_dim must be a positive integer"),
        (lambda: MLP(0, 2), "input_dim must be a positive integer"),
        # before: "input_dim must be a positive integer", naming an argument the user never gave
        (lambda: AutoImplicit(local, noise_dim=0), "AutoImplicit: noise_dim"),
        # before: truncated to 2 particles in silence
        (lambda: TraceAVB_ELBO(moment_particles=2.5), "moment_particles"),
    ],
)
def test_network_sizes(build, match):
    with pytest.raises(ValueError, match=match):  # old code: built a network that fails later
        build()


def test_negative_checkpoint_every(tmp_path):
    svi = SVI(local, AutoNormal(local), pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        fit(
            svi,
            2,
            torch.randn(4),
            progress=False,
            checkpoint_path=str(tmp_path / "c.pt"),
            checkpoint_every=-1,
        )


@pytest.mark.parametrize("method", ["cdf", "icdf"])
def test_cdf_and_icdf_of_implicit_distributions(method):
    d = ImplicitDistribution(lambda e: 2 * e, dist.Normal(torch.zeros(2), 1.0).to_event(1))
    # old code: a bare NotImplementedError with an empty message
    with pytest.raises(ImplicitDensityError, match="is implicit"):
        getattr(d, method)(torch.zeros(2))


def vector_model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def missing_to_event(x):
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(2)), 1.0))


@pytest.mark.parametrize("nesting", [float("inf"), 1])
def test_event_dim_mismatch_in_the_guide_is_named(nesting):
    avb = TraceAVB_ELBO(max_plate_nesting=nesting, **SMALL)
    svi = SVI(vector_model, missing_to_event, pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    # old code: "Shape mismatch inside plate('data') at site x dim -1, 5 vs 2"
    with pytest.raises(ValueError, match=r"site 'z'.*event shape.*\.to_event\(1\)"):
        svi.step(torch.randn(5, 2))


def test_event_shape_inferred_from_a_generator_over_a_batch_of_parameters():
    locs = torch.tensor([0.0, 10.0, 20.0])
    base = dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)  # batch (3,), event (2,)
    # the generator closes over a batch of parameters; its event is (2,)
    d = ImplicitDistribution(lambda eps: locs.unsqueeze(-1) + eps, base)
    assert d.batch_shape == (3,) and d.event_shape == (2,)  # old code: event_shape (3, 2)
    assert d.sample((4,)).shape == (4, 3, 2)
    # an output that does not start with the batch shape: the error says what to pass
    with pytest.raises(ValueError, match="pass event_shape="):
        ImplicitDistribution(lambda eps: eps.sum(-2), base)


def test_autoimplicit_quantiles_are_sample_quantiles():
    """Pyro's AutoContinuous.quantiles raised a bare NotImplementedError on AutoImplicit;
    now they are the guide's sample quantiles."""

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    guide = AutoImplicit(model, noise_dim=2, hidden_dims=(8,))
    data = torch.randn(4)
    guide(data)
    q = guide.quantiles([0.1, 0.5, 0.9], data, num_samples=400)
    draws = torch.stack([guide(data)["loc"] for _ in range(400)])
    assert q["loc"].shape == (3,) + draws.shape[1:]
    assert (q["loc"][0] < q["loc"][1]).all() and (q["loc"][1] < q["loc"][2]).all()
    assert abs(float(q["loc"][1] - draws.median())) < 0.3 * float(draws.std())
    with pytest.raises(ValueError, match="probabilities in"):
        guide.quantiles([1.5], data)


def _global_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_ali_says_it_does_not_learn_mixture_weights():
    # only AVB's score function trains AutoImplicit's mixture weights; ALI must say
    # they stay equal rather than leave them so silently
    guide = AutoImplicit(_global_model, num_components=2)
    svi = SVI(_global_model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI())
    with pytest.warns(UserWarning, match="auxiliary site '_AutoImplicit_component'"):
        svi.step(torch.randn(4))
    pyro.clear_param_store()
    guide = AutoImplicit(_global_model, num_components=2, learn_weights=False)
    svi = SVI(_global_model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*auxiliary site")
        svi.step(torch.randn(4))


def test_avb_factor_sites_are_scored_not_refused():
    # pyro.factor's value is empty by design; it used to be refused as empty data
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 2.0))
        pyro.factor("pull", -0.5 * (z - 1.0) ** 2)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    svi = SVI(model, AutoImplicit(model), pyro.optim.Adam({"lr": 1e-3}), TraceAVB_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(torch.randn(4))))


def test_avb_says_one_particle_cannot_learn_mixture_weights():
    guide = AutoImplicit(_global_model, num_components=2)
    svi = SVI(_global_model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceAVB_ELBO(num_particles=1))
    with pytest.warns(UserWarning, match="num_particles=1"):
        svi.step(torch.randn(4))
