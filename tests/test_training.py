import math
import random
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_adv.infer import NonFiniteLossError, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models import ConjugateGaussian
from pyro_adv.training import (
    DiscriminatorWinsWarning,
    NonFiniteLossWarning,
    fit,
    load_checkpoint,
    objective_of,
    save_checkpoint,
)


@pytest.fixture
def data():
    return ConjugateGaussian().simulate(10, generator=torch.Generator().manual_seed(0))[1]


class FakeObjective:
    def __init__(self, losses, accuracy=0.5):
        self.losses = list(losses)
        self.accuracy = accuracy
        self.stats = {}

    def step(self):
        loss = self.losses.pop(0)
        if isinstance(loss, Exception):
            raise loss
        self.stats = {
            "loss": loss,
            "generator_loss": loss,
            "discriminator_loss": 0.01,
            "discriminator_accuracy_p": self.accuracy,
            "discriminator_accuracy_q": self.accuracy,
        }
        return loss


class FakeSVI:
    """Quacks like pyro.infer.SVI: ``loss`` is the objective's bound method."""

    def __init__(self, objective):
        self.objective = objective
        self.loss = objective.step

    def step(self, *args, **kwargs):
        return self.objective.step()


def test_fit_plain_pyro_objective(data):
    cg = ConjugateGaussian()
    svi = SVI(cg.model, AutoNormal(cg.model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    history = fit(svi, 30, data, progress=False)
    # the default monitor smooths the loss (pyro_adv.convergence.SmoothedLoss)
    assert set(history) == {"step", "loss", "loss_ema"}  # no trend before 2 windows
    assert history["step"] == list(range(30))
    assert history["loss"][-1] < history["loss"][0]
    more = fit(svi, 5, data, history=history, progress=True, desc="more")
    assert more is history and history["step"][-1] == 34


def test_fit_records_adversarial_stats(data):
    cg = ConjugateGaussian()
    objective = TraceAVB_ELBO(num_particles=8, discriminator_hidden_dims=(8,))
    svi = SVI(
        cg.model, AutoImplicit(cg.model, hidden_dims=(8,)), pyro.optim.Adam({"lr": 1e-2}), objective
    )
    history = fit(svi, 5, data, progress=True)
    for key in (
        "loss",
        "generator_loss",
        "discriminator_loss",
        "discriminator_accuracy_p",
        "discriminator_accuracy_q",
        "kl",
    ):
        assert len(history[key]) == 5
    assert history["loss"][-1] == objective.stats["loss"]


def test_warns_when_discriminator_wins():
    svi = FakeSVI(FakeObjective([1.0] * 30, accuracy=1.0))
    with pytest.warns(DiscriminatorWinsWarning, match="separated"):
        fit(svi, 30, progress=False, win_window=20)
    calm = FakeSVI(FakeObjective([1.0] * 30, accuracy=0.6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(calm, 30, progress=False, win_window=20)


def test_warns_and_stops_on_nonfinite_loss():
    svi = FakeSVI(FakeObjective([1.0, 2.0, float("nan"), 3.0]))
    with pytest.warns(NonFiniteLossWarning, match="nan"):
        history = fit(svi, 4, progress=False)
    assert len(history["loss"]) == 3 and math.isnan(history["loss"][-1])
    raising = FakeSVI(FakeObjective([1.0, NonFiniteLossError("boom"), 3.0]))
    with pytest.warns(NonFiniteLossWarning, match="boom"):
        history = fit(raising, 3, progress=False)
    assert history["loss"] == [1.0]
    with pytest.raises(NonFiniteLossError):
        fit(
            FakeSVI(FakeObjective([NonFiniteLossError("x")])),
            1,
            progress=False,
            stop_on_nonfinite=False,
        )


def _make_svi(kind):
    cg = ConjugateGaussian()
    if kind == "avb":
        guide = AutoImplicit(cg.model, hidden_dims=(16,))
        objective = TraceAVB_ELBO(num_particles=8, discriminator_hidden_dims=(16,), ema_decay=0.999)
    else:
        guide = AutoNormal(cg.model)
        objective = Trace_ELBO()
    return SVI(cg.model, guide, pyro.optim.Adam({"lr": 1e-2}), objective)


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _averages(svi):
    averages = getattr(objective_of(svi), "averages", None)
    return None if averages is None else averages.state_dict()


@pytest.mark.parametrize("kind", ["trace_elbo", "avb"])
def test_checkpoint_resumes_exactly(kind, data, tmp_path):
    k = 15
    pyro.set_rng_seed(123)
    first = _make_svi(kind)
    fit(first, 2 * k, data, progress=False)
    uninterrupted = _params()
    uninterrupted_averages = _averages(first)

    pyro.clear_param_store()
    pyro.set_rng_seed(123)
    path = tmp_path / "run.pt"
    history = fit(_make_svi(kind), k, data, progress=False, checkpoint_path=str(path))
    assert path.exists()

    # a fresh start: empty param store, new guide, optimizer and objective, other RNG state
    pyro.clear_param_store()
    torch.randn(17), random.random(), np.random.rand()
    svi = _make_svi(kind)
    state = load_checkpoint(str(path), svi, data)
    assert state["step"] == k and state["history"]["loss"] == history["loss"]
    resumed = fit(svi, k, data, history=state["history"], progress=False)
    assert resumed["step"] == list(range(2 * k))
    params = _params()
    assert params.keys() == uninterrupted.keys()
    if kind == "avb":
        assert any(name.startswith("discriminator_") for name in params)
    for name in params:
        assert torch.equal(params[name], uninterrupted[name]), name
    if kind == "avb":
        # the weight averages were saved and restored, and went on as uninterrupted
        averages = _averages(svi)
        assert averages["num_updates"] == 2 * k
        assert averages["shadows"].keys() == uninterrupted_averages["shadows"].keys()
        for name, shadow in averages["shadows"].items():
            assert torch.equal(shadow, uninterrupted_averages["shadows"][name]), name


def test_checkpoint_is_weights_only_and_checks_input(data, tmp_path):
    svi = _make_svi("trace_elbo")
    fit(svi, 3, data, progress=False)
    path = tmp_path / "c.pt"
    save_checkpoint(str(path), svi, step=3, extra={"note": "hi", "values": [1, 2.5]})
    raw = torch.load(str(path), weights_only=True)
    assert raw["format"] == "pyro_adv-checkpoint"
    # constraints are the rebuilt guide's, checked against the saved ones by name
    pyro.clear_param_store()
    state = load_checkpoint(str(path), _make_svi("trace_elbo"), data)
    assert state["step"] == 3
    assert state["extra"] == {"note": "hi", "values": [1, 2.5]}
    store = pyro.get_param_store()
    scale = next(name for name in store.keys() if "scale" in name)
    assert (
        store._constraints[scale] is dist.constraints.softplus_positive or (store[scale] > 0).all()
    )
    torch.save({"something": 1}, str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="not a pyro_adv checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"), svi)
    with pytest.raises(ValueError, match="checkpoint_path"):
        fit(svi, 1, data, checkpoint_every=1, progress=False)


def test_avb_checkpoint_needs_step_arguments(data, tmp_path):
    svi = _make_svi("avb")
    fit(svi, 2, data, progress=False)
    path = tmp_path / "avb.pt"
    save_checkpoint(str(path), svi, step=2)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="svi.step's arguments"):
        load_checkpoint(str(path), _make_svi("avb"))
