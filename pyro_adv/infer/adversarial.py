"""The machinery shared by every adversarial objective.

One SVI step is one update of both players. An objective builds a single
surrogate whose gradient is the discriminator loss for discriminator parameters
and the generator (guide, model) loss for everything else: discriminator inputs
are detached on the discriminator path, and discriminator weights are detached
on the generator path. One ``backward()`` then serves both, and ``SVI``'s
optimizer updates both, since discriminators are registered in Pyro's param
store with :func:`pyro.module` under their own prefix.
"""

import math
import warnings

import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer.elbo import ELBO
from torch.func import functional_call

from pyro_adv.infer.divergences import Wasserstein

__all__ = ["AdversarialObjective", "NonFiniteLossError", "is_discriminator_param"]

#: Default prefix of discriminator modules in the param store.
DISCRIMINATOR_PREFIX = "discriminator"


class NonFiniteLossError(FloatingPointError):
    """A player's loss became NaN or infinite during adversarial training."""


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

    :param int discriminator_steps: discriminator updates per SVI step; the
        extra ``discriminator_steps - 1`` run before the joint update on fresh
        samples, with ``discriminator_optim`` (WGAN's ``n_critic``).
    :param pyro.optim.PyroOptim discriminator_optim: optimizer of the extra
        discriminator updates (``Adam(lr=1e-3, betas=(0.5, 0.9))`` by default).
    :param str discriminator_prefix: prefix of the discriminators' names in the
        param store.
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=True,
        discriminator_steps=1,
        discriminator_optim=None,
        discriminator_prefix=DISCRIMINATOR_PREFIX,
    ):
        if int(discriminator_steps) != discriminator_steps or discriminator_steps < 1:
            raise ValueError(
                f"discriminator_steps must be a positive integer, got {discriminator_steps}"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.discriminator_steps = int(discriminator_steps)
        self.discriminator_optim = discriminator_optim
        self.discriminator_prefix = discriminator_prefix
        self.discriminators = torch.nn.ModuleDict()
        #: statistics of the latest step (losses, discriminator accuracy, estimates)
        self.stats = {}

    # ------------------------------------------------------------------ players
    def discriminator(self, key, example, factory):
        """
        The discriminator ``key``, built by ``factory()`` and sized on ``example``
        the first time, and registered with :func:`pyro.module` on every call so
        ``SVI`` captures and updates its parameters.
        """
        if key not in self.discriminators:
            module = factory()
            if hasattr(module, "initialize"):
                module.initialize(example.detach())
            else:
                with torch.no_grad():
                    module(example.detach())
            self.discriminators[key] = module
        module = self.discriminators[key]
        pyro.module(f"{self.discriminator_prefix}_{key}", module)
        return module

    @staticmethod
    def frozen(module):
        """``module`` with its parameters detached: gradients reach its inputs only."""
        params = {name: p.detach() for name, p in module.named_parameters()}
        return lambda *inputs: functional_call(module, params, inputs)

    def _game_add(self, totals, real_logits, fake_logits, penalty, generator_loss):
        """
        Adds one discriminator group of a two-sample game (GAN, ALI) to ``totals``, a
        dict started empty: both players' losses, the penalty, the divergence estimate
        and the discriminator's accuracy on each side.
        """
        div = self.divergence
        d_loss = totals.get("d_loss", 0.0) + div.discriminator_loss(real_logits, fake_logits)
        totals["d_loss"] = d_loss + penalty
        totals["penalty"] = totals.get("penalty", 0.0) + penalty.detach()
        totals["g_loss"] = totals.get("g_loss", 0.0) + generator_loss
        estimate = div.estimate(real_logits, fake_logits).detach()
        totals["estimate"] = totals.get("estimate", 0.0) + estimate
        a_real, a_fake = div.accuracy(real_logits, fake_logits)
        totals.setdefault("acc_real", []).append(a_real)
        totals.setdefault("acc_fake", []).append(a_fake)

    def _game_result(self, totals):
        """``_losses``'s return value from the ``totals`` of :meth:`_game_add`."""
        estimate, g_loss, d_loss = totals["estimate"], totals["g_loss"], totals["d_loss"]
        acc_real, acc_fake = totals["acc_real"], totals["acc_fake"]
        stats = {
            "loss": estimate.item(),
            "generator_loss": g_loss.item(),
            "discriminator_loss": d_loss.item(),
            "discriminator_accuracy_real": sum(acc_real) / len(acc_real),
            "discriminator_accuracy_fake": sum(acc_fake) / len(acc_fake),
            "divergence": estimate.item(),
        }
        if isinstance(getattr(self, "divergence", None), Wasserstein):
            stats["gradient_penalty"] = totals["penalty"].item()
        return estimate, g_loss, d_loss, stats

    def _check_finite(self, what, value):
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"{type(self).__name__}: the {what} is {value.item()}. Lower the learning "
                "rate, rescale the data, or choose a bounded divergence; "
                f"last finite statistics: {self.stats}"
            )

    # ---------------------------------------------------------------- interface
    def _get_trace(self, model, guide, args, kwargs):
        # Pyro's ELBO asks for this hook; adversarial objectives build their own traces.
        raise NotImplementedError(f"{type(self).__name__} builds its traces in _losses")

    def _losses(self, model, guide, args, kwargs):
        """Returns ``(reported_loss, generator_loss, discriminator_loss, stats)``."""
        raise NotImplementedError

    def _prepare(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Pyro's version scores the guide, which implicit sites refuse: read the plates only.
        with poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
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

    def _discriminator_params(self):
        store = pyro.get_param_store()
        return [
            store._params[name]
            for name in store.keys()
            if is_discriminator_param(name, self.discriminator_prefix)
        ]

    def _extra_discriminator_updates(self, model, guide, args, kwargs):
        if self.discriminator_steps == 1 or not len(self.discriminators):
            return
        if self.discriminator_optim is None:
            self.discriminator_optim = pyro.optim.Adam({"lr": 1e-3, "betas": (0.5, 0.9)})
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
            self.discriminator_optim(params)
            pyro.infer.util.zero_grads(params | others)
            for module in self.discriminators.values():
                self.divergence_after_update(module)

    def divergence_after_update(self, module):
        """Hook for divergences that constrain the discriminator (weight clipping)."""
        divergence = getattr(self, "divergence", None)
        if divergence is not None:
            divergence.after_update(module)

    def _evaluate(self, model, guide, args, kwargs, num_particles=None):
        """
        One run of ``_losses`` without gradients and without training, with
        ``num_particles`` vectorized particles (the training setting if ``None``),
        e.g. for importance diagnostics; the training settings are restored after.
        A run trained with one particle had no particle plate, so the bound on
        plate nesting gets room for one.
        """
        self._prepare(model, guide, args, kwargs)
        saved = self.num_particles, self.max_plate_nesting
        if num_particles is not None:
            if self.vectorize_particles and self.num_particles == 1 and num_particles > 1:
                self.max_plate_nesting += 1
            self.num_particles = int(num_particles)
        try:
            with torch.no_grad():
                return self._losses(model, guide, args, kwargs)
        finally:
            self.num_particles, self.max_plate_nesting = saved

    def loss(self, model, guide, *args, **kwargs):
        """
        :returns: the objective's loss estimate (for AVB the negative ELBO) without
            computing gradients or updating anything.
        :rtype: float
        """
        self._prepare(model, guide, args, kwargs)
        with torch.no_grad():
            reported, _, _, stats = self._losses(model, guide, args, kwargs)
        self.stats = stats
        return reported.item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        Computes the loss and, with one ``backward()``, the gradients of both
        players: the discriminator loss for discriminator parameters, the
        generator loss for guide and model parameters.

        :returns: the reported loss estimate (for AVB the negative ELBO).
        :rtype: float
        """
        self._prepare(model, guide, args, kwargs)
        self._extra_discriminator_updates(model, guide, args, kwargs)
        for module in self.discriminators.values():
            self.divergence_after_update(module)
        reported, g_loss, d_loss, stats = self._losses(model, guide, args, kwargs)
        self._check_finite("generator (guide/model) loss", g_loss)
        self._check_finite("discriminator loss", d_loss)
        surrogate = g_loss + d_loss
        if surrogate.requires_grad:
            surrogate.backward()
        else:
            warnings.warn(f"{type(self).__name__}: nothing to train (no parameter got a gradient)")
        self.stats = stats
        value = reported.item()
        if math.isnan(value):
            raise NonFiniteLossError(f"{type(self).__name__}: the reported loss is NaN")
        return value
