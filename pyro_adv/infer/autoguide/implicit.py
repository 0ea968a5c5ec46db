"""An automatic guide whose posterior is a neural sampler with no density."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import biject_to

from pyro_adv.distributions.implicit import ImplicitDistribution, ImplicitValue
from pyro_adv.nn.averaging import averaged_value, raw_weights
from pyro_adv.nn.mixture import MixtureMLP
from pyro_adv.nn.mlp import MLP

__all__ = ["AutoImplicit"]


class AutoImplicit(AutoContinuous):
    r"""
    A drop-in replacement for :class:`~pyro.infer.autoguide.AutoNormal` whose
    posterior is *implicit*: all latents are drawn jointly in unconstrained space
    by a neural sampler

    .. math:: u = \mu + G_\phi(\epsilon),\quad \epsilon \sim N(0, I),
              \qquad z = \mathrm{biject\_to}(\mathrm{support})(u),

    which can represent correlated, skewed and multimodal posteriors but has no
    density, so it must be trained with an adversarial objective such as
    :class:`~pyro_adv.infer.TraceAVB_ELBO` (Mescheder et al. 2017). Constrained
    latents (scales, simplexes) work: the sampler lives in the unconstrained
    space. Every model latent gets a sample site of its own name
    (:class:`~pyro_adv.distributions.ImplicitValue`), so
    :class:`~pyro.infer.Predictive` and ``guide()`` (a dict of samples) behave as
    with Pyro's own autoguides.

    Example::

        guide = AutoImplicit(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceAVB_ELBO())
        for _ in range(2000):
            svi.step(data)
        samples = Predictive(model, guide=guide, num_samples=1000)(data)

    Using it with :class:`~pyro.infer.Trace_ELBO` raises an error that names the
    adversarial objectives.

    Outside training it samples with the weight average its objective keeps
    (:mod:`pyro_adv.nn.averaging`); set ``guide.use_averages = False`` for the
    raw weights.

    :param callable model: a Pyro model with continuous latents.
    :param int noise_dim: width of the noise (default ``latent_dim + 1``).
    :param tuple hidden_dims: hidden widths of the sampler network.
    :param activation: its hidden activation.
    :param callable init_loc_fn: per-site initialization (see
        :mod:`pyro.infer.autoguide.initialization`); the sampler starts centred there.
    :param float init_scale: initial spread of the samples in unconstrained space.
    :param int num_components: ``K``: the sampler is a mixture of ``K`` networks
        sharing their hidden layers, one picked per draw by a bin of the last noise
        coordinate (:class:`~pyro_adv.nn.MixtureMLP`), so it can put mass on separated
        modes without a bridge between them. Each component starts at its own place:
        prior draws reflected about the prior's centre (the coordinatewise median of
        255 draws) in antithetic pairs, so the components start spread over the prior,
        on both sides of its centre, and gradient descent carries them into different
        modes (see :doc:`/guide/modes`). ``1`` is a single network.
    :param float component_spread: multiplies the components' starting offsets from
        the prior's centre (default 1: the prior draws themselves).
    :param bool learn_weights: learn the mixture weights :math:`w = \mathrm{softmax}(a)`
        (default, with ``num_components > 1``), so modes of unequal mass get their
        shares; ``False`` keeps them equal. In training each draw's component is an
        auxiliary ``Categorical`` site ``_<name>_component`` of the guide, whose
        weights :class:`~pyro_adv.infer.TraceAVB_ELBO` learns by the score function
        (:math:`\partial \mathcal{L} / \partial w_k = \mathbb{E}_{q_k}[\log q - \log p]`
        up to a constant); :meth:`get_posterior` picks the component by a bin of the
        last noise coordinate, with the learned weights as bin widths.
    """

    use_averages = True

    def __init__(
        self,
        model,
        *,
        noise_dim=None,
        hidden_dims=(64, 64),
        activation="elu",
        init_loc_fn=init_to_median,
        init_scale=0.1,
        num_components=1,
        component_spread=None,
        learn_weights=True,
    ):
        if init_scale <= 0:
            raise ValueError(f"AutoImplicit: init_scale must be positive, got {init_scale}")
        if noise_dim is not None and (
            isinstance(noise_dim, bool) or not isinstance(noise_dim, int) or noise_dim < 1
        ):
            raise ValueError(
                f"AutoImplicit: noise_dim must be a positive integer or None, got {noise_dim!r}"
            )
        self.noise_dim = noise_dim
        self.hidden_dims = tuple(hidden_dims)
        self.activation = activation
        self._init_scale = init_scale
        self.num_components = num_components
        self.component_spread = 1.0 if component_spread is None else component_spread
        self.learn_weights = bool(learn_weights)
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            for frame in site["cond_indep_stack"]:
                if (
                    frame.vectorized
                    and frame.full_size is not None
                    and frame.size != frame.full_size
                ):
                    raise NotImplementedError(
                        f"AutoImplicit draws all latents jointly and cannot subsample plate "
                        f"'{frame.name}' at site '{name}'; use an amortized ImplicitEncoder "
                        "guide for plate-local latents"
                    )
        if self.noise_dim is None:
            self.noise_dim = self.latent_dim + 1
        # the model's own values fix the guide's dtype and device
        init = self._init_loc().detach()
        self.loc = torch.nn.Parameter(init)
        # a small last layer starts the sampler as a narrow cloud around the init
        if self.num_components > 1:
            self.sampler = MixtureMLP(
                self.noise_dim,
                self.latent_dim,
                self.num_components,
                self.hidden_dims,
                self.activation,
                output_scale=self._init_scale,
                device=init.device,
                dtype=init.dtype,
            )
        else:
            self.sampler = MLP(
                self.noise_dim,
                self.latent_dim,
                self.hidden_dims,
                self.activation,
                output_scale=self._init_scale,
                device=init.device,
                dtype=init.dtype,
            )
        if self.num_components > 1:
            with torch.no_grad():
                self.sampler.offsets.copy_(self._component_offsets(init))
        if self._weighted:
            self.component_logits = torch.nn.Parameter(init.new_zeros(self.num_components))
        self.sampler.use_averages = True
        # with learned weights one more noise coordinate, seen by no network, picks the
        # component (see _generate)
        self.register_buffer("_noise_loc", init.new_zeros(self.noise_dim + self._weighted))

    def _component_offsets(self, init, num_centre_draws=255):
        # prior draws reflected about the prior's centre (antithetic pairs) and
        # expressed relative to the init: the components start spread over the prior, on
        # both sides of its centre, each in its own basin. Reflecting about the init
        # instead put both components of a pair on one side whenever the init (a median
        # of 15 prior draws) landed off-centre: on the zoo's symmetric bimodal posterior
        # 3 of 10 seeds then started, and stayed, with both components in one mode
        pairs = (self.num_components + 1) // 2
        draws, centres = [], []
        for _, site in self.prototype_trace.iter_stochastic_nodes():
            transform = biject_to(site["fn"].support)
            try:
                u = transform.inv(site["fn"].sample((pairs + num_centre_draws,)).detach())
                # the coordinatewise median: robust to heavy-tailed priors
                centre = u[pairs:].median(0).values
                u = u[:pairs]
            except NotImplementedError:
                # an improper prior (ImproperUniform) cannot be sampled: N(0, 1)
                # around the site's init in unconstrained space
                centre = transform.inv(site["value"].detach())
                u = centre + torch.randn((pairs,) + centre.shape, dtype=centre.dtype)
            draws.append(u.reshape(pairs, -1))
            centres.append(centre.reshape(-1))
        centre = torch.cat(centres).to(init)
        half = (torch.cat(draws, -1).to(init) - centre) * self.component_spread
        return (centre - init) + torch.cat([half, -half])[: self.num_components]

    @property
    def _weighted(self):
        return self.num_components > 1 and self.learn_weights

    def component_weights(self):
        """The mixture weights :math:`w_k` (equal unless ``learn_weights``), detached."""
        if not self._weighted:
            return torch.full((self.num_components,), 1.0 / self.num_components)
        return self._component_distribution().probs.detach()

    def _component_distribution(self):
        logits = self.component_logits
        if self.use_averages:
            logits = averaged_value(logits)
        return dist.Categorical(logits=logits, validate_args=False)

    def get_posterior(self, *args, **kwargs):
        """The joint implicit posterior over the packed unconstrained latent vector."""
        return self._posterior()

    def _posterior(self, component=None):
        # standard normal noise: nothing to validate (a device read per argument check)
        noise = dist.Normal(self._noise_loc, 1.0, validate_args=False).to_event(1)
        generate = self._generate
        if component is not None:

            def generate(eps):
                return self._generate(eps, component)

        return ImplicitDistribution(generate, noise, event_shape=(self.latent_dim,))

    def sample_latent(self, *args, **kwargs):
        """
        Draws the packed unconstrained latent vector; with learned mixture weights the
        component is drawn first, at its own auxiliary site, for the score function.
        """
        if not self._weighted:
            return super().sample_latent(*args, **kwargs)
        component = pyro.sample(
            f"_{self._pyro_name}_component",
            self._component_distribution(),
            infer={"is_auxiliary": True},
        )
        return pyro.sample(
            f"_{self._pyro_name}_latent",
            self._posterior(component),
            infer={"is_auxiliary": True},
        )

    def _generate(self, eps, component=None):
        if self._weighted:
            eps, selector = eps[..., :-1], eps[..., -1]
            if component is None:
                # the learned weights as the widths of the selector's bins: the same
                # draws as a Categorical site, without one
                with torch.no_grad():
                    edges = self._component_distribution().probs.cumsum(-1)[:-1]
                    u = 0.5 * torch.erfc(-selector / 2**0.5)
                    component = torch.searchsorted(edges, u.contiguous())
        # the weight averages outside training (see pyro_adv.nn.averaging)
        if not self.use_averages:
            with raw_weights():
                return self.loc + self._sample(eps, component)
        return averaged_value(self.loc) + self._sample(eps, component)

    def _sample(self, eps, component):
        if component is None:
            return self.sampler(eps)
        return self.sampler(eps, component=component)

    @property
    def joint_name(self):
        """The ``joint`` of this guide's :class:`~pyro_adv.distributions.ImplicitValue` sites."""
        return self._pyro_name or "AutoImplicit"

    def draws_group(self, group):
        """
        Whether one joint draw of this guide is exactly the latents of ``group`` (a
        group of implicit sites, as :func:`~pyro_adv.infer.util.group_implicit_sites`
        forms them), so that :meth:`draw_unconstrained` can stand in for traced runs.
        """
        if group.joint is None or group.joint != self.joint_name:
            return False
        if self.prototype_trace is None:
            return False
        return group.names == [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]

    def draw_unconstrained(self, num_draws, *args, **kwargs):
        """
        ``num_draws`` joint draws of the packed unconstrained latent vector, shape
        ``(num_draws, latent_dim)``, drawn outside Pyro's effect handlers (no sample
        or param sites are recorded). They equal the values a trace of the guide
        under a plate of ``num_draws`` would give, each latent's unconstrained
        value flattened in the guide's site order, from the same random stream;
        :class:`~pyro_adv.infer.TraceAVB_ELBO` takes its reference draws from here
        (Pyro's handlers cost more than the sampler on small problems).
        Gradients flow unless called under :func:`torch.no_grad`.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self.get_posterior(*args, **kwargs).rsample((num_draws,))

    def forward(self, *args, **kwargs):
        """
        Draws all latents jointly and samples each model site at its share.

        :returns: a dict mapping each latent site name to its sampled value.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        latent = self.sample_latent(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for site, unconstrained_value in self._unpack_latent(latent):
            name = site["name"]
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained_value)
            with _enter_plates(site, plates):
                result[name] = pyro.sample(
                    name,
                    ImplicitValue(
                        value,
                        event_dim=site["fn"].event_dim,
                        joint=self.joint_name,
                        unconstrained_value=unconstrained_value,
                    ),
                )
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs):
        """An implicit posterior has no closed-form median: the sample median of 1000 draws."""
        draws = [self(*args, **kwargs) for _ in range(1000)]
        return {k: torch.stack([d[k] for d in draws]).median(0).values for k in draws[0]}

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples=1000, **kwargs):
        """
        Sample quantiles of each latent from ``num_samples`` guide draws (an implicit
        posterior has no quantile function), shaped as :meth:`AutoNormal.quantiles`'
        results: the quantile dimension first.

        :param list quantiles: probabilities in ``[0, 1]``, e.g. ``[0.05, 0.5, 0.95]``.
        :param int num_samples: guide draws the quantiles are taken from.
        """
        q = torch.as_tensor(quantiles, dtype=torch.get_default_dtype())
        if q.dim() != 1 or bool((q < 0).any() | (q > 1).any()):
            raise ValueError(
                f"AutoImplicit.quantiles: quantiles must be a list of probabilities in [0, 1], "
                f"got {quantiles!r}"
            )
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(
                f"AutoImplicit.quantiles: num_samples must be an integer >= 2, got {num_samples!r}"
            )
        draws = [self(*args, **kwargs) for _ in range(num_samples)]
        result = {}
        for name in draws[0]:
            stacked = torch.stack([d[name] for d in draws])
            result[name] = torch.quantile(stacked, q.to(stacked), dim=0)
        return result


class _enter_plates:
    def __init__(self, site, plates):
        self.frames = [plates[f.name] for f in site["cond_indep_stack"] if f.vectorized]

    def __enter__(self):
        for p in self.frames:
            p.__enter__()

    def __exit__(self, *exc):
        for p in reversed(self.frames):
            p.__exit__(*exc)
