"""
The discriminators of an adversarial objective: built lazily on the first step,
registered in Pyro's param store with :func:`pyro.module` (so ``SVI``'s optimizer
updates them with the guide and the model), frozen on the generator's path, and,
with ``discriminator_steps > 1``, updated again before each joint step (WGAN's
``n_critic``; Arjovsky et al. 2017) with an optimizer copied from the SVI one.

:class:`DiscriminatorPlayers` is mixed into
:class:`~pyro_adv.infer.adversarial.AdversarialObjective`; it reads the objective's
``discriminator_prefix``, ``discriminator_steps``, ``discriminator_optim`` and
``divergence`` and its ``_losses``.
"""

import warnings

import pyro
import pyro.optim
import torch

from pyro_adv.infer.checks import ObjectiveRebuiltWarning
from pyro_adv.infer.util import is_discriminator_param, module_key

__all__ = ["DiscriminatorPlayers"]


class DiscriminatorPlayers:
    """
    Building, registering, freezing and extra updates of an objective's
    discriminators (kept in ``self.discriminators``, a :class:`torch.nn.ModuleDict`).
    """

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

    def spec_factory(self, key, default):
        """
        A factory of discriminator ``key`` from the objective's ``discriminator=``
        argument (``discriminator_spec``): ``None`` builds ``default(hidden_dims,
        activation)``, a module is used as it is, a callable is called with ``key``.
        """
        spec = self.discriminator_spec
        if spec is None:
            return lambda: default(self.discriminator_hidden_dims, self.discriminator_activation)
        if isinstance(spec, torch.nn.Module):
            return lambda: spec
        return lambda: spec(key)

    def _build_discriminator(self, key, factory, example, probe=None, others=None):
        """
        Builds discriminator ``key`` from ``factory()``: ``module.initialize(example)``
        where it has one (lazy sizing and input standardization), else ``probe(module)``
        or ``module(example)`` without gradient. ``others``: inputs of the first step
        that do not fix the standardization but must be finite too.
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
        finite = torch.isfinite(example).all()
        if others is not None:
            finite = finite & torch.isfinite(others.detach()).all()
        if not finite:
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
