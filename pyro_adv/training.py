r"""
Training conveniences around :class:`pyro.infer.SVI`: a loop with a progress bar
and a history, warnings for the ways adversarial training fails silently, and
checkpoints that resume a run exactly.

Example::

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceAVB_ELBO())
    history = fit(svi, 2000, data, checkpoint_path="run.pt", checkpoint_every=500)
    plot_training_history(history)

    # later, in a fresh process, with model, guide and svi built the same way:
    state = load_checkpoint("run.pt", svi, data)       # data: svi.step's arguments
    history = fit(svi, 2000, data, history=state["history"])

Checkpoints hold only tensors, numbers, strings, lists and dicts, and are read
with ``torch.load(weights_only=True)``: loading one never executes pickled code.
Each carries a SHA-256 digest of its contents, and everything in it is checked
against the SVI object (objective class, parameter names, shapes and
constraints, discriminators, buffers, optimizer state) before any state changes.
"""

import hashlib
import io
import math
import os
import random
import warnings

import numpy as np
import pyro
import torch

__all__ = [
    "CheckpointError",
    "DiscriminatorWinsWarning",
    "NonFiniteLossWarning",
    "TrainingDivergesWarning",
    "fit",
    "load_checkpoint",
    "objective_of",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "pyro_adv-checkpoint"
CHECKPOINT_VERSION = 3  # 3: the objective's weight averages

_LOSS_KEYS = ("loss", "generator_loss", "discriminator_loss")
_ACCURACY_KEYS = ("discriminator_accuracy_p", "discriminator_accuracy_q")
_LOGIT_KEY = "discriminator_max_abs_logit"


class DiscriminatorWinsWarning(UserWarning):
    """
    The discriminator separates the two sides of its game almost perfectly for
    many steps: p (data, simulations, a reference) from q (the model or guide).
    """


class NonFiniteLossWarning(UserWarning):
    """A loss became NaN or infinite; training was stopped."""


class TrainingDivergesWarning(UserWarning):
    """The loss exploded or the discriminator's logits saturated: training diverges."""


class CheckpointError(ValueError):
    """A checkpoint is corrupted, or does not match the SVI object it is loaded into."""


def _format(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _has_accuracies(stats):
    # TraceAVB_ELBO reports None when no site is implicit (nothing is discriminated)
    return all(stats.get(k) is not None for k in _ACCURACY_KEYS)


def _postfix(loss, stats):
    postfix = {"loss": _format(loss)}
    if "generator_loss" in stats:
        postfix["G"] = _format(stats["generator_loss"])
    if "discriminator_loss" in stats:
        postfix["D"] = _format(stats["discriminator_loss"])
    if _has_accuracies(stats):
        postfix["acc"] = (
            f"{stats['discriminator_accuracy_p']:.2f}/{stats['discriminator_accuracy_q']:.2f}"
        )
    return postfix


def _wins_message(objective, threshold, window):
    sides = dict(getattr(objective, "sides", None) or {})
    p, q = sides.get("p", "target samples"), sides.get("q", "model or guide samples")
    remedy = "a larger guide or generator"
    if getattr(objective, "adaptive_contrast", True) is False:
        remedy += ", or adaptive contrast (adaptive_contrast=True)"
    return (
        f"the discriminator has separated {q} (q) from {p} (p) with accuracy >= "
        f"{threshold} on both sides for {window} steps; its logit is no longer a reliable "
        f"density ratio. Try a smaller discriminator learning rate or {remedy}."
    )


def objective_of(svi):
    """The objective behind ``svi`` (SVI keeps only its bound ``loss`` method)."""
    return getattr(svi.loss, "__self__", svi.loss)


def _scalar(value):
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


def _logits_saturate(objective):
    # only losses that pass the logit through a sigmoid (minimax, non-saturating, JS)
    # saturate; f-GAN critics such as ALI's reverse KL reach large logits while learning,
    # and a Wasserstein critic's scale is the data's
    divergence = getattr(objective, "divergence", None)
    return bool(getattr(divergence, "sigmoid_logits", False))


def _check_writable(path):
    """Fails now, not after the run, when ``path`` cannot be written."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb"):
            pass
        os.remove(tmp)
    except OSError as e:
        raise ValueError(f"checkpoint_path {path!r} cannot be written: {e}") from e


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
    explode_factor=1e6,
    saturated_logit=30.0,
    saturation_window=20,
    checkpoint_path=None,
    checkpoint_every=None,
    callback=None,
    monitor="default",
    stop_when=None,
    patience=3,
    **kwargs,
):
    r"""
    Runs ``num_steps`` of ``svi.step(*args, **kwargs)`` with a tqdm progress bar
    and returns the history.

    The bar shows the loss and, for adversarial objectives (whose ``stats`` hold
    the last step's statistics), the generator loss ``G``, the discriminator loss
    ``D`` and the discriminator's accuracy on the p / q sides of its game
    ``acc`` (p: data, simulations or AVB's reference; q: the model or guide).
    Plain Pyro objectives work too, with the loss alone.

    The history is a dict of lists: ``"step"``, ``"loss"`` and every scalar of the
    objective's ``stats`` (e.g. ``"discriminator_accuracy_q"``, ``"kl"``).

    Failures that would otherwise pass silently are flagged:

    * the **discriminator wins**: its accuracy is at least ``win_threshold`` on
      both sides for ``win_window`` consecutive steps. Its logit is then no longer
      a usable density-ratio estimate (its gradients vanish or explode; thesis
      section 3): warns :class:`DiscriminatorWinsWarning` once, naming the two
      sides (the objective's ``sides``). Remedies: a smaller discriminator
      learning rate, a larger guide or generator, for AVB adaptive contrast.
    * **divergence**: the loss grows to ``explode_factor`` times the first step's
      (at least 1 in absolute value), e.g. an impossible ELBO of ``-1e30``, or the
      discriminator's largest absolute logit exceeds ``saturated_logit`` for
      ``saturation_window`` consecutive steps (a sigmoid is then exactly 0 or 1
      and the losses freeze, e.g. at 0 with accuracy 1.0/1.0): warns
      :class:`TrainingDivergesWarning` once. Usually the learning rate is too large.
    * a **non-finite loss** (NaN or inf), returned or raised as
      :class:`~pyro_adv.infer.NonFiniteLossError`: warns
      :class:`NonFiniteLossWarning` and stops (``stop_on_nonfinite``), returning
      the history so far.

    Any other exception propagates with the history so far attached as its
    ``history`` attribute (``except Exception as e: e.history``); a ``history``
    passed in is extended in place, so it is never lost either.

    **Knowing when to stop.** ``monitor`` adds convergence signals
    (:mod:`pyro_adv.convergence`) to the bar and the history. By default it is a
    :class:`~pyro_adv.convergence.SmoothedLoss`: the loss (for AVB the negative ELBO
    estimate) averaged over a window of ``clamp(num_steps // 20, 20, 200)`` steps,
    shown as ``loss~``, with its trend in standard errors (history keys
    ``"loss_ema"`` and ``"loss_trend"``). For GANs and ALI add a
    :class:`~pyro_adv.convergence.TwoSampleCheck` on a held-out validation split:
    the training discriminator's own accuracy can sit at chance while the fit is
    wrong. ``stop_when="converged"`` stops the run once every monitor has been
    settled (trend within its threshold, C2ST within 3 sds of chance) at
    ``patience`` consecutive checks; ``stop_when`` may also be a callable
    ``stop_when(history) -> bool`` evaluated after each step. Monitors restart
    with each ``fit`` call (their state is not checkpointed).

    For ``discriminator_steps > 1`` the objective's extra discriminator updates
    use a copy of ``svi.optim``'s settings unless it was given its own optimizer
    (see :meth:`~pyro_adv.infer.players.DiscriminatorPlayers.use_optimizer_of`).

    :param pyro.infer.SVI svi: the SVI object.
    :param int num_steps: number of steps.
    :param bool progress: show a tqdm progress bar.
    :param dict history: a history to extend (e.g. from :func:`load_checkpoint`);
        steps continue its numbering.
    :param str desc: progress-bar label.
    :param int win_window: steps of near-perfect accuracy before warning.
    :param float win_threshold: accuracy that counts as near-perfect.
    :param bool stop_on_nonfinite: stop at a non-finite loss (otherwise raise).
    :param float explode_factor: growth of the loss over the first step's that
        counts as divergence.
    :param float saturated_logit: absolute discriminator logit that counts as saturated.
    :param int saturation_window: consecutive saturated steps before warning.
    :param str checkpoint_path: where to save checkpoints (see :func:`save_checkpoint`);
        checked to be writable before the first step.
    :param int checkpoint_every: save every this many steps (and at the end).
    :param callable callback: called as ``callback(step, loss, stats)`` after each
        step; returning ``True`` stops training.
    :param monitor: a :class:`~pyro_adv.convergence.Monitor` or a list of them;
        ``"default"``: a :class:`~pyro_adv.convergence.SmoothedLoss`; ``None``: none.
    :param stop_when: ``None`` (run every step), ``"converged"`` (see above), or a
        callable ``stop_when(history) -> bool``.
    :param int patience: consecutive settled checks of every monitor before
        ``stop_when="converged"`` stops.
    :returns: the history. When a stopping rule stopped the run, its
        ``"stopped"`` entry says at which step and why (absent otherwise).
    :rtype: dict
    """
    from tqdm.auto import tqdm

    from pyro_adv.infer.checks import NonFiniteLossError

    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps}")
    if checkpoint_every is not None:
        if (
            isinstance(checkpoint_every, bool)
            or int(checkpoint_every) != checkpoint_every
            or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every}")
        if checkpoint_path is None:
            raise ValueError("checkpoint_every needs a checkpoint_path")
    if checkpoint_path is not None:
        _check_writable(checkpoint_path)
    monitors = _monitors(monitor, num_steps)
    if stop_when is not None and stop_when != "converged" and not callable(stop_when):
        raise ValueError(f"stop_when must be None, 'converged' or a callable, got {stop_when!r}")
    if stop_when == "converged" and not monitors:
        raise ValueError("stop_when='converged' needs a monitor")
    if isinstance(patience, bool) or int(patience) != patience or patience < 1:
        raise ValueError(f"patience must be a positive integer, got {patience!r}")
    objective = objective_of(svi)
    if hasattr(objective, "use_optimizer_of"):
        objective.use_optimizer_of(svi)
    history = {"step": [], "loss": []} if history is None else history
    history.pop("stopped", None)
    settled_streak = [0] * len(monitors)
    start = history["step"][-1] + 1 if history.get("step") else 0
    streak, warned = 0, False
    saturated, diverge_warned, reference = 0, False, None
    saturates = _logits_saturate(objective)
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
            stats = dict(getattr(objective, "stats", None) or {})
            signals = {}
            if math.isfinite(loss):
                for i, m in enumerate(monitors):
                    values = m.update(step, loss, stats)
                    if values is not None and m.settled is not None:
                        settled_streak[i] = settled_streak[i] + 1 if m.settled else 0
                    signals.update(values or {})
            _record(history, step, loss, {**stats, **signals})
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
            if reference is None:
                reference = max(abs(loss), 1.0)
            logit = stats.get(_LOGIT_KEY)
            saturated = saturated + 1 if saturates and logit and logit > saturated_logit else 0
            if not diverge_warned and (
                abs(loss) > explode_factor * reference or saturated >= saturation_window
            ):
                diverge_warned = True
                what = (
                    f"the loss {loss:.4g} is over {explode_factor:g} times the first step's"
                    if abs(loss) > explode_factor * reference
                    else f"the discriminator's logits have exceeded {saturated_logit:g} in "
                    f"absolute value for {saturated} steps (largest {logit:.4g}): its sigmoid "
                    "is saturated and its losses and accuracies are meaningless"
                )
                warnings.warn(
                    f"step {step}: training diverges: {what}. Lower the learning rate "
                    "(especially the discriminator's) or rescale the data.",
                    TrainingDivergesWarning,
                    stacklevel=2,
                )
            if _has_accuracies(stats):
                wins = min(stats[k] for k in _ACCURACY_KEYS) >= win_threshold
                streak = streak + 1 if wins else 0
                if streak >= win_window and not warned:
                    warned = True
                    warnings.warn(
                        f"step {step}: {_wins_message(objective, win_threshold, win_window)}",
                        DiscriminatorWinsWarning,
                        stacklevel=2,
                    )
            if progress:
                postfix = _postfix(loss, stats)
                for m in monitors:
                    postfix.update(m.postfix())
                bar.set_postfix(postfix, refresh=False)
            if checkpoint_every and (step + 1 - start) % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, svi, step=step + 1, history=history)
            if callback is not None and callback(step, loss, stats):
                break
            reason = _stop_reason(stop_when, monitors, settled_streak, patience, history)
            if reason:
                history["stopped"] = {"step": step, "reason": reason}
                break
    except BaseException as e:
        # the run so far is the caller's: never lose it with the exception
        try:
            e.history = history
        except AttributeError:  # exceptions with __slots__
            pass
        raise
    finally:
        bar.close()
    if checkpoint_path is not None and history["step"]:
        save_checkpoint(checkpoint_path, svi, step=history["step"][-1] + 1, history=history)
    return history


def _monitors(monitor, num_steps):
    from pyro_adv.convergence import Monitor, SmoothedLoss

    if monitor is None:
        return []
    if isinstance(monitor, str):
        if monitor != "default":
            raise ValueError(
                f"monitor must be a Monitor, a list, 'default' or None, got {monitor!r}"
            )
        return [SmoothedLoss(window=min(max(int(num_steps) // 20, 20), 200))]
    monitors = list(monitor) if isinstance(monitor, (list, tuple)) else [monitor]
    for m in monitors:
        if not isinstance(m, Monitor):
            raise TypeError(f"monitor: expected pyro_adv.convergence.Monitor objects, got {m!r}")
        m.reset()
    return monitors


def _stop_reason(stop_when, monitors, streak, patience, history):
    if stop_when is None:
        return None
    if stop_when == "converged":
        if all(n >= patience for n in streak):
            names = ", ".join(type(m).__name__ for m in monitors)
            return f"converged: {names} settled at {patience} consecutive checks"
        return None
    return "stop_when(history) returned True" if stop_when(history) else None


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
        if isinstance(values, list) and len(values) < n + 1:
            values.append(math.nan)


# ---------------------------------------------------------------- checkpoints
_STATE_KEYS = {
    "version",
    "objective",
    "step",
    "history",
    "extra",
    "params",
    "constraints",
    "optim",
    "discriminator_optim",
    "discriminator_optim_source",
    "discriminators",
    "guide_buffers",
    "modules",
    "averages",
    "rng",
}


def _class_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _constraint_name(constraint):
    # constraints cannot be stored weights-only; their repr is compared on load
    return repr(constraint)


def _params():
    """``{name: unconstrained tensor}``: the live tensors, through Pyro's public API."""
    return pyro.get_param_store().get_state()["params"]


def _constraints():
    return pyro.get_param_store().get_state()["constraints"]


def _buffers(module):
    return {name: b.detach().clone() for name, b in module.named_buffers()}


def _check_buffers(module, buffers, where):
    """Every saved buffer exists in ``module`` (or is registered and empty) with its shape."""
    live = dict(module.named_buffers())
    for name, value in buffers.items():
        if name in live:
            if live[name].shape != value.shape:
                raise CheckpointError(
                    f"{where}: buffer {name!r} has shape {tuple(live[name].shape)} but the "
                    f"checkpoint holds {tuple(value.shape)}; was it built the same way?"
                )
            continue
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            owner = None
        # a registered buffer that is still None (e.g. an unbuilt standardization)
        if owner is None or not hasattr(owner, leaf) or getattr(owner, leaf) is not None:
            raise CheckpointError(f"{where} has no buffer {name!r}; was it built the same way?")


def _set_buffers(module, buffers):
    live = dict(module.named_buffers())
    for name, value in buffers.items():
        if name in live:
            with torch.no_grad():
                live[name].copy_(value)
        else:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            setattr(owner, leaf, value.clone())  # nn.Module files it under its buffers


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


def _set_optim_state(optim, state):
    # PyroOptim.set_state only queues the state: it is applied when the optimizer of a
    # param is built. Forget the optimizers already built (after a step or an
    # evaluation of this SVI) so the saved state reaches every param. There is no
    # public API for this; tests/reliability/test_checkpoints.py breaks if it changes.
    for attr in ("optim_objs", "grad_clip"):
        if isinstance(getattr(optim, attr, None), dict):
            getattr(optim, attr).clear()
    optim.set_state(state)


def _dump(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(path, svi, step=None, history=None, modules=None, extra=None):
    r"""
    Saves everything needed to resume ``svi`` exactly to one file:

    * Pyro's param store (guide, model and discriminator parameters, in
      unconstrained space, from ``pyro.get_param_store().get_state()``, with the
      names of their constraints);
    * the optimizer state (``svi.optim.get_state()``, and that of the objective's
      ``discriminator_optim``);
    * the buffers of the objective's discriminators (their input
      standardization), of the guide if it is a module, and the ``state_dict``
      of each of ``modules``;
    * the objective's weight averages (:attr:`~pyro_adv.infer.AdversarialObjective.averages`),
      which the sampling networks use after training;
    * the torch, numpy and Python random states (and CUDA's, where present);
    * the objective's class, ``step``, ``history`` and ``extra`` (tensors,
      numbers, strings, lists, dicts only);
    * a SHA-256 digest of all of it, checked by :func:`load_checkpoint`.

    :param str path: file to write (written atomically).
    :param pyro.infer.SVI svi: the SVI object.
    :param int step: the number of steps done.
    :param dict history: the training history (see :func:`fit`).
    :param dict modules: name -> ``torch.nn.Module`` with state outside the param
        store.
    :param dict extra: anything else to keep.
    """
    objective = objective_of(svi)
    if hasattr(objective, "use_optimizer_of"):
        objective.use_optimizer_of(svi)
    discriminators = getattr(objective, "discriminators", None)
    state = {
        "version": CHECKPOINT_VERSION,
        "objective": _class_name(objective),
        "step": step,
        "history": history,
        "extra": extra,
        "params": {name: p.detach().clone() for name, p in _params().items()},
        "constraints": {name: _constraint_name(c) for name, c in _constraints().items()},
        "optim": _optim_state(svi.optim),
        "discriminator_optim": _optim_state(getattr(objective, "discriminator_optim", None)),
        "discriminator_optim_source": getattr(objective, "discriminator_optim_source", None),
        "discriminators": (
            {key: _buffers(m) for key, m in discriminators.items()}
            if discriminators is not None
            else {}
        ),
        "guide_buffers": _buffers(svi.guide) if isinstance(svi.guide, torch.nn.Module) else {},
        "modules": {name: m.state_dict() for name, m in (modules or {}).items()},
        "averages": _averages_state(objective),
        "rng": _rng_state(),
    }
    payload = _dump(state)
    outer = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    tmp = f"{path}.tmp"
    torch.save(outer, tmp)
    os.replace(tmp, path)


def _averages_state(objective):
    averages = getattr(objective, "averages", None)
    return None if averages is None else averages.state_dict()


def _check_averages(state, objective, params):
    if state is None:
        return
    averages = getattr(objective, "averages", None)
    if averages is None:
        raise CheckpointError(
            "the checkpoint has weight averages but the objective keeps none (ema_decay=None); "
            "build the objective as in the saved run"
        )
    if not isinstance(state, dict) or not isinstance(state.get("shadows"), dict):
        raise CheckpointError("malformed weight averages in the checkpoint")
    for name, shadow in state["shadows"].items():
        if name not in params or params[name].shape != shadow.shape:
            raise CheckpointError(
                f"the checkpoint's weight average of {name!r} matches no param of that shape"
            )


def _read(path, map_location):
    """The checked contents of a checkpoint file."""
    try:
        outer = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as a checkpoint (corrupted?): {e}") from e
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a pyro_adv checkpoint (version {CHECKPOINT_VERSION}); "
            "write one with pyro_adv.training.save_checkpoint"
        )
    if outer.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a pyro_adv checkpoint of version {outer.get('version')}, this is "
            f"version {CHECKPOINT_VERSION}"
        )
    payload = outer.get("payload")
    if not torch.is_tensor(payload) or payload.dtype != torch.uint8:
        raise CheckpointError(f"{path}: malformed checkpoint (no payload)")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise CheckpointError(
            f"{path} failed its integrity check (SHA-256 mismatch): the file is corrupted"
        )
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location=map_location)
    except Exception as e:
        raise CheckpointError(f"{path}: the checkpoint's contents cannot be read: {e}") from e
    if not isinstance(state, dict) or set(state) != _STATE_KEYS:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: malformed checkpoint (keys {keys})")
    return state


def _check_optim_state(state, names, what):
    if state is None:
        return
    if not isinstance(state, dict):
        raise CheckpointError(f"malformed {what} state in the checkpoint")
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise CheckpointError(f"the checkpoint's {what} state is for unknown params {unknown}")


def load_checkpoint(path, svi, *args, modules=None, restore_rng=True, map_location=None, **kwargs):
    r"""
    Restores a checkpoint written by :func:`save_checkpoint` into ``svi``, so
    that further ``svi.step`` calls continue the saved run exactly (same
    parameters, optimizer moments and random stream).

    Guides and discriminators are built lazily, on their first call. Pass the
    arguments of ``svi.step`` as ``*args, **kwargs``: they are used for one
    ``svi.evaluate_loss`` call that builds everything before the state is
    copied in (its randomness is undone by the restored random state). Every
    parameter of the checkpoint must then exist with the same shape and
    constraint, and nothing else may be in the param store.

    Everything is validated before anything is changed: the file's integrity
    (SHA-256), its keys, the objective's class, the names, shapes and constraints
    of the params, the discriminators' and guide's buffers, ``modules`` and the
    optimizer state. On :class:`CheckpointError` the param store, optimizers,
    modules and random state are as they were after building. The file is read
    with ``torch.load(weights_only=True)``.

    :param str path: checkpoint file.
    :param pyro.infer.SVI svi: an SVI object built like the saved one.
    :param dict modules: the modules passed to :func:`save_checkpoint`.
    :param bool restore_rng: restore the random states.
    :param map_location: passed to :func:`torch.load` (e.g. ``"cpu"``).
    :returns: dict with ``step``, ``history`` and ``extra``.
    :raises CheckpointError: (a ``ValueError``) for a corrupted or mismatched file.
    """
    state = _read(path, map_location)
    objective = objective_of(svi)
    if state["objective"] != _class_name(objective):
        raise CheckpointError(
            f"{path} was saved from a {state['objective']} run but svi's objective is a "
            f"{_class_name(objective)}"
        )
    if args or kwargs:
        svi.evaluate_loss(*args, **kwargs)
    hint = "pass svi.step's arguments to load_checkpoint so everything is built first"

    # ---- validate everything first
    params, constraints = _params(), _constraints()
    missing = sorted(set(state["params"]) - set(params))
    if missing:
        raise CheckpointError(f"the checkpoint has params {missing} that are not built yet; {hint}")
    unexpected = sorted(set(params) - set(state["params"]))
    if unexpected:
        raise CheckpointError(
            f"the param store has params {unexpected} that the checkpoint lacks; build the "
            "model and guide as in the saved run (clear the param store first)"
        )
    for name, value in state["params"].items():
        current = params[name]
        if current.shape != value.shape or current.dtype != value.dtype:
            raise CheckpointError(
                f"param {name!r} is {tuple(current.shape)} {current.dtype} but the checkpoint "
                f"holds {tuple(value.shape)} {value.dtype}; build the guide and model as in "
                "the saved run"
            )
        saved = state["constraints"].get(name)
        if saved != _constraint_name(constraints[name]):
            raise CheckpointError(
                f"param {name!r} has constraint {_constraint_name(constraints[name])} but the "
                f"checkpoint's was {saved}"
            )
    discriminators = getattr(objective, "discriminators", None)
    for key, buffers in state["discriminators"].items():
        if discriminators is None or key not in discriminators:
            raise CheckpointError(
                f"the checkpoint has discriminator {key!r} but the objective has not built "
                f"it; {hint}"
            )
        _check_buffers(discriminators[key], buffers, f"discriminator {key!r}")
    if state["guide_buffers"]:
        if not isinstance(svi.guide, torch.nn.Module):
            raise CheckpointError("the checkpoint has guide buffers but svi.guide is not a module")
        _check_buffers(svi.guide, state["guide_buffers"], "the guide")
    for name, saved in state["modules"].items():
        if modules is None or name not in modules:
            raise CheckpointError(f"the checkpoint has module {name!r}: pass it in modules=")
        live = modules[name].state_dict()
        if set(live) != set(saved) or any(live[k].shape != saved[k].shape for k in live):
            raise CheckpointError(f"module {name!r} does not match the checkpoint's state_dict")
    _check_optim_state(state["optim"], state["params"], "optimizer")
    if state["optim"] and svi.optim is None:
        raise CheckpointError("the checkpoint has optimizer state but svi has no optimizer")
    _check_optim_state(state["discriminator_optim"], state["params"], "discriminator_optim")
    source = state["discriminator_optim_source"]
    if state["discriminator_optim"] and getattr(objective, "discriminator_optim", None) is None:
        if source == "user":
            raise CheckpointError(
                "the checkpoint has the state of a discriminator_optim given to the objective; "
                "pass the same discriminator_optim to it"
            )
    _check_averages(state["averages"], objective, params)
    if restore_rng and not (isinstance(state["rng"], dict) and "torch" in state["rng"]):
        raise CheckpointError("malformed random state in the checkpoint")

    # ---- then change state
    with torch.no_grad():
        for name, value in state["params"].items():
            # in place: modules registered with pyro.module share these tensors
            params[name].copy_(value)
    for key, buffers in state["discriminators"].items():
        _set_buffers(discriminators[key], buffers)
    if state["guide_buffers"]:
        _set_buffers(svi.guide, state["guide_buffers"])
    for name, saved in state["modules"].items():
        modules[name].load_state_dict(saved)
    if state["optim"] is not None and svi.optim is not None:
        _set_optim_state(svi.optim, state["optim"])
    if state["discriminator_optim"] is not None or source is not None:
        if getattr(objective, "discriminator_optim", None) is None:
            if source == "default":
                objective._default_discriminator_optim()
            elif source == "svi":
                objective.use_optimizer_of(svi)
        if state["discriminator_optim"] is not None:
            _set_optim_state(objective.discriminator_optim, state["discriminator_optim"])
    if state["averages"] is not None:
        objective.averages.load_state_dict(state["averages"])
        objective.averages.rebind(params)
    if restore_rng:
        _set_rng_state(state["rng"])
    return {"step": state["step"], "history": state["history"], "extra": state["extra"]}
