"""Issue 13, items 2-4: non-finite inputs, zero gradients and divergence are reported."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

from pyro_adv.infer import NonFiniteLossError, Trace_GAN, TraceAVB_ELBO, ZeroGradientWarning
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.nn import ImplicitEncoder, MLPGenerator
from pyro_adv.training import TrainingDivergesWarning, fit


def no_guide(*args, **kwargs):
    return None


def gan(generator, transform=lambda v: v):
    def model(data):
        pyro.module("generator", generator)
        with pyro.plate("data", data.shape[0]):
            noise = pyro.sample("eps", dist.Normal(0.0, 1.0).expand([data.shape[0], 1]).to_event(1))
            pyro.sample("x", dist.Delta(transform(generator(noise)), event_dim=1), obs=data)

    return model


# ------------------------------------------------------------------ item 2
def test_nan_in_the_first_batch_is_refused_before_any_state_is_fixed():
    model = gan(MLPGenerator(1, 1, hidden_dims=(8,)))
    objective = Trace_GAN()
    svi = SVI(model, no_guide, pyro.optim.Adam({"lr": 1e-3}), loss=objective)
    data = torch.randn(32, 1)
    bad = data.clone()
    bad[3] = float("nan")
    # old code: NonFiniteLossError "... Lower the learning rate", then the same forever
    with pytest.raises(ValueError, match="site 'x' has NaN or inf values"):
        svi.step(bad)
    assert not objective.discriminators  # nothing was fixed on the bad batch
    assert torch.isfinite(torch.tensor(svi.step(data)))
    assert torch.isfinite(objective.discriminators["data"].input_loc).all()


def amortized(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_inf_in_the_context_of_a_local_discriminator_names_the_site():
    encoder = ImplicitEncoder(1, 1, hidden_dims=(8,))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", _scalar(encoder(torch.nan_to_num(x).unsqueeze(-1))))

    avb = TraceAVB_ELBO(num_particles=2, moment_particles=16, discriminator_particles=8)
    svi = SVI(amortized, guide, pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    x = torch.randn(8)
    x[0] = float("inf")
    with pytest.raises(ValueError, match="site 'x'"):
        svi.step(x)
    assert not avb.discriminators


def _scalar(d):
    # an ImplicitEncoder's (1,)-vector as a scalar site
    from pyro_adv.distributions import ImplicitDistribution

    return ImplicitDistribution(lambda eps: d.generator(eps).squeeze(-1), d.base, event_shape=())


def test_nan_data_later_is_blamed_on_the_data_not_the_learning_rate():
    avb = TraceAVB_ELBO(num_particles=2, moment_particles=16, discriminator_particles=8)
    model = amortized
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    x = torch.randn(8)
    svi.step(x)
    x[2] = float("nan")
    pyro.enable_validation(False)  # Pyro's own check would catch this one first
    with pytest.raises(NonFiniteLossError, match="site 'x' has NaN") as info:
        svi.step(x)
    assert "Lower the learning rate" not in str(info.value)


# ------------------------------------------------------------------ item 3
@pytest.mark.parametrize("kind", ["round", "poisson"])
def test_non_differentiable_simulator_warns_zero_gradients(kind):
    def model(data):
        r = pyro.param("rate", torch.tensor(3.0), constraint=dist.constraints.positive)
        with pyro.plate("data", data.shape[0]):
            noise = pyro.sample("eps", dist.Normal(0.0, 1.0).expand([data.shape[0]]))
            if kind == "round":
                value = torch.round(r + noise)  # differentiable, but d round = 0
            else:
                value = torch.poisson(r.expand(data.shape[0])) + 0.0 * noise
            pyro.sample("x", dist.Delta(value), obs=data)

    objective = Trace_GAN()
    objective.zero_grad_steps = 15
    svi = SVI(model, no_guide, pyro.optim.Adam({"lr": 1e-2}), loss=objective)
    data = torch.poisson(torch.full((64,), 8.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            svi.step(data)
    zero = [w for w in caught if issubclass(w.category, ZeroGradientWarning)]
    assert len(zero) == 1 and "'rate'" in str(zero[0].message)  # old code: silent
    assert pyro.param("rate").item() == pytest.approx(3.0)


def test_a_learning_parameter_does_not_warn():
    objective = Trace_GAN()
    objective.zero_grad_steps = 5
    svi = SVI(
        gan(MLPGenerator(1, 1, hidden_dims=(8,))),
        no_guide,
        pyro.optim.Adam({"lr": 1e-3}),
        objective,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradientWarning)
        for _ in range(10):
            svi.step(torch.randn(32, 1))


# ------------------------------------------------------------------ item 4
def test_fit_warns_when_a_gan_saturates():
    pyro.set_rng_seed(1)
    svi = SVI(
        gan(MLPGenerator(1, 1, hidden_dims=(16,))),
        no_guide,
        pyro.optim.Adam({"lr": 1.0}),
        Trace_GAN("minimax"),
    )
    data = 50 + torch.randn(128, 1)
    with pytest.warns(TrainingDivergesWarning, match="saturated"):
        history = fit(svi, 60, data, progress=False)
    # the symptom the issue reports: a frozen game that looks won
    assert max(history["discriminator_max_abs_logit"]) > 30


def conjugate(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_fit_warns_when_the_elbo_explodes():
    pyro.set_rng_seed(0)
    avb = TraceAVB_ELBO(num_particles=4, moment_particles=32, discriminator_particles=16)
    guide = AutoImplicit(conjugate, hidden_dims=(8,))
    svi = SVI(conjugate, guide, pyro.optim.Adam({"lr": 50.0}), loss=avb)
    x = torch.randn(20)
    with pytest.warns(TrainingDivergesWarning):
        fit(svi, 40, x, progress=False, stop_on_nonfinite=True)


def test_fit_does_not_warn_on_a_healthy_run():
    avb = TraceAVB_ELBO(num_particles=4, moment_particles=32, discriminator_particles=16)
    guide = AutoImplicit(conjugate, hidden_dims=(8,))
    svi = SVI(conjugate, guide, pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingDivergesWarning)
        fit(svi, 30, torch.randn(20), progress=False)
