"""Issue 13, item 1: an objective reused on another problem rebuilds instead of lying."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import (
    ObjectiveMismatchWarning,
    ObjectiveRebuiltWarning,
    Trace_ALI,
    Trace_GAN,
    TraceAVB_ELBO,
)
from pyro_adv.nn import MLPGenerator


def no_guide(*args, **kwargs):
    return None


def gan_model(loc):
    generator = MLPGenerator(1, 1, hidden_dims=(8,))

    def model(data):
        pyro.module(f"generator_{loc}", generator)
        with pyro.plate("data", data.shape[0]):
            noise = pyro.sample("eps", dist.Normal(0.0, 1.0).expand([data.shape[0], 1]).to_event(1))
            pyro.sample("x", dist.Delta(generator(noise), event_dim=1), obs=data)

    return model


def test_gan_reused_on_a_second_model_rebuilds_its_discriminator():
    gan = Trace_GAN()
    first, second = gan_model(0), gan_model(50)
    data0, data50 = torch.randn(64, 1), 50 + torch.randn(64, 1)
    svi = SVI(first, no_guide, pyro.optim.Adam({"lr": 1e-3}), loss=gan)
    for _ in range(3):
        svi.step(data0)
    svi2 = SVI(second, no_guide, pyro.optim.Adam({"lr": 1e-3}), loss=gan)
    with pytest.warns(ObjectiveRebuiltWarning, match="different model"):
        svi2.step(data50)
    # the input standardization is the second problem's, not the first's (old code: ~0)
    loc = gan.discriminators["data"].input_loc
    assert abs(loc.item() - data50.mean().item()) < 1e-4


def conjugate(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[-1]), 10.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def implicit_guide(dim, name):
    generator = MLPGenerator(dim + 1, dim, hidden_dims=(8,))

    def guide(x):
        pyro.module(name, generator)
        pyro.sample("z", generator.distribution())

    return guide


def test_avb_reused_on_a_second_problem_rebuilds():
    avb = TraceAVB_ELBO(
        num_particles=4, adaptive_contrast=False, discriminator_particles=8, moment_particles=16
    )
    x2, x3 = torch.randn(10, 2), 30 + torch.randn(10, 3)
    svi = SVI(conjugate, implicit_guide(2, "g2"), pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    svi.step(x2)
    disc = avb.discriminators["global"]
    svi3 = SVI(conjugate, implicit_guide(3, "g3"), pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    with pytest.warns(ObjectiveRebuiltWarning, match="different model or guide"):
        svi3.step(x3)  # old code: a shape error deep in the discriminator
    assert avb.discriminators["global"] is not disc
    assert avb.discriminators["global"].input_dim == 3
    assert "discriminator_global$$$net.0.weight" in pyro.get_param_store()


def shapeless_guide(x):
    # the same function for any width: only the traced sites tell the problems apart
    noise = dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1)
    pyro.sample("z", ImplicitDistribution(lambda eps: 2.0 * eps, noise))


def test_same_functions_with_other_event_shapes_rebuild_but_minibatch_size_does_not():
    avb = TraceAVB_ELBO(num_particles=4, discriminator_particles=8, moment_particles=16)
    svi = SVI(conjugate, shapeless_guide, pyro.optim.Adam({"lr": 1e-3}), loss=avb)
    svi.step(torch.randn(10, 2))
    disc = avb.discriminators["global"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObjectiveRebuiltWarning)
        svi.step(torch.randn(7, 2))  # a smaller last minibatch is the same problem
    assert avb.discriminators["global"] is disc
    with pytest.warns(ObjectiveRebuiltWarning, match="different sample sites"):
        svi.step(torch.randn(10, 3))  # old code: a shape error in the discriminator
    assert avb.discriminators["global"].input_dim == 3


def global_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_ali_reused_on_a_local_model_chooses_its_particles_again():
    ali = Trace_ALI()
    gg = AutoNormal(global_model)
    SVI(global_model, gg, pyro.optim.Adam({"lr": 1e-3}), loss=ali).step(torch.randn(5))
    assert ali.num_particles == 64
    lg = AutoNormal(local_model)
    with pytest.warns(ObjectiveRebuiltWarning):
        SVI(local_model, lg, pyro.optim.Adam({"lr": 1e-3}), loss=ali).step(torch.randn(5))
    assert ali.num_particles == 1  # old code kept 64


def test_cleared_param_store_restarts_the_discriminator():
    gan = Trace_GAN()
    model = gan_model(0)
    svi = SVI(model, no_guide, pyro.optim.Adam({"lr": 1e-2}), loss=gan)
    for _ in range(5):
        svi.step(torch.randn(64, 1))
    old = gan.discriminators["data"]
    old_weight = next(old.parameters()).detach().clone()
    pyro.clear_param_store()
    svi = SVI(gan_model(0), no_guide, pyro.optim.Adam({"lr": 1e-2}), loss=gan)
    svi.step(torch.randn(64, 1))
    new = gan.discriminators["data"]
    assert new is not old  # old code: the trained discriminator carried on
    store = pyro.get_param_store()
    for name, p in new.named_parameters():
        assert store[f"discriminator_data$$${name}"].unconstrained() is p
    assert next(new.parameters()).shape == old_weight.shape


def test_two_objectives_sharing_discriminator_names():
    # old code: the second objective's discriminator was never trained (pyro.module
    # handed the first objective's tensors to the optimizer, the gradients went elsewhere)
    first = Trace_GAN()
    svi1 = SVI(gan_model(0), no_guide, pyro.optim.Adam({"lr": 1e-3}), loss=first)
    svi1.step(torch.randn(8, 1))
    second = Trace_GAN(discriminator_hidden_dims=(4,))
    svi = SVI(gan_model(1), no_guide, pyro.optim.Adam({"lr": 1e-2}), loss=second)
    with pytest.warns(ObjectiveRebuiltWarning, match="discriminator_prefix"):
        svi.step(torch.randn(8, 1))
    # the second trains its own discriminator
    before = next(second.discriminators["data"].parameters()).detach().clone()
    svi.step(torch.randn(8, 1))
    assert not torch.equal(before, next(second.discriminators["data"].parameters()))
    store = pyro.get_param_store()
    assert store["discriminator_data$$$net.0.weight"].shape == (4, 1)
    # and the first, whose discriminator is gone from the store, refuses to continue
    with pytest.raises(ValueError, match="no longer this objective's"):
        svi1.step(torch.randn(8, 1))


def test_the_same_guide_factory_called_again_is_the_same_guide():
    # diagnostics are often given a fresh closure over the trained networks
    # (diagnose_guide(model, amortized_guide(encoder), ...)): that is no new problem
    from pyro_adv.infer.autoguide import amortized_guide
    from pyro_adv.models import exponential_model
    from pyro_adv.nn import ImplicitEncoder

    encoder = ImplicitEncoder(1, 2, hidden_dims=(8,))
    avb = TraceAVB_ELBO(num_particles=4, moment_particles=32, discriminator_particles=16)
    x = torch.linspace(0.5, 5.0, 16)
    svi = SVI(exponential_model, amortized_guide(encoder), pyro.optim.Adam({"lr": 1e-3}), avb)
    svi.step(x)
    disc = dict(avb.discriminators)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObjectiveRebuiltWarning)
        avb.importance_log_weights(exponential_model, amortized_guide(encoder), x, num_samples=8)
    assert dict(avb.discriminators) == disc
    # another guide evaluated with the trained discriminators (diagnostics do this on
    # purpose): a warning, and nothing is thrown away
    other = ImplicitEncoder(1, 2, hidden_dims=(8,))
    with pytest.warns(ObjectiveMismatchWarning, match="nothing is rebuilt"):
        avb.loss(exponential_model, amortized_guide(other), x)
    assert dict(avb.discriminators) == disc


def test_a_given_max_plate_nesting_survives_a_rebuild():
    # a given bound keeps the room objectives add to it for their particle plate
    avb = TraceAVB_ELBO(
        num_particles=1, max_plate_nesting=1, moment_particles=16, discriminator_particles=8
    )
    x = torch.randn(10, 2)
    SVI(conjugate, implicit_guide(2, "a"), pyro.optim.Adam({"lr": 1e-3}), loss=avb).step(x)
    nesting = avb.max_plate_nesting
    with pytest.warns(ObjectiveRebuiltWarning):
        SVI(conjugate, implicit_guide(2, "b"), pyro.optim.Adam({"lr": 1e-3}), loss=avb).step(x)
    assert avb.max_plate_nesting == nesting
    pyro.clear_param_store()
    ali = Trace_ALI(max_plate_nesting=1)
    y = torch.randn(5)
    SVI(global_model, AutoNormal(global_model), pyro.optim.Adam({"lr": 1e-3}), loss=ali).step(y)
    assert (ali.num_particles, ali.max_plate_nesting) == (64, 2)
    with pytest.warns(ObjectiveRebuiltWarning):
        SVI(local_model, AutoNormal(local_model), pyro.optim.Adam({"lr": 1e-3}), loss=ali).step(y)
    assert (ali.num_particles, ali.max_plate_nesting) == (1, 1)
