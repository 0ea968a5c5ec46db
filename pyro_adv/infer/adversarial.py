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
    ObjectiveRebuiltWarning,
    StepChecks,
    check_positive_int,
)
from pyro_adv.infer.stats import Deferred, StepStats
from pyro_adv.infer.util import DISCRIMINATOR_PREFIX, is_discriminator_param, module_key
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


class AdversarialObjective(StepChecks, ELBO):
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

    # ------------------------------------------------------------------ players
    def discriminator(self, key, example, factory):
        """
        The discriminator ``key``, built by ``factory()`` and sized on ``example``
        the first time, and registered with :func:`pyro.module` on every call so
        ``SVI`` captures and updates its parameters. A non-finite ``example`` is
        refused before anything is fixed, naming the sites with non-finite values.
        """
        key = module_key(key)
        if key not in self.discriminators:
            self._build_discriminator(key, factory, example)
        module = self.discriminators[key]
        pairs = self._discriminator_params(key, module)
        if all(p.requires_grad for _, p in pairs):
            # what pyro.module does for them, without walking the module every step
            for full, p in pairs:
                pyro.param(full, p)
        else:  # pyro.module's own warnings for frozen parameters
            pyro.module(f"{self.discriminator_prefix}_{key}", module)
        return module

    def _build_discriminator(self, key, factory, example, probe=None):
        """
        Builds discriminator ``key`` from ``factory()``: ``module.initialize(example)``
        where it has one (lazy sizing and input standardization), else ``probe(module)``
        or ``module(example)`` without gradient.
        """
        key = module_key(key)
        store = pyro.get_param_store()
        prefix = f"{self.discriminator_prefix}_{key}"
        stale = [name for name in store.keys() if name.startswith(prefix + "$$$")]
        if stale:
            # pyro.module would hand the new module those tensors' values and train
            # them instead of it: replace them, and say so
            warnings.warn(
                f"{type(self).__name__}: the param store holds a discriminator '{prefix}' "
                "that is not this objective's (another objective's, from an earlier run "
                "without pyro.clear_param_store()); it is replaced by this objective's "
                "new discriminator, and the other objective will refuse to continue. Give "
                "each objective its own discriminator_prefix= to train both.",
                ObjectiveRebuiltWarning,
                stacklevel=5,
            )
            for name in stale:
                del store[name]
        example = example.detach()
        if not torch.isfinite(example).all():
            raise ValueError(
                f"{type(self).__name__}: the first inputs of discriminator '{key}' are not "
                f"finite{self._nonfinite_sites()}. Its input standardization would be "
                "fixed on them; remove or impute the non-finite values before training."
            )
        module = factory()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__}: the discriminator factory returned "
                f"{type(module).__name__} for '{key}'; it must return a torch.nn.Module"
            )
        if hasattr(module, "initialize"):
            module.initialize(example)
        elif probe is not None:
            with torch.no_grad():
                probe(module)
        else:
            with torch.no_grad():
                module(example)
        # the largest |logit| of each step, for fit's saturation check
        self._hooks.append(module.register_forward_hook(self._record_logits))
        self.discriminators[key] = module

    def _record_logits(self, module, inputs, output):
        # kept for the step's statistics; |max| is only formed if they are read
        if torch.is_tensor(output) and output.numel():
            if self._logit_max is None:
                self._logit_max = []
            self._logit_max.append(output.detach())

    @staticmethod
    def frozen(module):
        """
        ``module`` with its parameters detached: gradients reach its inputs only. (Its
        parameters stop requiring gradients for the duration of the call, which
        records no graph edge to them; the same values and input gradients as a
        ``torch.func.functional_call`` with detached parameters, with less overhead.)
        """
        params = [p for p in module.parameters() if p.requires_grad]

        def call(*inputs):
            for p in params:
                p.requires_grad_(False)
            try:
                return module(*inputs)
            finally:
                for p in params:
                    p.requires_grad_(True)

        return call

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

    # ------------------------------------------------------- extra discriminator steps
    def use_optimizer_of(self, svi_or_optim):
        """
        Builds the optimizer of the extra discriminator updates
        (``discriminator_steps > 1``) as a copy of the settings of ``svi.optim``
        (same optimizer class, arguments, per-parameter callable and clipping),
        unless one was given or built already. :func:`~pyro_adv.training.fit` and
        the checkpoint functions call it.

        :param svi_or_optim: a :class:`pyro.infer.SVI` or a :class:`pyro.optim.PyroOptim`.
        """
        if self.discriminator_optim is not None or self.discriminator_steps == 1:
            return self.discriminator_optim
        from pyro_adv.distributed import DistributedOptimizer
        from pyro_adv.optim import ForeachOptim

        # classes whose settings are their constructor's arguments, so a copy is faithful
        copyable = (pyro.optim.PyroOptim, ForeachOptim)
        optim = getattr(svi_or_optim, "optim", svi_or_optim)
        if isinstance(optim, DistributedOptimizer) and type(optim.optim) in copyable:
            # data-parallel: the discriminators' extra updates must average over ranks too
            self.discriminator_optim = optim.copy()
            self.discriminator_optim_source = "svi"
        elif type(optim) in copyable:
            self.discriminator_optim = type(optim)(
                optim.pt_optim_constructor, optim.pt_optim_args, optim.pt_clip_args
            )
            self.discriminator_optim_source = "svi"
        else:
            # e.g. a learning-rate scheduler, whose settings cannot be copied faithfully
            self._default_discriminator_optim(
                f"the SVI optimizer ({type(optim).__name__}) cannot be copied"
            )
        return self.discriminator_optim

    def _default_discriminator_optim(self, why=None):
        """Builds the fallback optimizer; warns ``why`` it is used (unless ``None``)."""
        self.discriminator_optim = pyro.optim.Adam({"lr": 1e-3, "betas": (0.5, 0.9)})
        self.discriminator_optim_source = "default"
        if why is None:
            return
        warnings.warn(
            f"{type(self).__name__}: the extra discriminator updates use "
            f"Adam(lr=1e-3, betas=(0.5, 0.9)) because {why}; pass discriminator_optim=, "
            "train with pyro_adv.training.fit, or call objective.use_optimizer_of(svi)",
            stacklevel=4,
        )

    def _extra_discriminator_updates(self, model, guide, args, kwargs):
        if self.discriminator_steps == 1 or not len(self.discriminators):
            return
        if self.discriminator_optim is None:
            self._default_discriminator_optim("the SVI optimizer was never shown to it")
        optim = self._distributed_discriminator_optim()
        for _ in range(self.discriminator_steps - 1):
            with pyro.poutine.trace(param_only=True) as capture:
                d_loss = self._losses(model, guide, args, kwargs).discriminator
            self._check_finite("discriminator loss", d_loss)
            params = {
                site["value"].unconstrained()
                for name, site in capture.trace.nodes.items()
                if is_discriminator_param(name, self.discriminator_prefix)
            }
            others = {
                site["value"].unconstrained()
                for name, site in capture.trace.nodes.items()
                if not is_discriminator_param(name, self.discriminator_prefix)
            }
            d_loss.backward()
            optim(params)
            pyro.infer.util.zero_grads(params | others)
            for module in self.discriminators.values():
                self.divergence_after_update(module)

    def _distributed_discriminator_optim(self):
        """
        The optimizer of the extra discriminator updates; under data-parallel
        training (a process group of several ranks) one that averages the
        discriminators' gradients over the ranks, whatever optimizer was given: an
        un-averaged discriminator would drift apart on every rank.
        """
        from pyro_adv.distributed import DistributedOptimizer, is_distributed

        optim = self.discriminator_optim
        if not is_distributed() or isinstance(optim, DistributedOptimizer):
            return optim
        wrapped = getattr(self, "_distributed_optim", None)
        if wrapped is None or wrapped.optim is not optim:
            wrapped = self._distributed_optim = DistributedOptimizer(optim)
        return wrapped

    def divergence_after_update(self, module):
        """Hook for divergences that constrain the discriminator (weight clipping)."""
        divergence = getattr(self, "divergence", None)
        if divergence is not None:
            divergence.after_update(module)

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
