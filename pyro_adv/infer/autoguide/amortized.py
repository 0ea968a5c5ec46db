"""An amortized guide from an encoder, for models with one plate-local latent site."""

import pyro
import torch

__all__ = ["amortized_guide"]


def amortized_guide(encoder, latent="z", plate="data", data="x", name="encoder"):
    r"""
    The amortized guide :math:`q(z_i \mid x_i)` of a model with one latent site
    ``latent`` inside a :class:`~pyro.plate` ``plate`` over the observations: for
    each plate element, ``z_i`` is drawn by ``encoder`` (e.g. an
    :class:`~pyro_adv.nn.ImplicitEncoder`) from its observation ``x_i`` (thesis
    section 4.2.1). The guide takes the model's arguments; the observations are its
    first positional argument or the keyword ``data``, with one row per plate
    element (``(N,)`` or ``(N, ...)``, flattened to ``(N, input_dim)`` for the
    encoder). ``subsample_size=B`` subsamples the plate as the model does, so both
    see the same ``B`` elements.

    Example (any model of this shape; here the thesis's exponential model)::

        from pyro_adv.models import exponential_model
        encoder = ImplicitEncoder(input_dim=1, latent_dim=2)
        guide = amortized_guide(encoder)           # latent "z", plate "data", data "x"
        svi = SVI(exponential_model, guide, Adam({"lr": 1e-3}), TraceAVB_ELBO())
        svi.step(x, subsample_size=256)

    Train on observations that cover the ones you will query: the encoder is fitted
    only where the training ``x`` lie. For AVB any spread of ``x`` keeps the optimum
    ``q(z | x) = p(z | x)`` (the ELBO is maximized at each ``x``), and the prior
    predictive is often a poor one: on the exponential model it puts 1.7% of ``x``
    above 30 (see :func:`~pyro_adv.models.sample_training_observations` and the
    user guide's "Train where you query"). On the first call an encoder with an
    ``initialize_context`` method (:class:`~pyro_adv.nn.ImplicitEncoder`) fixes its
    context preprocessing (the automatic log of skewed columns, the standardization)
    from the whole data set, at most 4,096 evenly strided rows, not from the first
    minibatch alone.

    :param encoder: a module ``x -> distribution`` of the latent (with the plate's
        batch shape), registered with :func:`pyro.module` as ``name``.
    :param str latent: the model's plate-local latent site.
    :param str plate: the name of the model's plate over the observations.
    :param str data: the keyword of the observations among the model's arguments
        (used when they are not passed positionally first).
    :param str name: the encoder's name in the param store.
    :returns: a guide ``guide(*args, subsample_size=None, **kwargs)``.
    """
    if not callable(encoder):
        raise TypeError(f"amortized_guide: encoder must be a module, got {encoder!r}")

    def guide(*args, subsample_size=None, **kwargs):
        x = kwargs[data] if data in kwargs else (args[0] if args else None)
        if not torch.is_tensor(x) or x.dim() == 0:
            raise ValueError(
                f"amortized_guide: the guide of latent '{latent}' needs the observations, "
                f"one row per element of plate '{plate}', as the first argument or "
                f"{data}=; got {x!r}"
            )
        pyro.module(name, encoder)
        initialize = getattr(encoder, "initialize_context", None)
        if initialize is not None:
            # the whole data set, not the first minibatch, fixes the context
            # preprocessing (a no-op once fixed)
            initialize(x.reshape(x.shape[0], -1))
        with pyro.plate(plate, x.shape[0], subsample_size=subsample_size) as idx:
            rows = x.index_select(0, idx.to(x.device))
            pyro.sample(latent, encoder(rows.reshape(rows.shape[0], -1)))

    # a mixture encoder's components, for TraceAVB_ELBO's mixture-aware contrast
    guide.num_components = getattr(encoder, "num_components", 1)
    return guide
