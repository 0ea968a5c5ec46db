r"""
Training conveniences around :class:`pyro.infer.SVI`: a loop with a progress bar
and a history, warnings for the two ways adversarial training fails silently,
and checkpoints that resume a run exactly.

Example::

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceAVB_ELBO())
    history = fit(svi, 2000, data, checkpoint_path="run.pt", checkpoint_every=500)
    plot_training_history(history)

    # later, in a fresh process, with model, guide and svi built the same way:
    state = load_checkpoint("run.pt", svi, data)       # data: svi.step's arguments
    history = fit(svi, 2000, data, history=state["history"])

Checkpoints hold only tensors, numbers, strings, lists and dicts, and are read
with ``torch.load(weights_only=True)``: loading one never executes pickled code.
"""

import math
import os
import random
import warnings

import numpy as np
import pyro
import pyro.distributions.constraints as pyro_constraints
import torch
from torch.distributions import constraints as torch_constraints

__all__ = [
    "DiscriminatorWinsWarning",
    "NonFiniteLossWarning",
    "fit",
    "load_checkpoint",
    "objective_of",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1

_LOSS_KEYS = ("loss", "generator_loss", "discriminator_loss")
_ACCURACY_KEYS = ("discriminator_accuracy_real", "discriminator_accuracy_fake")


class DiscriminatorWinsWarning(UserWarning):
    """The discriminator separates real from fake almost perfectly for many steps."""


class NonFiniteLossWarning(UserWarning):
    """A loss became NaN or infinite; training was stopped."""


def _format(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _postfix(loss, stats):
    postfix = {"loss": _format(loss)}
    if "generator_loss" in stats:
        postfix["G"] = _format(stats["generator_loss"])
    if "discriminator_loss" in stats:
        postfix["D"] = _format(stats["discriminator_loss"])
    if all(k in stats for k in _ACCURACY_KEYS):
        postfix["acc"] = (
            f"{stats['discriminator_accuracy_real']:.2f}/{stats['discriminator_accuracy_fake']:.2f}"
        )
    return postfix


def objective_of(svi):
    """The objective behind ``svi`` (SVI keeps only its bound ``loss`` method)."""
    return getattr(svi.loss, "__self__", svi.loss)


def _scalar(value):
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


def fit(
    svi,
    num_steps,
    *args,
    progress=True,
    history=None,
    desc=None,
    win_window=200,
    win_threshold=0.99,
    stop_on_nonfinite=True,
    checkpoint_path=None,
    checkpoint_every=None,
    callback=None,
    **kwargs,
):
    r"""
    Runs ``num_steps`` of ``svi.step(*args, **kwargs)`` with a tqdm progress bar
    and returns the history.

    The bar shows the loss and, for adversarial objectives (whose ``stats`` hold
    the last step's statistics), the generator loss ``G``, the discriminator loss
    ``D`` and the discriminator's accuracy on guide/reference samples ``acc``.
    Plain Pyro objectives work too, with the loss alone.

    The history is a dict of lists: ``"step"``, ``"loss"`` and every scalar of the
    objective's ``stats`` (e.g. ``"discriminator_accuracy_real"``, ``"kl"``).

    Two failures are flagged:

    * the **discriminator wins**: its accuracy is at least ``win_threshold`` on
      both sides for ``win_window`` consecutive steps. Its logit is then no longer
      a usable density-ratio estimate (its gradients vanish or explode; thesis
      section 3): warns :class:`DiscriminatorWinsWarning` once. Remedies: a
      smaller discriminator learning rate, more guide capacity, adaptive contrast.
    * a **non-finite loss** (NaN or inf), returned or raised as
      :class:`~pyro_adv.infer.NonFiniteLossError`: warns
      :class:`NonFiniteLossWarning` and stops (``stop_on_nonfinite``), returning
      the history so far.

    :param pyro.infer.SVI svi: the SVI object.
    :param int num_steps: number of steps.
    :param bool progress: show a tqdm progress bar.
    :param dict history: a history to extend (e.g. from :func:`load_checkpoint`);
        steps continue its numbering.
    :param str desc: progress-bar label.
    :param int win_window: steps of near-perfect accuracy before warning.
    :param float win_threshold: accuracy that counts as near-perfect.
    :param bool stop_on_nonfinite: stop at a non-finite loss (otherwise raise).
    :param str checkpoint_path: where to save checkpoints (see :func:`save_checkpoint`).
    :param int checkpoint_every: save every this many steps (and at the end).
    :param callable callback: called as ``callback(step, loss, stats)`` after each
        step; returning ``True`` stops training.
    :returns: the history.
    :rtype: dict
    """
    from tqdm.auto import tqdm

    from pyro_adv.infer.adversarial import NonFiniteLossError

    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps}")
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs a checkpoint_path")
    history = {"step": [], "loss": []} if history is None else history
    start = history["step"][-1] + 1 if history.get("step") else 0
    streak, warned = 0, False
    bar = tqdm(range(start, start + int(num_steps)), desc=desc, disable=not progress, leave=True)
    try:
        for step in bar:
            stats = {}
            try:
                loss = svi.step(*args, **kwargs)
            except NonFiniteLossError as e:
                if not stop_on_nonfinite:
                    raise
                warnings.warn(
                    f"step {step}: {e}; training stopped", NonFiniteLossWarning, stacklevel=2
                )
                break
            stats = dict(getattr(objective_of(svi), "stats", None) or {})
            _record(history, step, loss, stats)
            if not math.isfinite(loss) or any(
                not math.isfinite(history[k][-1]) for k in _LOSS_KEYS if k in stats
            ):
                if not stop_on_nonfinite:
                    raise FloatingPointError(f"step {step}: non-finite loss {loss}")
                warnings.warn(
                    f"step {step}: the loss is {loss} (statistics: {stats}); training stopped. "
                    "Lower the learning rate or rescale the data.",
                    NonFiniteLossWarning,
                    stacklevel=2,
                )
                break
            if all(k in stats for k in _ACCURACY_KEYS):
                wins = min(stats[k] for k in _ACCURACY_KEYS) >= win_threshold
                streak = streak + 1 if wins else 0
                if streak >= win_window and not warned:
                    warned = True
                    warnings.warn(
                        f"step {step}: the discriminator has separated guide and reference "
                        f"samples with accuracy >= {win_threshold} for {win_window} steps; its "
                        "logit is no longer a reliable density ratio. Try a smaller "
                        "discriminator learning rate, a larger guide, or adaptive contrast.",
                        DiscriminatorWinsWarning,
                        stacklevel=2,
                    )
            if progress:
                bar.set_postfix(_postfix(loss, stats), refresh=False)
            if checkpoint_every and (step + 1 - start) % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, svi, step=step + 1, history=history)
            if callback is not None and callback(step, loss, stats):
                break
    finally:
        bar.close()
    if checkpoint_path is not None and history["step"]:
        save_checkpoint(checkpoint_path, svi, step=history["step"][-1] + 1, history=history)
    return history


def _record(history, step, loss, stats):
    n = len(history.setdefault("step", []))
    history["step"].append(step)
    history.setdefault("loss", [math.nan] * n).append(float(loss))
    for key, value in stats.items():
        value = _scalar(value)
        if key == "loss" or value is None:
            continue
        # keys that appear late are padded, so every list lines up with "step"
        history.setdefault(key, [math.nan] * n).append(value)
    for values in history.values():
        if len(values) < n + 1:
            values.append(math.nan)


# ---------------------------------------------------------------- checkpoints
def _constraint_modules():
    return (torch_constraints, pyro_constraints)


def _constraint_to_spec(constraint):
    """A weights_only-safe description of a constraint (name or class + attributes)."""
    for module in _constraint_modules():
        for name, value in vars(module).items():
            if value is constraint:
                return {"name": name}
    attrs = {}
    for key, value in vars(constraint).items():
        if isinstance(value, torch_constraints.Constraint):
            attrs[key] = _constraint_to_spec(value)
        elif torch.is_tensor(value) or isinstance(value, (bool, int, float, str, type(None))):
            attrs[key] = value
        else:
            return {"unknown": type(constraint).__name__}
    return {"class": type(constraint).__name__, "attrs": attrs}


def _spec_to_constraint(spec, param_name):
    if "name" in spec:
        for module in _constraint_modules():
            if spec["name"] in vars(module):
                return vars(module)[spec["name"]]
    elif "class" in spec:
        for module in _constraint_modules():
            cls = vars(module).get(spec["class"])
            if isinstance(cls, type):
                obj = cls.__new__(cls)
                for key, value in spec["attrs"].items():
                    if isinstance(value, dict):
                        value = _spec_to_constraint(value, param_name)
                    obj.__dict__[key] = value
                return obj
    raise ValueError(
        f"cannot rebuild the constraint {spec} of param {param_name!r}; create the param "
        "(e.g. by passing svi.step's arguments to load_checkpoint) before loading"
    )


def _buffers(module):
    return {name: b.detach().clone() for name, b in module.named_buffers()}


def _set_buffers(module, buffers, where):
    for name, value in buffers.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        current = owner._buffers.get(leaf)
        if current is not None and current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)
        elif leaf in owner._buffers:
            owner._buffers[leaf] = value.to(current if current is not None else value)
        else:
            raise ValueError(f"{where} has no buffer {name!r}; was it built the same way?")


def _rng_state():
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optim_state(optim):
    return None if optim is None else optim.get_state()


def _set_optim_state(optim, state, what="optimizer"):
    if state is None:
        return
    if optim is None:
        warnings.warn(f"the checkpoint has {what} state but there is no {what} to restore it to")
        return
    optim.set_state(state)
    # PyroOptim applies saved state when it first sees a param; forget the
    # optimizers it already built so that the saved state is applied to all
    for attr in ("optim_objs", "grad_clip"):
        if isinstance(getattr(optim, attr, None), dict):
            getattr(optim, attr).clear()


def save_checkpoint(path, svi, step=None, history=None, modules=None, extra=None):
    r"""
    Saves everything needed to resume ``svi`` exactly to one file:

    * Pyro's param store (guide, model and discriminator parameters, in
      unconstrained space, with their constraints);
    * the optimizer state (``svi.optim.get_state()``, and the objective's
      ``discriminator_optim`` if any);
    * the buffers of the objective's discriminators (their input
      standardization), of the guide if it is a module, and the ``state_dict``
      of each of ``modules``;
    * the torch, numpy and Python random states (and CUDA's, where present);
    * ``step``, ``history`` and ``extra`` (tensors, numbers, strings, lists,
      dicts only).

    :param str path: file to write (written atomically).
    :param pyro.infer.SVI svi: the SVI object.
    :param int step: the number of steps done.
    :param dict history: the training history (see :func:`fit`).
    :param dict modules: name -> ``torch.nn.Module`` with state outside the param
        store.
    :param dict extra: anything else to keep.
    """
    store = pyro.get_param_store()
    objective = objective_of(svi)
    discriminators = getattr(objective, "discriminators", None)
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "history": history,
        "extra": extra,
        "params": {name: store._params[name].detach().clone() for name in store.keys()},
        "constraints": {
            name: _constraint_to_spec(store._constraints[name]) for name in store.keys()
        },
        "optim": _optim_state(svi.optim),
        "discriminator_optim": _optim_state(getattr(objective, "discriminator_optim", None)),
        "discriminators": (
            {key: _buffers(m) for key, m in discriminators.items()}
            if discriminators is not None
            else {}
        ),
        "guide_buffers": _buffers(svi.guide) if isinstance(svi.guide, torch.nn.Module) else {},
        "modules": {name: m.state_dict() for name, m in (modules or {}).items()},
        "rng": _rng_state(),
    }
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, svi, *args, modules=None, restore_rng=True, map_location=None, **kwargs):
    r"""
    Restores a checkpoint written by :func:`save_checkpoint` into ``svi``, so
    that further ``svi.step`` calls continue the saved run exactly (same
    parameters, optimizer moments and random stream).

    Guides and discriminators are built lazily, on their first call. Pass the
    arguments of ``svi.step`` as ``*args, **kwargs``: they are used for one
    ``svi.evaluate_loss`` call that builds everything before the state is
    copied in (its randomness is undone by the restored random state).

    The file is read with ``torch.load(weights_only=True)``.

    :param str path: checkpoint file.
    :param pyro.infer.SVI svi: an SVI object built like the saved one.
    :param dict modules: the modules passed to :func:`save_checkpoint`.
    :param bool restore_rng: restore the random states.
    :param map_location: passed to :func:`torch.load` (e.g. ``"cpu"``).
    :returns: dict with ``step``, ``history`` and ``extra``.
    """
    state = torch.load(path, weights_only=True, map_location=map_location)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a pyro_adv checkpoint (version {CHECKPOINT_VERSION})")
    if args or kwargs:
        svi.evaluate_loss(*args, **kwargs)
    store = pyro.get_param_store()
    for name, value in state["params"].items():
        if name in store:
            current = store._params[name]
            if current.shape != value.shape:
                raise ValueError(
                    f"param {name!r} has shape {tuple(current.shape)} but the checkpoint holds "
                    f"{tuple(value.shape)}; build the guide and model as in the saved run"
                )
            with torch.no_grad():
                # in place: modules registered with pyro.module share these tensors
                current.copy_(value)
        else:
            constraint = _spec_to_constraint(state["constraints"][name], name)
            value = value.detach().requires_grad_(value.is_floating_point())
            store.set_state({"params": {name: value}, "constraints": {name: constraint}})
    objective = objective_of(svi)
    discriminators = getattr(objective, "discriminators", None)
    for key, buffers in state["discriminators"].items():
        if discriminators is None or key not in discriminators:
            raise ValueError(
                f"the checkpoint has discriminator {key!r} but the objective has not built it "
                "yet; pass svi.step's arguments to load_checkpoint so it is built first"
            )
        _set_buffers(discriminators[key], buffers, f"discriminator {key!r}")
    if state["guide_buffers"]:
        if not isinstance(svi.guide, torch.nn.Module):
            raise ValueError("the checkpoint has guide buffers but svi.guide is not a module")
        _set_buffers(svi.guide, state["guide_buffers"], "the guide")
    for name, saved in state["modules"].items():
        if modules is None or name not in modules:
            raise ValueError(f"the checkpoint has module {name!r}: pass it in modules=")
        modules[name].load_state_dict(saved)
    _set_optim_state(svi.optim, state["optim"])
    _set_optim_state(
        getattr(objective, "discriminator_optim", None),
        state["discriminator_optim"],
        "discriminator_optim (pass one to the objective)",
    )
    if restore_rng:
        _set_rng_state(state["rng"])
    return {"step": state["step"], "history": state["history"], "extra": state["extra"]}
