"""An automatic guide whose posterior is a neural sampler with no density."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_adv.distributions.implicit import ImplicitDistribution, ImplicitValue
from pyro_adv.nn.averaging import averaged_value, raw_weights
from pyro_adv.nn.mixture import MixtureMLP, kmeans
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
        sharing their hidden layers (:class:`~pyro_adv.nn.MixtureMLP`), so it can put
        mass on separated modes without a bridge between them. Each component starts
        at its own place (``component_init``), and gradient descent carries them into
        different modes (see :doc:`/guide/modes`). ``1`` is a single network.
    :param str component_init: where the components start. ``"likelihood"``
        (default): the k-means centres of 1,024 prior draws resampled by their
        likelihood, tempered so that at least :math:`\max(8K, 64)` draws count
        (effective sample size): the components start where the data put posterior
        mass, on every mode the draws reach. It needs one run of the model under a
        plate of draws; a model that does not broadcast falls back to ``"prior"``:
        prior draws reflected about the prior's centre (the coordinatewise median of
        255 draws) in antithetic pairs, so the components start spread over the prior,
        on both sides of its centre.
    :param float component_spread: with ``component_init="prior"``, multiplies the
        components' starting offsets from the prior's centre (default 1: the prior
        draws themselves).
    :param bool learn_weights: learn the mixture weights :math:`w = \mathrm{softmax}(a)`
        (default, with ``num_components > 1``), so modes of unequal mass get their
        shares; ``False`` keeps them equal. In training each draw's component is an
        auxiliary ``Categorical`` site ``_<name>_component`` of the guide, whose
        weights :class:`~pyro_adv.infer.TraceAVB_ELBO` learns by the score function
        (:math:`\partial \mathcal{L} / \partial w_k = \mathbb{E}_{q_k}[\log q - \log p]`
        up to a constant); :meth:`get_posterior` picks the component by a bin of one
        more noise coordinate, with the learned weights as bin widths.
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
        component_init="likelihood",
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
        if component_init not in ("likelihood", "prior"):
            raise ValueError(
                "AutoImplicit: component_init must be 'likelihood' or 'prior', "
                f"got {component_init!r}"
            )
        self.component_init = component_init
        # the model itself, without the init messenger AutoContinuous wraps it in (a
        # tuple, as Pyro keeps it, so that a PyroModule model's parameters do not
        # become the guide's)
        self._prior_model = (model,)
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
                offsets = None
                if self.component_init == "likelihood":
                    offsets = self._likelihood_offsets(init, args, kwargs)
                if offsets is None:
                    offsets = self._component_offsets(init)
                self.sampler.offsets.copy_(offsets)
        if self._weighted:
            self.component_logits = torch.nn.Parameter(init.new_zeros(self.num_components))
        self.sampler.use_averages = True
        # with learned weights one more noise coordinate, seen by no network, picks the
        # component (see _generate)
        self.register_buffer("_noise_loc", init.new_zeros(self.noise_dim + self._weighted))

    def _likelihood_offsets(self, init, args, kwargs, num_draws=1024):
        # k-means centres of prior draws resampled by their tempered likelihood: the
        # components start where the data put posterior mass, on every mode the draws
        # reach (as a GAN's components start on the k-means centres of the data).
        # None where the model cannot run vectorized over draws: prior placement then.
        draws, log_lik = _prior_draws_and_likelihood(self, num_draws, args, kwargs)
        if draws is None:
            return None
        weights = _tempered_weights(log_lik, min_ess=max(8 * self.num_components, 64))
        if weights is None:
            return None
        picks = torch.multinomial(weights, 512, replacement=True)
        centres = kmeans(draws[picks], self.num_components)
        return centres.to(init) - init

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


def _prior_draws_and_likelihood(guide, num_draws, args, kwargs):
    """
    ``num_draws`` joint prior draws of ``guide``'s latents, packed unconstrained as its
    sampler's output (shape ``(num_draws, latent_dim)``), and each draw's log
    likelihood (observed and factor sites); ``(None, None)`` if the model does not run
    vectorized under a plate of draws.
    """
    sites = list(guide.prototype_trace.iter_stochastic_nodes())
    model = guide._prior_model[0]
    try:
        with torch.no_grad(), poutine.block():
            # the prototype trace hides observed sites: their plates count too
            plain = poutine.trace(model).get_trace(*args, **kwargs)
            nesting = max(
                [
                    -f.dim
                    for site in plain.nodes.values()
                    if site["type"] == "sample"
                    for f in site["cond_indep_stack"]
                    if f.vectorized
                ]
                + [0]
            )
            with pyro.plate("_autoimplicit_placement", num_draws, dim=-(nesting + 1)):
                trace = poutine.trace(model).get_trace(*args, **kwargs)
            # (a subsample site would score a float32 CPU zero)
            trace.compute_log_prob(lambda name, site: not site_is_subsample(site))
            log_lik = 0.0
            for site in trace.nodes.values():
                if site["type"] != "sample" or not site["is_observed"]:
                    continue
                if site_is_subsample(site):
                    continue
                lp = site["log_prob"]
                # a site that does not depend on the latents is a constant: left out
                if lp.dim() > nesting and lp.shape[-(nesting + 1)] == num_draws:
                    per_draw = lp.movedim(-(nesting + 1), 0).reshape(num_draws, -1).sum(-1)
                    log_lik = log_lik + per_draw
            packed = []
            for name, proto in sites:
                value = trace.nodes[name]["value"]
                u = biject_to(proto["fn"].support).inv(value)
                u = u.reshape(num_draws, -1)
                if u.shape[1] != proto["value"].numel():
                    return None, None
                packed.append(u)
    except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError):
        return None, None
    if not torch.is_tensor(log_lik):
        return None, None
    return torch.cat(packed, -1), log_lik


def _tempered_weights(log_lik, min_ess):
    r"""
    Weights :math:`\propto e^{\beta \ell}` with the largest :math:`\beta \le 1` whose
    effective sample size is at least ``min_ess`` (bisection on :math:`\log \beta`), or
    ``None`` if no likelihood is finite.
    """
    finite = torch.isfinite(log_lik)
    if not finite.any():
        return None
    ll = torch.where(finite, log_lik, torch.full_like(log_lik, -float("inf"))).double()

    def weights(beta):
        w = torch.softmax(beta * ll, 0)
        return w, 1.0 / (w * w).sum()

    w, ess = weights(1.0)
    if ess >= min_ess:
        return w.to(log_lik.dtype)
    lo, hi = -30.0, 0.0  # log beta
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if weights(math.exp(mid))[1] >= min_ess:
            lo = mid
        else:
            hi = mid
    return weights(math.exp(lo))[0].to(log_lik.dtype)


class _enter_plates:
    def __init__(self, site, plates):
        self.frames = [plates[f.name] for f in site["cond_indep_stack"] if f.vectorized]

    def __enter__(self):
        for p in self.frames:
            p.__enter__()

    def __exit__(self, *exc):
        for p in reversed(self.frames):
            p.__exit__(*exc)
