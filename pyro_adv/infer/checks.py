"""
The reliability checks that guard every step of an adversarial objective.

* **Reuse** (problem fingerprints): discriminators are sized and
  input-standardized for one problem, so each call is compared with the previous
  one (model and guide identities, argument shapes, the sample sites' names,
  event shapes and dtypes, the param store) and the objective rebuilds, with a
  warning, on a different problem.
* **Non-finite values**: a NaN or infinite loss stops training with an error that
  names the sites whose values are not finite.
* **Errors explained**: failures deep inside a step (empty data, a guide event
  shape that differs from the model's) are re-raised naming the site.
* **Zero gradients**: a guide or model parameter whose gradient stays all zero
  gets one warning.
* **Options**: positive integers and discriminator specs are checked at the call
  that sets them.

:class:`StepChecks` is a mixin of
:class:`~pyro_adv.infer.adversarial.AdversarialObjective`.
"""

import contextlib
import functools
import inspect
import math
import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_factor, site_is_subsample

from pyro_adv.nn.averaging import raw_weights

__all__ = [
    "NonFiniteLossError",
    "ObjectiveMismatchWarning",
    "ObjectiveRebuiltWarning",
    "StepChecks",
    "ZeroGradientWarning",
    "check_discriminator_spec",
    "check_positive_int",
]


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


class StepChecks:
    """
    Mixin of :class:`~pyro_adv.infer.adversarial.AdversarialObjective`: problem
    fingerprints and rebuilds (:meth:`_prepare`), non-finite losses
    (:meth:`_check_finite`), errors explained (:meth:`_explaining`), the
    zero-gradient watch (:meth:`_check_gradients`) and option checks
    (:meth:`validate_options`). It reads the objective's ``discriminators``,
    ``discriminator_prefix`` and ``stats`` and calls its ``_reset`` and ``_setup``.
    """

    #: consecutive steps of all-zero gradient before :class:`ZeroGradientWarning`
    zero_grad_steps = 100

    def _init_checks(self):
        self._problem = None  # what the discriminators were built for (see _prepare)
        self._call = None  # (model, guide, args, kwargs) of the call in progress
        self._evaluating = False
        self._reset_checks()

    def _reset_checks(self):
        self._zero_grad_streak = {}
        self._zero_grad_warned = set()

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

    def _read_losses(self, reported, g_loss, d_loss):
        """
        The reported loss as a float, with both players' losses checked for NaN and
        inf (:meth:`_check_finite`'s errors), all from one device read.
        """
        values = [reported, g_loss, d_loss]
        dtype = torch.promote_types(torch.promote_types(reported.dtype, g_loss.dtype), d_loss.dtype)
        numbers = torch.stack([v.detach().reshape(()).to(dtype) for v in values]).tolist()
        if not math.isfinite(numbers[1]):
            self._check_finite("generator (guide/model) loss", g_loss)
        if not math.isfinite(numbers[2]):
            self._check_finite("discriminator loss", d_loss)
        return numbers[0]

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

    def _quiet_traces(self, model, guide, args, kwargs):
        """
        A guide trace and the model replayed on it, outside the training's random
        stream (the random state is restored) and hidden from outer handlers.
        """
        # the raw weights, as in training (pyro_adv.nn.averaging)
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
            if (
                site["is_observed"]
                and torch.is_tensor(value)
                and value.numel() == 0
                and not site_is_factor(site)  # a factor's value is empty by design
            ):
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

    def _discriminator_params(self, key, module):
        """
        ``((param-store name, parameter), ...)`` of discriminator ``key``, listed once
        per module (a built discriminator's parameters are fixed; a rebuilt one is a
        new module): the per-step registration and store checks then cost no module
        traversal.
        """
        cache = self.__dict__.setdefault("_discriminator_param_names", {})
        cached = cache.get(key)
        if cached is None or cached[0] is not module:
            prefix = f"{self.discriminator_prefix}_{key}"
            pairs = tuple(
                (pyro.params.param_with_module_name(prefix, pname), p)
                for pname, p in module.named_parameters()
            )
            cached = cache[key] = (module, pairs)
        return cached[1]

    def _store_state(self):
        """
        ``"ok"`` while every built discriminator's parameters are the store's,
        ``"cleared"`` when they are gone (:func:`pyro.clear_param_store`), and
        ``"foreign"`` when other tensors hold their names.
        """
        # the store's unconstrained tensors by name (what store[name].unconstrained() is)
        stored = pyro.get_param_store()._params
        state = "ok"
        for key, module in self.discriminators.items():
            for full, p in self._discriminator_params(key, module):
                current = stored.get(full)
                if current is None:
                    state = "cleared"
                elif current is not p:
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

    #: options that must be positive integers where a subclass has them
    _POSITIVE_INT_OPTIONS = ("num_particles", "discriminator_particles", "moment_particles")
    #: options that hold a discriminator spec (``None``, a module or a factory)
    _DISCRIMINATOR_OPTIONS = ("discriminator_spec",)

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

    def _check_gradients(self, params):
        """Counts steps of all-zero gradient per guide/model parameter; warns once each."""
        params = {name: p for name, p in params.items() if p.requires_grad}
        # whether each gradient has a non-zero element, in one device read per device
        nonzero = {name: False for name, p in params.items() if p.grad is None}
        by_device = {}
        for name, p in params.items():
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(name)
        for names in by_device.values():
            # count_nonzero is the cheapest reduction on small tensors (NaN counts as
            # non-zero, -0.0 as zero, as with .any()); sparse gradients keep .any()
            counts = torch.stack(
                [
                    g.count_nonzero() if g.layout == torch.strided else g.any().long()
                    for g in (params[name].grad for name in names)
                ]
            ).tolist()
            nonzero.update((name, count != 0) for name, count in zip(names, counts))
        for name in params:
            zero = not nonzero[name]
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
