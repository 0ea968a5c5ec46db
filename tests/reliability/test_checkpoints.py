"""Issue 13, items 5-6: exact resume with extra critic steps; checkpoints validated in full."""

import copy
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.nn import MLPGenerator
from pyro_adv.optim import two_timescale_adam
from pyro_adv.training import CheckpointError, fit, load_checkpoint, save_checkpoint


def no_guide(*args, **kwargs):
    return None


def make_gan():
    generator = MLPGenerator(1, 1, hidden_dims=(8,))

    def model(data):
        pyro.module("generator", generator)
        with pyro.plate("data", data.shape[0]):
            noise = pyro.sample("eps", dist.Normal(0.0, 1.0).expand([data.shape[0], 1]).to_event(1))
            pyro.sample("x", dist.Delta(generator(noise), event_dim=1), obs=data)

    optim = two_timescale_adam(3e-3, discriminator_lr=1e-2, num_steps=20, decay=0.5)
    return SVI(model, no_guide, optim, Trace_GAN(discriminator_steps=2))


def snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


DATA = 3 + torch.randn(64, 1, generator=torch.Generator().manual_seed(0))


def test_resume_with_extra_discriminator_steps_is_bit_identical(tmp_path):
    pyro.set_rng_seed(7)
    svi = make_gan()
    fit(svi, 10, DATA, progress=False)
    first = svi
    uninterrupted = snapshot()

    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    path = str(tmp_path / "gan.pt")
    fit(make_gan(), 5, DATA, progress=False, checkpoint_path=path)
    pyro.clear_param_store()
    torch.randn(3)
    svi = make_gan()
    state = load_checkpoint(path, svi, DATA)
    fit(svi, 5, DATA, progress=False, history=state["history"])
    resumed = snapshot()
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    # the extra updates use the SVI optimizer's settings (old code: Adam(lr=1e-3) built on use)
    for run in (first, svi):
        assert run.loss.__self__.discriminator_optim.pt_optim_args is run.optim.pt_optim_args


def conjugate(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def avb_svi(guide=None):
    guide = guide or AutoImplicit(conjugate, hidden_dims=(8,))
    avb = TraceAVB_ELBO(num_particles=2, moment_particles=16, discriminator_particles=8)
    return SVI(conjugate, guide, pyro.optim.Adam({"lr": 1e-2}), loss=avb)


def test_flipped_bytes_are_detected_and_change_nothing(tmp_path):
    x = torch.randn(10)
    svi = avb_svi()
    fit(svi, 3, x, progress=False)
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, svi, step=3)
    fit(svi, 2, x, progress=False)
    before = snapshot()
    optim_before = svi.optim.get_state()
    raw = bytearray(open(path, "rb").read())
    # flip bytes inside the stored tensors (the zip's CRC would be wrong; torch ignores it)
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path, svi, x)
    after = snapshot()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert svi.optim.get_state().keys() == optim_before.keys()


def test_a_failed_load_leaves_the_param_store_untouched(tmp_path):
    x = torch.randn(10)

    def wide_guide(x):
        a = pyro.param("a_loc", torch.zeros(()))
        pyro.sample("z", dist.Normal(a + pyro.param("b_loc", torch.zeros(())), 1.0))

    def narrow_guide(x):
        a = pyro.param("a_loc", torch.zeros(()))
        pyro.sample("z", dist.Normal(a + pyro.param("b_loc", torch.zeros(3))[0], 1.0))

    svi = avb_svi(wide_guide)
    for _ in range(3):
        svi.step(x)
    assert pyro.param("a_loc").item() != 0
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, svi, step=3)
    pyro.clear_param_store()
    other = avb_svi(narrow_guide)
    other.evaluate_loss(x)
    before = snapshot()
    with pytest.raises(ValueError, match="b_loc"):  # a CheckpointError is a ValueError
        load_checkpoint(path, other, x)
    after = snapshot()
    # old code copied a_loc (and the discriminator) in before failing at b_loc
    assert all(torch.equal(before[k], after[k]) for k in before), "store half overwritten"


def test_checkpoint_of_another_objective_is_refused(tmp_path):
    x = torch.randn(10)
    svi = SVI(conjugate, AutoNormal(conjugate), pyro.optim.Adam({"lr": 1e-2}), loss=Trace_ALI())
    for _ in range(2):
        svi.step(x)
    path = str(tmp_path / "ali.pt")
    save_checkpoint(path, svi, step=2)
    pyro.clear_param_store()
    with pytest.raises(CheckpointError, match="Trace_ALI"):
        load_checkpoint(path, avb_svi(), x)


def test_unwritable_checkpoint_path_fails_before_training(tmp_path):
    steps = []
    svi = avb_svi()
    target = str(tmp_path / "missing_dir" / "c.pt")
    with pytest.raises(ValueError, match="cannot be written"):
        fit(
            svi,
            3,
            torch.randn(10),
            progress=False,
            checkpoint_path=target,
            callback=lambda *a: steps.append(a),
        )
    assert steps == []  # old code trained all steps, then failed to save


def test_fit_keeps_the_history_on_an_exception():
    def boom(step, loss, stats):
        if step == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted") as info:
        fit(avb_svi(), 10, torch.randn(10), progress=False, callback=boom)
    assert info.value.history["step"] == [0, 1, 2]


def test_pyro_param_store_and_optimizer_apis_behave_as_relied_on():
    # load_checkpoint copies into the tensors of get_state() in place: they must be the
    # live params (what pyro.module and the optimizers hold)
    loc = pyro.param("loc", torch.ones(2), constraint=dist.constraints.positive)
    live = pyro.get_param_store().get_state()["params"]["loc"]
    assert live is loc.unconstrained()
    # PyroOptim.set_state only queues state until a param's optimizer is built, and the
    # built ones live in optim_objs, which _set_optim_state clears (no public API)
    optim = pyro.optim.Adam({"lr": 0.1})
    live.grad = torch.ones(2)
    optim([live])
    saved = copy.deepcopy(optim.get_state())  # state_dict() shares live tensors
    assert isinstance(optim.optim_objs, dict) and live in optim.optim_objs
    optim([live])
    optim.set_state(saved)
    assert optim.get_state()["loc"]["state"][0]["step"] == 2  # not applied: queued
    optim.optim_objs.clear()
    optim([live])
    assert optim.get_state()["loc"]["state"][0]["step"] == 2  # 1 saved + this one


def test_checkpoint_files_exist_only_complete(tmp_path):
    svi = avb_svi()
    path = str(tmp_path / "c.pt")
    fit(svi, 2, torch.randn(10), progress=False, checkpoint_path=path, checkpoint_every=1)
    assert os.path.exists(path) and not os.path.exists(path + ".tmp")
