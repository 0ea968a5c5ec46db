import copy

import pyro
import pyro.optim
import pytest
import torch
from pyro.optim.clipped_adam import ClippedAdam

from pyro_adv.optim import ForeachOptim, foreach_adam, two_timescale_adam


def test_per_player_settings_decay_and_no_clamp():
    optim = two_timescale_adam(1e-3, discriminator_lr=4e-3, num_steps=100, decay=0.01)
    gen = optim.pt_optim_args("AutoImplicit.loc")
    disc = optim.pt_optim_args("discriminator_global.net.0.weight")
    assert gen["lr"] == 1e-3 and disc["lr"] == 4e-3
    assert gen["lrd"] ** 100 == pytest.approx(0.01) and disc["lrd"] == gen["lrd"]
    assert gen["clip_norm"] == float("inf")
    frozen_disc = two_timescale_adam(1e-3, 4e-3, num_steps=10, decay=0.5, decay_discriminator=False)
    assert frozen_disc.pt_optim_args("discriminator_x.w")["lrd"] == 1.0


def test_bad_settings():
    with pytest.raises(ValueError, match="num_steps"):
        two_timescale_adam(1e-3, decay=0.1)
    with pytest.raises(ValueError, match="positive"):
        two_timescale_adam(-1.0)
    with pytest.raises(ValueError, match="decay"):
        two_timescale_adam(1e-3, num_steps=10, decay=2.0)


# ------------------------------------------------------------ ForeachOptim


def _train(optim, steps=6, seed=0, state=None):
    """A few steps over five parameters of different shapes and two settings groups; one
    parameter ("late") joins at step 2 and "sometimes" gets a gradient only every other
    step. Returns the parameters and the optimizer."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    names = ["a", "discriminator_global$$$w", "discriminator_global$$$b", "late", "sometimes"]
    shapes = [(3,), (4, 2), (2,), (2, 2), ()]
    for name, shape in zip(names, shapes):
        pyro.param(name, torch.randn(shape))
    if state is not None:
        optim.set_state(state)
    store = pyro.get_param_store()
    for step in range(steps):
        used = [n for n in names if (n != "late" or step >= 2)]
        params = [store[n].unconstrained() for n in used]
        # large gradients, so that a finite clip_norm acts
        loss = sum((30 * torch.sin(3 * p) * (i + 1)).sum() for i, p in enumerate(params))
        loss.backward()
        if step % 2:
            store["sometimes"].unconstrained().grad = None
        optim(params)
        for p in params:
            p.grad = None
    return {n: store[n].detach().clone() for n in names}, optim


def _per_param(name):
    if name.startswith("discriminator"):
        return {"lr": 0.05, "betas": (0.5, 0.9), "weight_decay": 0.1}
    if name == "late":  # differs from the others by its rate alone
        return {"lr": 0.03}
    return {"lr": 0.01}


def _clipped_per_param(name):
    if name.startswith("discriminator"):
        return {"lr": 0.05, "lrd": 0.9, "clip_norm": 5.0, "betas": (0.5, 0.9)}
    return {"lr": 0.01, "lrd": 0.95, "clip_norm": float("inf")}


@pytest.mark.parametrize(
    "constructor, args",
    [
        (torch.optim.Adam, {"lr": 0.01}),
        (torch.optim.Adam, _per_param),
        # torch's fused kernel, called once for all parameters of a settings group
        (torch.optim.Adam, lambda name: dict(_per_param(name), fused=True)),
        (ClippedAdam, _clipped_per_param),
    ],
    ids=["adam", "adam_per_param", "adam_fused", "clipped_adam"],
)
def test_foreach_optim_is_bit_identical_to_pyro(constructor, args):
    expected, reference = _train(pyro.optim.PyroOptim(constructor, args))
    ref_state = reference.get_state()
    actual, fused = _train(ForeachOptim(constructor, args))
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    # the same per-parameter state, in Pyro's format (checkpoints carry over)
    state = fused.get_state()
    assert ref_state.keys() == state.keys()
    for name in ref_state:
        for key, value in ref_state[name]["state"][0].items():
            assert torch.equal(
                torch.as_tensor(state[name]["state"][0][key]), torch.as_tensor(value)
            )


def test_foreach_optim_resumes_pyro_state_and_clips():
    # half a run with Pyro's optimizer, the rest with the fused one from its state
    _, reference = _train(pyro.optim.PyroOptim(torch.optim.Adam, _per_param), steps=3)
    state = reference.get_state()
    assert len(state) == 5  # every parameter has stepped
    expected, _ = _train(
        pyro.optim.PyroOptim(torch.optim.Adam, _per_param),
        steps=2,
        seed=1,
        state=copy.deepcopy(state),
    )
    actual, _ = _train(
        ForeachOptim(torch.optim.Adam, _per_param), steps=2, seed=1, state=copy.deepcopy(state)
    )
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    # Pyro's clip_args apply before the fused step
    clip = {"clip_norm": 1.0}
    expected, _ = _train(pyro.optim.PyroOptim(torch.optim.Adam, {"lr": 0.01}, clip))
    actual, _ = _train(ForeachOptim(torch.optim.Adam, {"lr": 0.01}, clip))
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_foreach_adam_and_two_timescale_types():
    assert isinstance(foreach_adam({"lr": 1e-3}), ForeachOptim)
    optim = two_timescale_adam(1e-3)
    assert isinstance(optim, ForeachOptim) and optim.pt_optim_constructor is ClippedAdam
    assert type(two_timescale_adam(1e-3, foreach=False)) is pyro.optim.PyroOptim
    with pytest.raises(TypeError, match="scheduler"):
        ForeachOptim(torch.optim.lr_scheduler.StepLR, {"step_size": 1})
