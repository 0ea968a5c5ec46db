"""Optimizer settings for two-player training through Pyro's per-parameter callable."""

import pyro.optim

from pyro_adv.infer.util import DISCRIMINATOR_PREFIX, is_discriminator_param

__all__ = ["default_optimizer", "two_timescale_adam"]


def two_timescale_adam(
    lr,
    discriminator_lr=None,
    num_steps=None,
    decay=1.0,
    decay_discriminator=True,
    betas=(0.9, 0.999),
    clip_norm=None,
    prefix=DISCRIMINATOR_PREFIX,
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
    (``benchmarks/new_user.py``): a discriminator 2-4 times faster than the
    guide or generator (two time-scale updates, Heusel et al. 2017), both rates
    decayed over the run so the game settles (20-fold; the GAN discriminator keeps
    its rate), GAN momentum (``beta1 = 0.5``) for ALI and GANs, and no gradient
    clamp.

    :param objective: a :class:`~pyro_adv.infer.TraceAVB_ELBO`,
        :class:`~pyro_adv.infer.Trace_ALI` or :class:`~pyro_adv.infer.Trace_GAN`.
    :param int num_steps: the number of ``svi.step`` calls of the run.
    :param overrides: any argument of :func:`two_timescale_adam` (``lr=``,
        ``discriminator_lr=``, ``decay=``, ...).
    :rtype: pyro.optim.ClippedAdam
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
