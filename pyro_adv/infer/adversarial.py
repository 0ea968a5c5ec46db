"""The machinery shared by every adversarial objective.

One SVI step is one update of both players. An objective builds a single
surrogate whose gradient is the discriminator loss for discriminator parameters
and the generator (guide, model) loss for everything else: discriminator inputs
are detached on the discriminator path, and discriminator weights are detached
on the generator path. One ``backward()`` then serves both, and ``SVI``'s
optimizer updates both, since discriminators are registered in Pyro's param
store with :func:`pyro.module` under their own prefix.
"""

import contextlib
import functools
import inspect
import math
import warnings

import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer.elbo import ELBO
from pyro.poutine.util import site_is_subsample
from torch.func import functional_call

from pyro_adv.nn.averaging import ParameterEMA, raw_weights

__all__ = [
    "AdversarialObjective",
    "NonFiniteLossError",
    "ObjectiveMismatchWarning",
    "ObjectiveRebuiltWarning",
    "ZeroGradientWarning",
    "check_discriminator_spec",
    "check_positive_int",
    "is_discriminator_param",
]

#: Default prefix of discriminator modules in the param store.
DISCRIMINATOR_PREFIX = "discriminator"


class NonFiniteLossError(FloatingPointError):
    """A player's loss became NaN or infinite during adversarial training."""


class ObjectiveMismatchWarning(UserWarning):
    """An objective is used on a different model, guide or set of sites than before."""


class ObjectiveRebuiltWarning(ObjectiveMismatchWarning):
    """An objective was trained on a different model, guide or set of sites and rebuilt."""


class ZeroGradientWarning(UserWarning):
    """A parameter that should learn got an all-zero (or no) gradient for many steps."""


def check_positive_int(value, name, owner):
    """
    Validates an option that must be a positive integer (``2.5``, ``0`` and ``-1``
    are refused rather than silently truncated) and returns it as an ``int``.

    :param value: the option's value.
    :param str name: the option's name, for the message.
    :param str owner: the class or function that takes it, for the message.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or int(value) != value
        or value < 1
    ):
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_discriminator_spec(spec, owner):
    """
    Validates a ``discriminator=`` option: ``None``, an ``nn.Module`` or a factory
    ``key -> nn.Module``.
    """
    if not (spec is None or callable(spec)):
        raise TypeError(
            f"{owner}: discriminator must be None, an nn.Module or a factory "
            f"key -> nn.Module, got {spec!r}"
        )
    return spec


def _unwrapped(fn):
    """The user's function behind Pyro handlers, partials and wrappers (``__wrapped__``)."""
    seen = set()
    while id(fn) not in seen:
        seen.add(id(fn))
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif getattr(fn, "__wrapped__", None) is not None:
            fn = fn.__wrapped__
        else:
            break
    return fn


def _identity(fn):
    """
    What makes a model or guide the same one: the object itself, except that
    closures made by the same factory over the same objects (``amortized_guide(encoder)``
    called twice, once for training and once for diagnostics) count as one.
    """
    fn = _unwrapped(fn)
    if inspect.ismethod(fn):
        return ("method", fn.__func__, id(fn.__self__))
    if inspect.isfunction(fn) and fn.__closure__:
        cells = []
        for cell in fn.__closure__:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                value = None
            small = value is None or isinstance(value, (bool, int, float, str))
            cells.append(value if small else ("id", id(value)))
        return ("closure", fn.__code__, tuple(cells))
    return ("object", id(fn))


def _arg_key(args, kwargs):
    """A cheap description of a call's arguments: tensor shapes and small values."""

    def describe(value):
        if torch.is_tensor(value):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return type(value).__name__

    return (
        tuple(describe(a) for a in args),
        tuple(sorted((k, describe(v)) for k, v in kwargs.items())),
    )


def _site_signature(trace, tag):
    """
    Names, roles, dtypes and shapes of a trace's sample sites, with each plate dim
    written as its plate's name: a different number of plate elements (a smaller
    last minibatch) is the same problem, a different event shape is not.
    """
    signature = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        value = site["value"]
        event_dim = getattr(site["fn"], "event_dim", 0)
        shape = tuple(value.shape) if torch.is_tensor(value) else ()
        batch_ndim = len(shape) - event_dim
        plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
        dims = tuple(
            plates.get(i - batch_ndim, size) if i < batch_ndim else size
            for i, size in enumerate(shape)
        )
        dtype = value.dtype if torch.is_tensor(value) else type(value)
        signature.append((tag, name, bool(site["is_observed"]), event_dim, dims, dtype))
    return tuple(signature)


def is_discriminator_param(name, prefix=DISCRIMINATOR_PREFIX):
    """
    Whether a param-store name belongs to a discriminator, for per-player
    optimizer settings through Pyro's per-parameter callable::

        def per_param(name):
            return {"lr": 1e-3 if is_discriminator_param(name) else 3e-4}
        svi = SVI(model, guide, pyro.optim.Adam(per_param), loss=TraceAVB_ELBO())
    """
    return name.startswith(prefix)


class AdversarialObjective(ELBO):
    """
    Base class of :class:`TraceAVB_ELBO`, :class:`Trace_ALI` and :class:`Trace_GAN`.

    Subclasses implement :meth:`_losses`, which returns the reported loss (a
    tensor), the generator loss, the discriminator loss and a dict of statistics.

    **Reuse.** Discriminators are sized and input-standardized on the first step,
    so they belong to one problem. Each call compares the model, the guide, the
    sites they sample (names, event shapes, dtypes; the number of plate elements
    may change) and the param store with those of the previous call. On a
    different model, guide or set of sites the objective **rebuilds**: it drops its
    discriminators (and their params in the store), the guessed
    ``max_plate_nesting`` and any other state fixed on the first step, and warns
    :class:`ObjectiveRebuiltWarning`. After :func:`pyro.clear_param_store` it
    rebuilds silently (that is how a fresh run starts). A discriminator given as
    a module instance (``discriminator=module``) is reused as it is; give a
    factory to get fresh ones. Two objectives whose discriminators would share
    param-store names are refused (``discriminator_prefix=`` tells them apart).

    **Gradients.** A guide or model parameter whose gradient is all zero (or
    missing) for :attr:`zero_grad_steps` consecutive steps gets one
    :class:`ZeroGradientWarning`: something between it and the loss is not
    differentiable (``torch.poisson``, ``round``, a comparison).

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

    #: consecutive steps of all-zero gradient before :class:`ZeroGradientWarning`
    zero_grad_steps = 100

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
        self._problem = None  # what the discriminators were built for (see _prepare)
        self._call = None  # (model, guide, args, kwargs) of the call in progress
        self._zero_grad_streak = {}
        self._zero_grad_warned = set()
        self._logit_max = None
        self._hooks = []
        self._evaluating = False

    # ------------------------------------------------------------------ players
    def discriminator(self, key, example, factory):
        """
        The discriminator ``key``, built by ``factory()`` and sized on ``example``
        the first time, and registered with :func:`pyro.module` on every call so
        ``SVI`` captures and updates its parameters. A non-finite ``example`` is
        refused before anything is fixed, naming the sites with non-finite values.
        """
        if key not in self.discriminators:
            self._build_discriminator(key, factory, example)
        module = self.discriminators[key]
        pyro.module(f"{self.discriminator_prefix}_{key}", module)
        return module

    def _build_discriminator(self, key, factory, example, probe=None):
        """
        Builds discriminator ``key`` from ``factory()``: ``module.initialize(example)``
        where it has one (lazy sizing and input standardization), else ``probe(module)``
        or ``module(example)`` without gradient.
        """
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
        if torch.is_tensor(output) and output.numel():
            value = output.detach().abs().max().item()
            self._logit_max = value if self._logit_max is None else max(self._logit_max, value)

    def _nonfinite_sites(self):
        """`` (site 'x' has NaN or inf values)`` for the call in progress, or ``""``."""
        if self._call is None:
            return ""
        model, guide, args, kwargs = self._call
        names = []
        try:
            for trace in self._quiet_traces(model, guide, args, kwargs):
                for name, site in trace.nodes.items():
                    value = site.get("value")
                    if (
                        site["type"] == "sample"
                        and torch.is_tensor(value)
                        and value.is_floating_point()
                        and not torch.isfinite(value).all()
                        and name not in names
                    ):
                        names.append(name)
        except Exception:  # the diagnosis must not hide the original problem
            return ""
        if not names:
            return ""
        listed = ", ".join(f"'{n}'" for n in names)
        if len(names) == 1:
            return f" (site {listed} has NaN or inf values)"
        return f" (sites {listed} have NaN or inf values)"

    @staticmethod
    def frozen(module):
        """``module`` with its parameters detached: gradients reach its inputs only."""
        params = {name: p.detach() for name, p in module.named_parameters()}
        return lambda *inputs: functional_call(module, params, inputs)

    def _check_finite(self, what, value):
        if not torch.isfinite(value).all():
            culprit = self._nonfinite_sites()
            if culprit:
                advice = f"The inputs are not finite{culprit}; fix the data or the simulator"
            else:
                advice = "Lower the learning rate, rescale the data, or choose a bounded divergence"
            raise NonFiniteLossError(
                f"{type(self).__name__}: the {what} is {value.item()}. {advice}; "
                f"last finite statistics: {self.stats}"
            )

    # ---------------------------------------------------------------- interface
    def _get_trace(self, model, guide, args, kwargs):
        # Pyro's ELBO asks for this hook; adversarial objectives build their own traces.
        raise NotImplementedError(f"{type(self).__name__} builds its traces in _losses")

    def _losses(self, model, guide, args, kwargs):
        """Returns ``(reported_loss, generator_loss, discriminator_loss, stats)``."""
        raise NotImplementedError

    def _quiet_traces(self, model, guide, args, kwargs):
        """
        A guide trace and the model replayed on it, outside the training's random
        stream (the random state is restored) and hidden from outer handlers.
        """
        with torch.random.fork_rng(devices=[]), poutine.block(), raw_weights():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        return guide_trace, model_trace

    def _problem_signature(self, model, guide, args, kwargs):
        """The sites of a call (see :func:`_site_signature`), or ``None`` if untraceable."""
        try:
            guide_trace, model_trace = self._quiet_traces(model, guide, args, kwargs)
        except Exception:
            # a model that only runs inside the objective (e.g. vectorized): the step
            # itself reports its errors, and reuse is judged on identities alone
            return None
        return _site_signature(guide_trace, "guide") + _site_signature(model_trace, "model")

    def _check_traces(self, model_trace, guide_trace, cause=None):
        """
        Clear errors for problems that would otherwise fail deep inside a step:
        empty observations, and guide sites whose event shape differs from the
        model's (a missing ``.to_event``).
        """
        name = type(self).__name__
        for site_name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            value = site["value"]
            if site["is_observed"] and torch.is_tensor(value) and value.numel() == 0:
                raise ValueError(
                    f"{name}: observed site '{site_name}' is empty (shape "
                    f"{tuple(value.shape)}); pass at least one observation"
                ) from cause
            guide_site = guide_trace.nodes.get(site_name)
            if site["is_observed"] or guide_site is None or guide_site["type"] != "sample":
                continue
            model_event = tuple(getattr(site["fn"], "event_shape", ()))
            guide_event = tuple(getattr(guide_site["fn"], "event_shape", ()))
            if model_event != guide_event:
                raise ValueError(
                    f"{name}: shapes disagree at site '{site_name}': the guide's distribution "
                    f"has event shape {guide_event} (batch shape "
                    f"{tuple(guide_site['fn'].batch_shape)}) but "
                    f"the model's has event shape {model_event}; declare the same event "
                    f"dims in the guide (e.g. .to_event({len(model_event)}))"
                ) from cause

    @contextlib.contextmanager
    def _explaining(self, model, guide, args, kwargs):
        """
        Turns an error raised deep inside a step into a clear one where the cause is
        known (empty data, a guide event shape that differs from the model's); other
        errors pass unchanged.
        """
        try:
            yield
        except NonFiniteLossError:
            raise
        except Exception as error:
            self._explain(error, model, guide, args, kwargs)
            raise

    def _explain(self, error, model, guide, args, kwargs):
        name = type(self).__name__
        for where, value in list(enumerate(args)) + list(kwargs.items()):
            if torch.is_tensor(value) and value.numel() == 0:
                label = f"argument {where}" if isinstance(where, int) else f"argument {where}="
                raise ValueError(
                    f"{name}: {label} is empty (shape {tuple(value.shape)}); "
                    "pass at least one observation"
                ) from error
        try:
            guide_trace, model_trace = self._quiet_traces(model, guide, args, kwargs)
        except Exception:  # the model itself fails: its own error is the clearest
            return
        self._check_traces(model_trace, guide_trace, cause=error)

    def _store_state(self):
        """
        ``"ok"`` while every built discriminator's parameters are the store's,
        ``"cleared"`` when they are gone (:func:`pyro.clear_param_store`), and
        ``"foreign"`` when other tensors hold their names.
        """
        store = pyro.get_param_store()
        state = "ok"
        for key, module in self.discriminators.items():
            prefix = f"{self.discriminator_prefix}_{key}"
            for pname, p in module.named_parameters():
                full = pyro.params.param_with_module_name(prefix, pname)
                if full not in store:
                    state = "cleared"
                elif store[full].unconstrained() is not p:
                    return "foreign"
        return state

    def _foreign_error(self, key):
        return ValueError(
            f"{type(self).__name__}: the param store's parameters named "
            f"'{self.discriminator_prefix}_{key}$$$...' are no longer this objective's "
            "discriminator (another objective built its own under that name, or they were "
            "loaded over it). pyro.module would silently train those instead; give each "
            "objective its own discriminator_prefix=, or call pyro.clear_param_store() "
            "between runs."
        )

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
        self._zero_grad_streak = {}
        self._zero_grad_warned = set()
        if self.averages is not None:
            self.averages.reset()

    def _prepare(self, model, guide, args, kwargs):
        self._call = (model, guide, args, kwargs)
        training = not self._evaluating
        key = (_identity(model), _identity(guide), _arg_key(args, kwargs))
        problem = self._problem
        if problem is not None:
            reason = None
            store_state = self._store_state() if self.discriminators else "ok"
            if store_state == "foreign":
                raise self._foreign_error(next(iter(self.discriminators)))
            if store_state == "cleared":
                reason = "cleared"
            elif key[0] != problem["model"] or key[1] != problem["guide"]:
                reason = "a different model or guide"
            elif key[2] != problem["args"] and training:
                # new argument shapes: compare what the sites look like (cheap keys first,
                # so the usual step with the same data traces nothing)
                signature = self._problem_signature(model, guide, args, kwargs)
                known = problem["signature"] is not None and signature is not None
                if known and signature != problem["signature"]:
                    reason = "different sample sites (names, event shapes or dtypes)"
                problem["args"], problem["signature"] = key[2], signature
                problem["traced"] = True
            if reason is not None and reason != "cleared" and not training:
                # an evaluation (loss, importance weights) of another guide with the
                # trained discriminators is deliberate in diagnostics: keep them
                warnings.warn(
                    f"{type(self).__name__} is evaluated on {reason} than it was trained "
                    "on; its discriminators are those of the training problem (nothing is "
                    "rebuilt for an evaluation).",
                    ObjectiveMismatchWarning,
                    stacklevel=4,
                )
                reason = None
            if reason is not None:
                if reason != "cleared":
                    warnings.warn(
                        f"{type(self).__name__} was reused on {reason}: its discriminators "
                        "were built for the previous problem, so they and the other "
                        "first-step state are rebuilt. Use one objective per problem.",
                        ObjectiveRebuiltWarning,
                        stacklevel=4,
                    )
                self._reset()
                problem = self._problem = None
        if problem is None:
            self._problem = {
                "model": key[0],
                "guide": key[1],
                "args": key[2],
                "signature": None,
                "traced": False,
            }
            self._setup(model, guide, args, kwargs)

    def _prepare_evaluation(self, model, guide, args, kwargs):
        # subclasses extend _prepare with the usual signature: say "evaluation" aside
        self._evaluating = True
        try:
            self._prepare(model, guide, args, kwargs)
        finally:
            self._evaluating = False

    def _setup(self, model, guide, args, kwargs):
        """First-call set-up (again after a rebuild): the plate-nesting guess."""
        self.validate_options()
        if self.max_plate_nesting == float("inf"):
            with self._explaining(model, guide, args, kwargs):
                self._guess_max_plate_nesting(model, guide, args, kwargs)

    #: options that must be positive integers where a subclass has them
    _POSITIVE_INT_OPTIONS = ("num_particles", "discriminator_particles", "moment_particles")
    #: options that hold a discriminator spec (``None``, a module or a factory)
    _DISCRIMINATOR_OPTIONS = ("discriminator_spec", "discriminator_factory")

    def validate_options(self):
        """
        Checks the options every adversarial objective may have (particle counts,
        the discriminator spec); call it at the end of a subclass's ``__init__`` to
        report a bad option at construction. It also runs on the first step.
        """
        owner = type(self).__name__
        for option in self._POSITIVE_INT_OPTIONS:
            if hasattr(self, option):
                check_positive_int(getattr(self, option), option, owner)
        for option in self._DISCRIMINATOR_OPTIONS:
            if hasattr(self, option):
                check_discriminator_spec(getattr(self, option), owner)

    def _remember(self, model, guide, args, kwargs):
        # the sites of the first call, traced after it so the first step's random
        # stream is the one it always was
        problem = self._problem
        if problem is not None and not problem["traced"]:
            problem["traced"] = True  # once, even when untraceable
            problem["signature"] = self._problem_signature(model, guide, args, kwargs)

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

        optim = getattr(svi_or_optim, "optim", svi_or_optim)
        if isinstance(optim, DistributedOptimizer) and type(optim.optim) is pyro.optim.PyroOptim:
            # data-parallel: the discriminators' extra updates must average over ranks too
            self.discriminator_optim = optim.copy()
            self.discriminator_optim_source = "svi"
        elif type(optim) is pyro.optim.PyroOptim:
            self.discriminator_optim = pyro.optim.PyroOptim(
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
                _, _, d_loss, _ = self._losses(model, guide, args, kwargs)
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
        try:
            with torch.no_grad(), self._explaining(model, guide, args, kwargs):
                result = self._losses(model, guide, args, kwargs)
        finally:
            self.num_particles, self.max_plate_nesting = saved
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
                reported, _, _, stats = self._losses(model, guide, args, kwargs)
        self.stats = stats
        self._remember(model, guide, args, kwargs)
        return reported.item()

    def _surrogate(self, model, guide, args, kwargs):
        """One training evaluation: ``(reported, surrogate, stats, params)``."""
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
            reported, g_loss, d_loss, stats = self._losses(model, guide, args, kwargs)
        self._check_finite("generator (guide/model) loss", g_loss)
        self._check_finite("discriminator loss", d_loss)
        if self._logit_max is not None:
            stats = dict(stats, discriminator_max_abs_logit=self._logit_max)
        params = {
            name: site["value"].unconstrained()
            for name, site in capture.trace.nodes.items()
            if not is_discriminator_param(name, self.discriminator_prefix)
        }
        if self.averages is not None:
            self.averages.track(params)
        return reported, g_loss + d_loss, stats, params

    def _check_gradients(self, params):
        """Counts steps of all-zero gradient per guide/model parameter; warns once each."""
        for name, p in params.items():
            if not p.requires_grad:
                continue
            zero = p.grad is None or not bool(p.grad.any())
            streak = self._zero_grad_streak.get(name, 0) + 1 if zero else 0
            self._zero_grad_streak[name] = streak
            if streak >= self.zero_grad_steps and name not in self._zero_grad_warned:
                self._zero_grad_warned.add(name)
                warnings.warn(
                    f"{type(self).__name__}: parameter '{name}' has received an all-zero "
                    f"gradient for {streak} steps, so it is not learning. Something between "
                    "it and the loss is not differentiable (torch.poisson, round, floor, "
                    "argmax, a comparison); use a reparameterizable simulator, or fix the "
                    "parameter if it is not meant to learn.",
                    ZeroGradientWarning,
                    stacklevel=4,
                )

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
        value = reported.item()
        if math.isnan(value):
            raise NonFiniteLossError(f"{type(self).__name__}: the reported loss is NaN")
        return value

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
