"""pyro-adv: adversarial inference for Pyro.

Implicit guides (:class:`~pyro_adv.infer.autoguide.AutoImplicit`,
:class:`~pyro_adv.nn.ImplicitEncoder`) trained by adversarial objectives that plug
into :class:`pyro.infer.SVI` (:class:`~pyro_adv.infer.TraceAVB_ELBO`,
:class:`~pyro_adv.infer.Trace_ALI`), and GAN samplers written as Pyro models
(:class:`~pyro_adv.infer.Trace_GAN`).

The names most programs need are available from the top level::

    from pyro_adv import AutoImplicit, ImplicitEncoder, TraceAVB_ELBO, Trace_ALI, Trace_GAN

and so are the subpackages (``pyro_adv.infer``, ``pyro_adv.nn``, ...). Both are
imported lazily, on first use: ``import pyro_adv`` itself imports neither torch
nor matplotlib.
"""

import importlib

__version__ = "0.1.0"

#: the subpackages and modules, imported on first attribute access
_SUBMODULES = (
    "diagnostics",
    "distributed",
    "distributions",
    "infer",
    "models",
    "nn",
    "optim",
    "plotting",
    "training",
)

#: top-level shortcut -> the module that defines it
_SHORTCUTS = {
    "TraceAVB_ELBO": "pyro_adv.infer",
    "Trace_ALI": "pyro_adv.infer",
    "Trace_GAN": "pyro_adv.infer",
    "simulate": "pyro_adv.infer",
    "NonFiniteLossError": "pyro_adv.infer",
    "is_discriminator_param": "pyro_adv.infer",
    "AutoImplicit": "pyro_adv.infer.autoguide",
    "amortized_guide": "pyro_adv.infer.autoguide",
    "ImplicitDistribution": "pyro_adv.distributions",
    "ImplicitDensityError": "pyro_adv.distributions",
    "ImplicitEncoder": "pyro_adv.nn",
    "MLPGenerator": "pyro_adv.nn",
    "Discriminator": "pyro_adv.nn",
    "PairDiscriminator": "pyro_adv.nn",
    "two_timescale_adam": "pyro_adv.optim",
    "default_optimizer": "pyro_adv.optim",
    "raw_weights": "pyro_adv.nn",
    "fit": "pyro_adv.training",
    "save_checkpoint": "pyro_adv.training",
    "load_checkpoint": "pyro_adv.training",
}

__all__ = ["__version__", *_SUBMODULES, *_SHORTCUTS]


def __getattr__(name):
    if name in _SHORTCUTS:
        value = getattr(importlib.import_module(_SHORTCUTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
