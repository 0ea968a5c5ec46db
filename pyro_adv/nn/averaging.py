r"""
Weight averaging for the sampling networks of adversarial inference.

The two players of an adversarial game circle their equilibrium rather than
settle on it, so the guide's (or generator's) last weights are one point on that
orbit; their exponential moving average (Polyak averaging, as for GAN
generators: Yazıcı et al. 2019, "The unusual effectiveness of averaging in GAN
training") sits closer to the centre. An adversarial objective with ``ema_decay``
set (the default for :class:`~pyro_adv.infer.Trace_ALI` and
:class:`~pyro_adv.infer.Trace_GAN`; ``TraceAVB_ELBO(ema_decay=0.999)`` for AVB)
keeps an :class:`ParameterEMA` of the parameters it trains other than the
discriminators'; after each optimizer step

.. math:: \bar\theta_t = \rho_t\, \bar\theta_{t-1} + (1 - \rho_t)\, \theta_t,
          \qquad \rho_t = \min\Big(\rho, \frac{1 + t}{10 + t}\Big),

so the average covers roughly the last tenth of the run (and at most the last
:math:`1 / (1 - \rho)` steps). The sampling networks
(:class:`~pyro_adv.nn.ImplicitEncoder`, :class:`~pyro_adv.nn.MLPGenerator`,
:class:`~pyro_adv.infer.autoguide.AutoImplicit`) use the averaged weights
whenever they run **outside** an objective's computation (``Predictive``,
``encoder(x).sample()``, ``to_inference_data``) and their raw weights inside it
(training and the objective's own evaluations, whose discriminators were trained
against the raw guide).

To sample with the raw weights, run inside :func:`raw_weights` or set a network's
``use_averages = False``; to turn averaging off, give the objective
``ema_decay=None``.
"""

import contextlib

import torch
from torch.func import functional_call
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "ParameterEMA",
    "averaged_parameters",
    "averaged_value",
    "call_averaged",
    "raw_weights",
    "using_raw",
]

_RAW_DEPTH = [0]
#: live parameter -> (its ParameterEMA, its param-store name)
_OWNERS = WeakIdKeyDictionary()


@contextlib.contextmanager
def raw_weights():
    """
    Inside this context the sampling networks use their raw (last trained)
    weights instead of their averages. Every adversarial objective computes its
    losses inside it.
    """
    _RAW_DEPTH[0] += 1
    try:
        yield
    finally:
        _RAW_DEPTH[0] -= 1


def using_raw():
    """Whether the sampling networks use raw weights here (inside :func:`raw_weights`)."""
    return _RAW_DEPTH[0] > 0


class ParameterEMA:
    r"""
    Exponential moving averages ("shadows") of a set of parameters, keyed by
    their param-store names, updated once after each optimizer step.

    The update is lazy: :meth:`track` (called by the objective after each
    training backward pass, before ``SVI``'s optimizer steps) marks the step
    pending, and the average absorbs the stepped values at the next
    :meth:`update`, which the objective calls at the start of the next step and
    which every read of an average calls first. So the averages are exact for
    any optimizer, in ``SVI`` as in a custom loop.

    :param float decay: the largest decay :math:`\rho` (e.g. 0.999: at most the
        last 1000 steps).
    :param float warmup: the ramp :math:`\rho_t = \min(\rho, (1 + t) / (w + t))`;
        the average covers about the last :math:`1 / (w - 1)` of the run so far.
    """

    def __init__(self, decay=0.999, warmup=10.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ParameterEMA: decay must be in [0, 1), got {decay}")
        if warmup <= 1.0:
            raise ValueError(f"ParameterEMA: warmup must be > 1, got {warmup}")
        self.decay = float(decay)
        self.warmup = float(warmup)
        self.num_updates = 0
        self.shadows = {}
        self._params = {}
        self._pending = False

    def track(self, params):
        """
        Registers the parameters a training step updates (``name -> tensor``, the
        param store's unconstrained tensors) and marks that step pending.
        Parameters without ``requires_grad`` are skipped.
        """
        for name, p in params.items():
            if not p.requires_grad:
                continue
            if self._params.get(name) is not p:
                self._params[name] = p
                _OWNERS[p] = (self, name)
        self._pending = True

    def rate(self):
        """:math:`\\rho_t` of the next update."""
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (self.warmup + t))

    @torch.no_grad()
    def update(self):
        """Absorbs the current values if a step is pending (a no-op otherwise)."""
        if not self._pending:
            return
        self._pending = False
        rho = self.rate()
        shadows, values = [], []
        for name, p in self._params.items():
            shadow = self.shadows.get(name)
            value = p.detach()
            if shadow is None or shadow.shape != value.shape or self.num_updates == 0:
                self.shadows[name] = value.clone()
            else:
                if shadow.device != value.device or shadow.dtype != value.dtype:
                    shadow = self.shadows[name] = shadow.to(value)
                shadows.append(shadow)
                values.append(value)
        if shadows:
            # shadow * rho + value * (1 - rho) for all at once (multi-tensor kernels)
            torch._foreach_mul_(shadows, rho)
            torch._foreach_add_(shadows, values, alpha=1.0 - rho)
        self.num_updates += 1

    def averaged(self, name):
        """The average of parameter ``name`` (after absorbing a pending step), or ``None``."""
        self.update()
        return self.shadows.get(name)

    def reset(self):
        """Forgets every average (a fresh run)."""
        for p in self._params.values():
            if _OWNERS.get(p, (None,))[0] is self:
                del _OWNERS[p]
        self.shadows, self._params = {}, {}
        self.num_updates, self._pending = 0, False

    def rebind(self, named_params):
        """
        Points the averages at live tensors by name (``name -> tensor``), e.g. after
        a checkpoint replaced the param store's tensors.
        """
        for name, p in named_params.items():
            if name in self.shadows and torch.is_tensor(p):
                old = self._params.get(name)
                if old is not None and old is not p and _OWNERS.get(old, (None,))[0] is self:
                    del _OWNERS[old]
                self._params[name] = p
                _OWNERS[p] = (self, name)

    def state_dict(self):
        """The averages (after absorbing a pending step) and the update count."""
        self.update()
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadows": {name: s.detach().clone() for name, s in self.shadows.items()},
        }

    def load_state_dict(self, state):
        """Restores :meth:`state_dict`; call :meth:`rebind` to attach live tensors."""
        self.decay, self.warmup = float(state["decay"]), float(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.shadows = {name: s.detach().clone() for name, s in state["shadows"].items()}
        self._pending = False


def averaged_value(p):
    """
    The averaged value of parameter ``p`` for sampling: its average when an
    objective keeps one and we are outside :func:`raw_weights`, else ``p``.
    """
    if using_raw():
        return p
    owner = _OWNERS.get(p)
    if owner is None:
        return p
    ema, name = owner
    shadow = ema.averaged(name)
    if shadow is None or shadow.shape != p.shape:
        return p
    return shadow.to(p)


def averaged_parameters(module):
    """
    ``name -> averaged value`` for the parameters of ``module`` to use for
    sampling (for :func:`torch.func.functional_call`), or ``None`` when it should
    run with its own weights: inside :func:`raw_weights`, with
    ``module.use_averages`` false, or when no objective averages its parameters.
    """
    if using_raw() or not getattr(module, "use_averages", True):
        return None
    params = dict(module.named_parameters())
    if not any(p in _OWNERS for p in params.values()):
        return None
    return {name: averaged_value(p) for name, p in params.items()}


def call_averaged(module, forward, *inputs):
    """
    ``forward(*inputs)`` with ``module``'s averaged weights substituted where it
    should sample with them (see :func:`averaged_parameters`).
    """
    params = averaged_parameters(module)
    if params is None:
        return forward(*inputs)
    with raw_weights():  # the substituted call must not look up averages again
        return functional_call(module, params, inputs, strict=False)
