"""The machinery shared by every adversarial objective.

One SVI step is one update of both players. An objective builds a single
surrogate whose gradient is the discriminator loss for discriminator parameters
and the generator (guide, model) loss for everything else: discriminator inputs
are detached on the discriminator path, and discriminator weights are detached
on the generator path. One ``backward()`` then serves both, and ``SVI``'s
optimizer updates both, since discriminators are registered in Pyro's param
store with :func:`pyro.module` under their own prefix.
"""

import functools
import math
import warnings
from typing import NamedTuple, Optional

import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer.elbo import ELBO

from pyro_adv.infer.checks import (
    NonFiniteLossError,
    StepChecks,
    check_positive_int,
)
from pyro_adv.infer.players import DiscriminatorPlayers
from pyro_adv.infer.stats import Deferred, StepStats
from pyro_adv.infer.util import DISCRIMINATOR_PREFIX, is_discriminator_param
from pyro_adv.nn.averaging import ParameterEMA, raw_weights

__all__ = [
    "AdversarialObjective",
    "StepLosses",
    "is_discriminator_param",
]


class StepLosses(NamedTuple):
    """
    What an objective's ``_losses`` returns for one evaluation: the reported loss
    (a tensor; for AVB the negative ELBO), the generator (guide/model) loss, the
    discriminator loss, a dict of statistics and, where the objective can estimate
    them, importance log-weights per particle (detached): ``log_weights`` and,
    for AVB, ``log_weights_unbounded`` (discriminator logits not clipped to the
    range they had on the discriminator's own training draws).
    """

    reported: torch.Tensor
    generator: torch.Tensor
    discriminator: torch.Tensor
    stats: dict
    log_weights: Optional[torch.Tensor] = None
    log_weights_unbounded: Optional[torch.Tensor] = None


class AdversarialObjective(DiscriminatorPlayers, StepChecks, ELBO):
    """
    Base class of :class:`TraceAVB_ELBO`, :class:`Trace_ALI` and :class:`Trace_GAN`.

    Subclasses implement :meth:`_losses`, which returns a :class:`StepLosses`: the
    reported loss (a tensor), the generator loss, the discriminator loss, a dict
    of statistics and, where they can be estimated, importance log-weights. The
    checks that guard each step (reuse, non-finite values, zero gradients) come
    from :class:`~pyro_adv.infer.checks.StepChecks`.

    **Reuse.** Discriminators are sized and input-standardized on the first step,
    so they belong to one problem. Each call compares the model, the guide, the
    sites they sample (names, event shapes, dtypes; the number of plate elements
    may change) and the param store with those of the previous call. On a
    different model, guide or set of sites the objective **rebuilds**: it drops its
    discriminators (and their params in the store), the guessed
    ``max_plate_nesting`` and any other state fixed on the first step, and warns
    :class:`~pyro_adv.infer.ObjectiveRebuiltWarning`. After :func:`pyro.clear_param_store` it
    rebuilds silently (that is how a fresh run starts). A discriminator given as
    a module instance (``discriminator=module``) is reused as it is; give a
    factory to get fresh ones. Two objectives whose discriminators would share
    param-store names are refused (``discriminator_prefix=`` tells them apart).

    **Gradients.** A guide or model parameter whose gradient is all zero (or
    missing) for :attr:`~pyro_adv.infer.checks.StepChecks.zero_grad_steps`
    consecutive steps gets one :class:`~pyro_adv.infer.ZeroGradientWarning`:
    something between it and the loss is not differentiable (``torch.poisson``,
    ``round``, a comparison).

    :param int num_particles: vectorized particles per step.
    :param int max_plate_nesting: bound on nested plates (guessed if omitted).
    :param bool vectorize_particles: passed to :class:`~pyro.infer.ELBO`.
    :param int discriminator_steps: discriminator updates per SVI step; the
        extra ``discriminator_steps - 1`` run before the joint update on fresh
        samples, with ``discriminator_optim`` (WGAN's ``n_critic``).
    :param pyro.optim.PyroOptim discriminator_optim: optimizer of the extra
        discriminator updates. By default a copy of the SVI optimizer's settings
        (same class, learning rates, decay and clipping; the discriminators' own
        per-parameter settings where the SVI optimizer has them), made when
        :func:`~pyro_adv.training.fit`, :func:`~pyro_adv.training.save_checkpoint`
        or :func:`~pyro_adv.training.load_checkpoint` first sees the SVI object,
        or by :meth:`use_optimizer_of`. A loop of bare ``svi.step`` calls that
        never shows the SVI object falls back to ``Adam(lr=1e-3, betas=(0.5, 0.9))``
        with a warning.
    :param str discriminator_prefix: prefix of the discriminators' names in the
        param store.
    :param float ema_decay: the largest decay of the exponential moving average
        of the trained guide/model parameters (not the discriminators') kept in
        :attr:`averages` (:class:`~pyro_adv.nn.averaging.ParameterEMA`); the
        sampling networks (``ImplicitEncoder``, ``MLPGenerator``, ``AutoImplicit``)
        sample with it outside training. ``None`` turns averaging off.
    """

    #: whether ``_losses`` should form importance log-weights (evaluations only:
    #: training steps skip that work)
    _weights_wanted = False

    #: what the two sides of the discriminator's game are, as in
    #: :mod:`~pyro_adv.infer.divergences`: ``p`` the target side (data, simulations,
    #: a reference), ``q`` the side being fitted (the model or the guide). Statistics
    #: name them so: ``discriminator_accuracy_p`` / ``discriminator_accuracy_q``.
    sides = {"p": "target samples", "q": "model or guide samples"}

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=True,
        discriminator_steps=1,
        discriminator_optim=None,
        discriminator_prefix=DISCRIMINATOR_PREFIX,
        ema_decay=0.999,
    ):
        owner = type(self).__name__
        num_particles = check_positive_int(num_particles, "num_particles", owner)
        discriminator_steps = check_positive_int(discriminator_steps, "discriminator_steps", owner)
        if discriminator_optim is not None and not callable(discriminator_optim):
            raise TypeError(
                f"{owner}: discriminator_optim must be a pyro.optim.PyroOptim, "
                f"got {discriminator_optim!r}"
            )
        if max_plate_nesting != float("inf") and (
            int(max_plate_nesting) != max_plate_nesting or max_plate_nesting < 0
        ):
            raise ValueError(
                f"{owner}: max_plate_nesting must be a non-negative integer, "
                f"got {max_plate_nesting!r}"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.discriminator_steps = discriminator_steps
        self.discriminator_optim = discriminator_optim
        #: where ``discriminator_optim`` came from: "user", "svi" (a copy of the SVI
        #: optimizer's settings), "default" or None (not built yet)
        self.discriminator_optim_source = "user" if discriminator_optim is not None else None
        self.discriminator_prefix = discriminator_prefix
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"{owner}: ema_decay must be in [0, 1) or None, got {ema_decay!r}")
        self.ema_decay = ema_decay
        #: the weight averages of the trained parameters (``None`` without averaging)
        self.averages = None if ema_decay is None else ParameterEMA(ema_decay)
        self.discriminators = torch.nn.ModuleDict()
        #: statistics of the latest step (losses, discriminator accuracy, estimates)
        self.stats = {}
        self._nesting_guessed = False
        self._logit_max = None
        self._hooks = []
        self._init_checks()

    # ---------------------------------------------------------------- interface
    def _get_trace(self, model, guide, args, kwargs):
        # Pyro's ELBO asks for this hook; adversarial objectives build their own traces.
        raise NotImplementedError(f"{type(self).__name__} builds its traces in _losses")

    def _losses(self, model, guide, args, kwargs):
        """Returns a :class:`StepLosses` for one evaluation."""
        raise NotImplementedError

    def _reset(self):
        """
        Forgets everything fixed on the first step: the discriminators (their params
        leave the param store too, or ``pyro.module`` would hand the old values to
        the new modules) and a guessed ``max_plate_nesting``. Subclasses extend it.
        """
        store = pyro.get_param_store()
        for key in list(self.discriminators):
            prefix = f"{self.discriminator_prefix}_{key}"
            for pname, _ in self.discriminators[key].named_parameters():
                full = pyro.params.param_with_module_name(prefix, pname)
                if full in store:
                    del store[full]
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.discriminators = torch.nn.ModuleDict()
        if self._nesting_guessed:
            # guessed for the previous problem; a given bound (and any room a subclass
            # added to it for its particles) stays
            self.max_plate_nesting = float("inf")
            self._nesting_guessed = False
        self.stats = {}
        self._reset_checks()
        if self.averages is not None:
            self.averages.reset()

    def _setup(self, model, guide, args, kwargs):
        """First-call set-up (again after a rebuild): the plate-nesting guess."""
        self.validate_options()
        if self.max_plate_nesting == float("inf"):
            with self._explaining(model, guide, args, kwargs):
                self._guess_max_plate_nesting(model, guide, args, kwargs)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Pyro's version scores the guide, which implicit sites refuse: read the plates only.
        with poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        self._check_traces(model_trace, guide_trace)
        dims = [
            frame.dim
            for trace in (model_trace, guide_trace)
            for site in trace.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.vectorized
        ]
        self.max_plate_nesting = -min(dims) if dims else 0
        if self.vectorize_particles and self.num_particles > 1:
            self.max_plate_nesting += 1
        self._nesting_guessed = True

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, model, guide, args, kwargs, num_particles=None):
        """
        One run of ``_losses`` without gradients and without training, with
        ``num_particles`` vectorized particles (the training setting if ``None``),
        e.g. for importance diagnostics; the training settings are restored after.
        A run trained with one particle had no particle plate, so the bound on
        plate nesting gets room for one.
        """
        with raw_weights():
            return self._evaluate_raw(model, guide, args, kwargs, num_particles)

    def _evaluate_raw(self, model, guide, args, kwargs, num_particles):
        self._prepare_evaluation(model, guide, args, kwargs)
        saved = self.num_particles, self.max_plate_nesting
        if num_particles is not None:
            num_particles = check_positive_int(num_particles, "num_samples", type(self).__name__)
            if self.vectorize_particles and self.num_particles == 1 and num_particles > 1:
                self.max_plate_nesting += 1
            self.num_particles = num_particles
        self._weights_wanted = True
        try:
            with torch.no_grad(), self._explaining(model, guide, args, kwargs):
                result = self._losses(model, guide, args, kwargs)
        finally:
            self.num_particles, self.max_plate_nesting = saved
            self._weights_wanted = False
        self._remember(model, guide, args, kwargs)
        return result

    def loss(self, model, guide, *args, **kwargs):
        """
        :returns: the objective's loss estimate (for AVB the negative ELBO) without
            computing gradients or updating anything.
        :rtype: float
        """
        with raw_weights():
            self._prepare_evaluation(model, guide, args, kwargs)
            with torch.no_grad(), self._explaining(model, guide, args, kwargs):
                reported, _, _, stats = self._losses(model, guide, args, kwargs)[:4]
        self.stats = stats
        self._remember(model, guide, args, kwargs)
        return reported.item()

    def _surrogate(self, model, guide, args, kwargs):
        """One training evaluation: ``(reported loss as a float, surrogate, stats, params)``."""
        if self.averages is not None:
            self.averages.update()  # the previous step's optimizer update
        self._prepare(model, guide, args, kwargs)
        self._extra_discriminator_updates(model, guide, args, kwargs)
        for module in self.discriminators.values():
            self.divergence_after_update(module)
        self._logit_max = None
        with (
            poutine.trace(param_only=True) as capture,
            self._explaining(model, guide, args, kwargs),
        ):
            reported, g_loss, d_loss, stats = self._losses(model, guide, args, kwargs)[:4]
        # one device read for the reported loss and both players' finiteness
        value = self._read_losses(reported, g_loss, d_loss)
        if self._logit_max is not None:
            if not isinstance(stats, StepStats):
                stats = StepStats(stats)
            stats["discriminator_max_abs_logit"] = Deferred(
                functools.partial(_max_abs, self._logit_max)
            )
        params = {
            name: site["value"].unconstrained()
            for name, site in capture.trace.nodes.items()
            if not is_discriminator_param(name, self.discriminator_prefix)
        }
        if self.averages is not None:
            self.averages.track(params)
        return value, g_loss + d_loss, stats, params

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        Computes the loss and, with one ``backward()``, the gradients of both
        players: the discriminator loss for discriminator parameters, the
        generator loss for guide and model parameters.

        :returns: the reported loss estimate (for AVB the negative ELBO).
        :rtype: float
        """
        with raw_weights():
            reported, surrogate, stats, params = self._surrogate(model, guide, args, kwargs)
        if surrogate.requires_grad:
            surrogate.backward()
        else:
            warnings.warn(f"{type(self).__name__}: nothing to train (no parameter got a gradient)")
        self._check_gradients(params)
        self.stats = stats
        self._remember(model, guide, args, kwargs)
        if math.isnan(reported):
            raise NonFiniteLossError(f"{type(self).__name__}: the reported loss is NaN")
        return reported

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """
        The training surrogate as a differentiable tensor, for custom training loops
        (as :meth:`pyro.infer.Trace_ELBO.differentiable_loss`)::

            loss = objective.differentiable_loss(model, guide, data)
            loss.backward()        # or pyro.infer.util.torch_backward(loss)
            optimizer.step()       # over guide, model and discriminator parameters

        For an adversarial objective this is **not** the reported loss: it is the
        generator loss plus the discriminator loss, built so that its gradient with
        respect to the discriminators' parameters is the discriminator loss's and
        with respect to everything else the generator loss's (each player's inputs
        or weights are detached on the other's path). Its value has no meaning of
        its own; read the estimate (for AVB the negative ELBO) from
        ``stats["loss"]``. Discriminators are built on the first call, so create
        the optimizer over the param store after it. With ``discriminator_steps >
        1`` the extra discriminator updates run inside this call.

        :rtype: torch.Tensor
        """
        with raw_weights():
            reported, surrogate, stats, _ = self._surrogate(model, guide, args, kwargs)
        self.stats = stats
        self._remember(model, guide, args, kwargs)
        return surrogate

    def __call__(self, model, guide, *args, **kwargs):
        """
        ``objective(model, guide, *args, **kwargs)`` is
        :meth:`differentiable_loss`: a loss tensor for a custom loop. (Pyro's
        ``ELBO(model, guide)`` without data returns a module instead; adversarial
        objectives take the data in the call.)
        """
        return self.differentiable_loss(model, guide, *args, **kwargs)

    # ---------------------------------------------------------------- defaults
    #: keyword arguments of :func:`~pyro_adv.optim.two_timescale_adam` for
    #: :meth:`default_optim` (each objective sets its own)
    default_optim_settings = {"lr": 1e-3}

    def default_optim(self, num_steps, **overrides):
        """
        The optimizer this objective trains best with by default
        (:func:`pyro_adv.optim.default_optimizer`: :attr:`default_optim_settings`,
        the rates decaying over ``num_steps``)::

            avb = TraceAVB_ELBO()
            svi = SVI(model, guide, avb.default_optim(num_steps), avb)

        :param int num_steps: the number of ``svi.step`` calls of the run.
        :param overrides: arguments of :func:`~pyro_adv.optim.two_timescale_adam`.
        """
        from pyro_adv.optim import default_optimizer

        return default_optimizer(self, num_steps, **overrides)


def _max_abs(outputs):
    """The largest absolute value over a list of tensors (one read when stats are read)."""
    return torch.stack([o.abs().max() for o in outputs]).max()
