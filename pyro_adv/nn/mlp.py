"""Multilayer perceptrons that size themselves on first use."""

import torch
from torch import nn

from pyro_adv.nn.averaging import call_averaged

__all__ = ["MLP", "get_activation"]

_ACTIVATIONS = {
    "elu": nn.ELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def get_activation(activation):
    """Resolves an activation given by name (``"tanh"``, ``"elu"``, ...) or as a module class."""
    if isinstance(activation, str):
        try:
            return _ACTIVATIONS[activation]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {sorted(_ACTIVATIONS)} "
                "or a torch.nn.Module class"
            ) from None
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation
    if callable(activation):
        return activation
    raise TypeError(f"activation must be a name or an nn.Module class, got {activation!r}")


def _positive_int(value):
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


class MLP(nn.Module):
    """
    A feed-forward network ``in -> hidden... -> out``.

    With ``input_dim=None`` the layers are built on the first call, on the device
    and with the dtype of that call's input, so networks created by an objective
    follow the model's tensors. With ``standardize_input=True`` the first batch
    also fixes an affine input standardization (data-dependent initialization,
    kept as buffers), so raw observations of any scale can be fed.

    :param int input_dim: input width, or ``None`` to infer it lazily.
    :param int output_dim: output width.
    :param tuple hidden_dims: widths of the hidden layers.
    :param activation: a name (``"tanh"``, ``"elu"``, ``"softplus"``, ...) or module class.
    :param bool standardize_input: standardize inputs with first-batch statistics.
    :param float output_scale: multiplies the initial weights of the last layer;
        small values start the network near a constant output.
    :param device: where an eagerly built network (``input_dim`` given) is created
        (default: the CPU, as ``nn.Linear``).
    :param dtype: its dtype (default: ``torch.get_default_dtype()``).
    :ivar bool use_averages: sample with the weight averages an objective keeps
        (:mod:`pyro_adv.nn.averaging`) outside training; ``False`` for a plain MLP
        and for discriminators, ``True`` for the sampling networks.
    """

    use_averages = False

    def __init__(
        self,
        input_dim,
        output_dim,
        hidden_dims=(64, 64),
        activation="elu",
        standardize_input=False,
        output_scale=1.0,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not _positive_int(output_dim):
            raise ValueError(f"MLP: output_dim must be a positive integer, got {output_dim!r}")
        if input_dim is not None and not _positive_int(input_dim):
            raise ValueError(
                f"MLP: input_dim must be a positive integer (or None), got {input_dim!r}"
            )
        if not all(_positive_int(h) for h in hidden_dims):
            raise ValueError(
                f"MLP: hidden_dims must be positive integers, got {tuple(hidden_dims)!r}"
            )
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.hidden_dims = tuple(hidden_dims)
        self.activation = get_activation(activation)
        self.standardize_input = standardize_input
        self.output_scale = output_scale
        self.net = None
        self.register_buffer("input_loc", None)
        self.register_buffer("input_scale", None)
        if input_dim is not None:
            self._build(
                input_dim,
                torch.device("cpu") if device is None else torch.device(device),
                torch.get_default_dtype() if dtype is None else dtype,
            )

    @property
    def is_built(self):
        return self.net is not None

    def _build(self, input_dim, device, dtype):
        layers = []
        width = input_dim
        for hidden in self.hidden_dims:
            layers += [nn.Linear(width, hidden, device=device, dtype=dtype), self.activation()]
            width = hidden
        last = nn.Linear(width, self.output_dim, device=device, dtype=dtype)
        if self.output_scale != 1.0:
            with torch.no_grad():
                last.weight.mul_(self.output_scale)
                last.bias.mul_(self.output_scale)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.input_dim = input_dim

    def initialize(self, x):
        """Builds the layers (if lazy) and fixes the input standardization from ``x``."""
        x = x.detach()
        if not torch.isfinite(x).all():
            # the standardization would be NaN forever
            raise ValueError(
                f"{type(self).__name__}: the inputs that fix the input size and "
                "standardization contain NaN or inf values"
            )
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if self.net is None:
            self._build(x.shape[-1], x.device, x.dtype)
        elif x.shape[-1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: expected inputs with {self.input_dim} features, "
                f"got shape {tuple(x.shape)}"
            )
        if self.standardize_input and self.input_loc is None:
            flat = x.reshape(-1, x.shape[-1])
            self.input_loc = flat.mean(0)
            scale = flat.std(0) if flat.shape[0] > 1 else torch.ones_like(flat[0])
            self.input_scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))
        return self

    def forward(self, x):
        if self.net is None or (self.standardize_input and self.input_loc is None):
            self.initialize(x)
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: expected inputs with {self.input_dim} features, "
                f"got shape {tuple(x.shape)}"
            )
        dtype = self.net[0].weight.dtype
        if x.dtype != dtype:
            # integer or float64 data meeting a float32 network: cast, not a matmul error
            x = x.to(dtype)
        if self.standardize_input:
            x = (x - self.input_loc) / self.input_scale
        if self.use_averages:
            return call_averaged(self.net, self.net, x)
        return self.net(x)
