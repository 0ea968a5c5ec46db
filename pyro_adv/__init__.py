"""pyro-adv: adversarial inference for Pyro.

Implicit guides (:class:`~pyro_adv.infer.autoguide.AutoImplicit`,
:class:`~pyro_adv.nn.ImplicitEncoder`) trained by adversarial objectives that plug
into :class:`pyro.infer.SVI` (:class:`~pyro_adv.infer.TraceAVB_ELBO`,
:class:`~pyro_adv.infer.Trace_ALI`), and GAN samplers written as Pyro models
(:class:`~pyro_adv.infer.Trace_GAN`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
