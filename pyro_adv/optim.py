"""
Optimizers for two-player training through Pyro's per-parameter interface.

Pyro's :class:`~pyro.optim.PyroOptim` keeps one torch optimizer per parameter
and steps them one by one: a network of a dozen weight tensors costs a dozen
optimizer steps, each with its Python overhead, which is a large part of a
small model's SVI step. :class:`ForeachOptim` keeps exactly the same per-parameter
optimizers and state (so checkpoints, :meth:`~pyro.optim.PyroOptim.get_state` /
``set_state`` and :class:`~pyro_adv.distributed.DistributedOptimizer` see what
they see with Pyro's) but performs one step for all parameters with the same
settings with PyTorch's multi-tensor (``foreach``) kernels.
"""

import math

import pyro
import pyro.optim
import torch
from pyro.optim.clipped_adam import ClippedAdam as _ClippedAdam
from torch.optim.adam import adam as _adam

from pyro_adv.infer.util import DISCRIMINATOR_PREFIX, is_discriminator_param

__all__ = ["ForeachOptim", "default_optimizer", "foreach_adam", "two_timescale_adam"]


class ForeachOptim(pyro.optim.PyroOptim):
    r"""
    A :class:`~pyro.optim.PyroOptim` that updates all the parameters it is given
    in one multi-tensor step per group of equal settings (PyTorch's ``foreach``
    kernels), instead of one optimizer step per parameter. Per-parameter settings
    (a callable ``optim_args``), gradient clipping, the optimizer state of each
    parameter and its format (:meth:`get_state`, :meth:`set_state`) are Pyro's,
    and the update is the same arithmetic as the per-parameter one: on the CPU the
    parameters are bit-identical after any number of steps.

    It fuses :class:`torch.optim.Adam` (without ``amsgrad``, tensor learning rates,
    ``capturable``/``differentiable``; with ``fused=True`` in one call of torch's
    fused kernel, several times faster on small parameters, bit-identical to
    Pyro's per-parameter Adam with ``fused=True``) and Pyro's
    :class:`~pyro.optim.ClippedAdam` (without ``weight_decay`` or
    ``centered_variance``); any other optimizer, and those options, are stepped one
    parameter at a time as :class:`~pyro.optim.PyroOptim` does. Learning-rate
    schedulers are not supported (wrap a plain ``pyro.optim`` optimizer in Pyro's
    scheduler instead).

    Example::

        svi = SVI(model, guide, foreach_adam({"lr": 1e-3}), TraceAVB_ELBO())

    :param optim_constructor: a ``torch.optim.Optimizer`` class, as for
        :class:`~pyro.optim.PyroOptim`.
    :param optim_args: its arguments, or a callable ``name -> dict``.
    :param clip_args: Pyro's gradient clipping arguments (``clip_norm`` /
        ``clip_value``), or a callable.
    """

    def __init__(self, optim_constructor, optim_args, clip_args=None):
        if isinstance(optim_constructor, type) and issubclass(
            optim_constructor, torch.optim.lr_scheduler.LRScheduler
        ):
            raise TypeError(
                "ForeachOptim steps plain optimizers; use pyro.optim's schedulers for "
                f"{optim_constructor.__name__}"
            )
        super().__init__(optim_constructor, optim_args, clip_args)

    def __call__(self, params, *args, **kwargs):
        """
        One step of every parameter in ``params`` that has a gradient (parameters
        without one are skipped, as by the per-parameter optimizers).
        """
        if args or kwargs:  # a closure: the per-parameter semantics
            return super().__call__(params, *args, **kwargs)
        adam, clipped = {}, {}
        for p in params:
            optimizer = self.optim_objs.get(p)
            if optimizer is None:
                # the per-parameter optimizer, its clipping and any queued state, as Pyro does
                optimizer = self.optim_objs[p] = self._get_optim(p)
                self.grad_clip[p] = self._get_grad_clip(p)
                name = pyro.get_param_store().param_name(p)
                state = self._state_waiting_to_be_consumed.pop(name, None)
                if state is not None:
                    pyro.optim.optim._load_state_dict(optimizer, state)
            if self.grad_clip[p] is not None:
                self.grad_clip[p](p)
            kind = type(optimizer)
            group = optimizer.param_groups[0]
            if kind is torch.optim.Adam and _adam_fusable(group):
                if p.grad is not None:
                    key = _adam_key(group, p)
                    adam.setdefault(key, (optimizer, group, []))[2].append(optimizer)
            elif kind is _ClippedAdam and _clipped_fusable(group):
                # ClippedAdam decays the rate of each group on every step, grad or not
                group["lr"] *= group["lrd"]
                if p.grad is not None:
                    key = (p.device, p.dtype, group["lr"], group["betas"], group["eps"])
                    clipped.setdefault(key, []).append((p, optimizer, group))
            else:
                optimizer.step()
        for first, group, optimizers in adam.values():
            _adam_step(first, group, optimizers)
        for entries in clipped.values():
            _clipped_adam_step(entries)


def _adam_fusable(group):
    # fused=True (torch's one-kernel Adam) is stepped in one call too, as fused
    return (
        not group["amsgrad"]
        and not group["capturable"]
        and not group["differentiable"]
        and not torch.is_tensor(group["lr"])
        and not any(torch.is_tensor(b) for b in group["betas"])
    )


def _adam_key(group, p):
    return (
        p.device,
        p.dtype,
        group["lr"],
        tuple(group["betas"]),
        group["eps"],
        group["weight_decay"],
        group["maximize"],
        group.get("decoupled_weight_decay", False),
        bool(group["fused"]),
    )


def _adam_step(first, group, optimizers):
    """One multi-tensor Adam update of the (single) parameter of each optimizer."""
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
    has_complex = False
    for optimizer in optimizers:
        # torch's own lazy state initialization, into each parameter's own optimizer
        has_complex |= optimizer._init_group(
            optimizer.param_groups[0], params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
        )
    beta1, beta2 = group["betas"]
    fused = bool(group["fused"])
    with torch.no_grad():
        _adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            # torch's fused kernel where the parameters' optimizers ask for it (the
            # same per-element arithmetic as their own fused steps), else foreach
            foreach=not fused,
            capturable=False,
            differentiable=False,
            fused=fused,
            has_complex=has_complex,
            decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


def _clipped_fusable(group):
    return group["weight_decay"] == 0 and not group["centered_variance"]


def _clipped_adam_step(entries):
    """
    Pyro's :class:`~pyro.optim.ClippedAdam` update (clamp, moments, bias-corrected
    step) for several parameters with equal settings, in the same order of
    operations as its per-parameter loop.
    """
    params, grads, exp_avgs, exp_avg_sqs, step_sizes = [], [], [], [], []
    with torch.no_grad():
        for p, optimizer, group in entries:
            grad = p.grad.data
            if math.isfinite(group["clip_norm"]):
                # an infinite clamp leaves every value (NaN and inf included) as it is
                grad.clamp_(-group["clip_norm"], group["clip_norm"])
            state = optimizer.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(grad)
                state["exp_avg_sq"] = torch.zeros_like(grad)
            state["step"] += 1
            beta1, beta2 = group["betas"]
            bias_correction1 = 1 - beta1 ** state["step"]
            bias_correction2 = 1 - beta2 ** state["step"]
            step_sizes.append(-(group["lr"] * math.sqrt(bias_correction2) / bias_correction1))
            params.append(p.data)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


def foreach_adam(optim_args, clip_args=None):
    """
    :class:`pyro.optim.Adam` with one multi-tensor update of all parameters per step
    (:class:`ForeachOptim` of :class:`torch.optim.Adam`): the same state, settings and
    results, less Python overhead per parameter::

        svi = SVI(model, guide, foreach_adam({"lr": 1e-3}), TraceAVB_ELBO())

    :param optim_args: Adam's arguments, or a callable ``name -> dict`` (Pyro's
        per-parameter form).
    :param clip_args: Pyro's gradient clipping arguments, or a callable.
    """
    return ForeachOptim(torch.optim.Adam, optim_args, clip_args)


def two_timescale_adam(
    lr,
    discriminator_lr=None,
    num_steps=None,
    decay=1.0,
    decay_discriminator=True,
    betas=(0.9, 0.999),
    clip_norm=None,
    prefix=DISCRIMINATOR_PREFIX,
    foreach=True,
):
    r"""
    Adam with one learning rate for the discriminator and one for everything else
    (guide, model, generator): the two time-scale update rule (Heusel et al. 2017),
    optionally decayed geometrically to ``decay`` times its initial value over
    ``num_steps``. It is a :class:`pyro.optim.ClippedAdam` built with Pyro's
    per-parameter callable, so ``SVI`` uses it as any Pyro optimizer::

        optim = two_timescale_adam(5e-3, discriminator_lr=1e-2, num_steps=2000, decay=0.05)
        svi = SVI(model, guide, optim, TraceAVB_ELBO())

    ``ClippedAdam`` clamps every gradient element at 10 by default. A subsampled
    ELBO is scaled by ``N / batch_size``, so that clamp would act everywhere and
    turn Adam into a biased sign-SGD; here there is no clamp unless ``clip_norm``
    is given.

    :param float lr: learning rate of the guide/model/generator parameters.
    :param float discriminator_lr: learning rate of the discriminators (``lr`` if omitted).
    :param int num_steps: length of the run over which ``decay`` is reached.
    :param float decay: final learning rate as a fraction of the initial one.
    :param bool decay_discriminator: decay the discriminator's rate too.
    :param tuple betas: Adam's betas for both players.
    :param float clip_norm: clamp gradient elements to ``[-clip_norm, clip_norm]``.
    :param str prefix: param-store prefix of the discriminators.
    :param bool foreach: step all parameters of a player in one multi-tensor update
        (:class:`ForeachOptim`; the same arithmetic and state, less overhead) rather
        than one ``ClippedAdam`` step per parameter.
    """
    if lr <= 0 or (discriminator_lr is not None and discriminator_lr <= 0):
        raise ValueError(f"learning rates must be positive, got {lr} and {discriminator_lr}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if decay != 1.0 and not num_steps:
        raise ValueError("decay needs num_steps, the length of the run")
    step_decay = decay ** (1.0 / num_steps) if num_steps else 1.0
    discriminator_lr = lr if discriminator_lr is None else discriminator_lr
    clip = float("inf") if clip_norm is None else float(clip_norm)

    def per_param(name):
        if is_discriminator_param(name, prefix):
            lrd = step_decay if decay_discriminator else 1.0
            return {"lr": discriminator_lr, "lrd": lrd, "betas": betas, "clip_norm": clip}
        return {"lr": lr, "lrd": step_decay, "betas": betas, "clip_norm": clip}

    if foreach:
        return ForeachOptim(_ClippedAdam, per_param)
    return pyro.optim.ClippedAdam(per_param)


def default_optimizer(objective, num_steps, **overrides):
    r"""
    The optimizer an adversarial objective trains best with by default: its
    :attr:`default_optim_settings` passed to :func:`two_timescale_adam`, the rates
    decaying over ``num_steps`` (the length of the run). The same as
    ``objective.default_optim(num_steps)``::

        avb = TraceAVB_ELBO()
        svi = SVI(model, guide, avb.default_optim(num_steps=2000), avb)

    The settings are the lessons of the tuned benchmark runs that are not specific
    to one model, checked on targets no test was tuned on
    (``benchmarks/new_user.py``, ``benchmarks/robustness.py``): a discriminator
    2-8 times faster than the guide or generator (two time-scale updates, Heusel et
    al. 2017), the rates decayed over the run so the game settles (20-fold; the GAN
    and ALI discriminators keep their rate, so that they keep up with the guide),
    GAN momentum (``beta1 = 0.5``) for ALI and GANs, and no gradient clamp.

    :param objective: a :class:`~pyro_adv.infer.TraceAVB_ELBO`,
        :class:`~pyro_adv.infer.Trace_ALI` or :class:`~pyro_adv.infer.Trace_GAN`.
    :param int num_steps: the number of ``svi.step`` calls of the run.
    :param overrides: any argument of :func:`two_timescale_adam` (``lr=``,
        ``discriminator_lr=``, ``decay=``, ...).
    :rtype: ForeachOptim (of Pyro's ClippedAdam)
    """
    settings = getattr(objective, "default_optim_settings", None)
    if settings is None:
        raise TypeError(
            f"default_optimizer: {type(objective).__name__} has no default_optim_settings; "
            "pass an adversarial objective (TraceAVB_ELBO, Trace_ALI, Trace_GAN)"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(
            f"default_optimizer: num_steps must be a positive integer, got {num_steps!r}"
        )
    kwargs = dict(settings)
    kwargs.update(overrides)
    kwargs.setdefault("prefix", getattr(objective, "discriminator_prefix", DISCRIMINATOR_PREFIX))
    return two_timescale_adam(num_steps=num_steps, **kwargs)
