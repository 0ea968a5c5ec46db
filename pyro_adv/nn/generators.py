"""Neural samplers: unconditional generators and amortized implicit encoders."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_adv.distributions.implicit import ImplicitDistribution, record_choice
from pyro_adv.nn.averaging import averaged_value, raw_weights
from pyro_adv.nn.mixture import MixtureMLP, component_index, kmeans
from pyro_adv.nn.mlp import MLP

__all__ = ["MLPGenerator", "ImplicitEncoder"]

#: ``log_context="auto"`` takes the log of a non-negative context column whose first
#: batch's largest value exceeds ``LOG_CONTEXT_RATIO`` times its ``LOG_CONTEXT_QUANTILE``
#: quantile: at least a fifth of the batch lies below a tenth of its maximum, so the
#: column spans more than a decade and a mean/sd standardization would squeeze that
#: fifth into a sliver of input units. Measured on 20,000 batches each
#: (/work/runs/ctx/detect_sim4.py): a Gaussian column (any mean) triggers it in at
#: most 0.5% of batches of 16, 0.03% of 32 and none of 64 or more (only batches that
#: happen to be non-negative can); a uniform column on [0, a] in 5.8% / 2.3% / 0.4% /
#: 0% of batches of 16 / 32 / 64 / 256; an exponential one in 65% / 87% / 98% / 100%.
LOG_CONTEXT_RATIO = 10.0
LOG_CONTEXT_QUANTILE = 0.2


class MLPGenerator(MLP):
    r"""
    A generator network ``G(eps)`` for :class:`~pyro_adv.distributions.ImplicitDistribution`
    (thesis section 3.1): an MLP from ``noise_dim`` noise to ``output_dim`` values.

    Example (the thesis's bivariate-normal generator, section 3.2.1)::

        generator = MLPGenerator(noise_dim=2, output_dim=2, hidden_dims=(20,),
                                 activation="softplus")

    Outside training it generates with the weight average its objective keeps
    (:mod:`pyro_adv.nn.averaging`); set ``use_averages = False`` for the raw weights.

    :param int noise_dim: width of the noise input.
    :param int output_dim: width of a generated value.
    :param tuple hidden_dims: widths of the hidden layers.
    :param activation: hidden activation (name or module class).
    :param int num_components: ``K > 1`` makes the generator a mixture of ``K``
        networks sharing their hidden layers: the last noise coordinate's bin
        :math:`\lfloor K \Phi(\epsilon_{-1}) \rfloor` picks one per draw, which
        gets its own first-layer bias and output offset (as
        :class:`~pyro_adv.nn.MixtureMLP`), so separated modes need no bridge of
        generated points between them (see :doc:`/guide/modes`).
    :param float component_spread: sd of the components' starting output offsets
        (antithetic pairs), in output units.
    :param str component_init: ``"data"`` (default): :class:`~pyro_adv.infer.Trace_GAN`
        moves the components onto k-means centres of the first batch of data before
        the first step (:meth:`place_components`); ``"spread"``: keep the random
        starting offsets.
    """

    use_averages = True

    def __init__(
        self,
        noise_dim,
        output_dim,
        hidden_dims=(64, 64),
        activation="elu",
        num_components=1,
        component_spread=1.0,
        component_init="data",
    ):
        if component_init not in ("data", "spread"):
            raise ValueError(
                f"MLPGenerator: component_init must be 'data' or 'spread', got {component_init!r}"
            )
        if isinstance(noise_dim, bool) or not isinstance(noise_dim, int) or noise_dim < 1:
            raise ValueError(
                f"MLPGenerator: noise_dim must be a positive integer, got {noise_dim!r}"
            )
        if isinstance(num_components, bool) or not isinstance(num_components, int):
            raise ValueError(
                f"MLPGenerator: num_components must be a positive integer, got {num_components!r}"
            )
        if num_components < 1:
            raise ValueError(
                f"MLPGenerator: num_components must be a positive integer, got {num_components!r}"
            )
        extra = num_components if num_components > 1 else 0
        super().__init__(noise_dim + extra, output_dim, hidden_dims, activation)
        self.noise_dim = noise_dim
        self.num_components = num_components
        if num_components > 1:
            # antithetic pairs of starting offsets, as MixtureMLP's
            half = torch.randn((num_components + 1) // 2, output_dim)
            offsets = torch.cat([half, -half])[:num_components] * component_spread
            self.offsets = nn.Parameter(offsets.to(self.net[0].weight))
        else:
            self.offsets = None
        # placed once, on fresh offsets only: a generator whose offsets came back from a
        # checkpoint or the param store keeps them (see place_components)
        self._initial_offsets = None
        # the k-means centres and width of the placement (place_components), for the
        # discriminator's mode features; not saved with the state
        self.component_centres = None
        self.component_bandwidth = None
        if num_components > 1 and component_init == "data":
            self._initial_offsets = self.offsets.detach().cpu().clone()

    @property
    def component_placement_pending(self):
        """Whether :meth:`place_components` would still move the offsets (fresh, ``"data"``)."""
        if self._initial_offsets is None:
            return False
        if not torch.equal(self.offsets.detach().cpu(), self._initial_offsets):
            self._initial_offsets = None  # trained or loaded: never placed again
            return False
        return True

    @torch.no_grad()
    def place_components(self, data, num_draws=4096):
        r"""
        Data-dependent initialization of a mixture generator: centres
        :math:`c_1..c_K` of :math:`K`-means on ``data`` (k-means++ seeds, the best of
        10 Lloyd runs), then each component's offset set to
        :math:`o_k = c_k - \bar G_k`, where :math:`\bar G_k` is the mean output of
        component :math:`k` without its offset, so each component starts centred on
        a cluster of the data. Separated modes then need no component to cross a
        gap during training, which gradient descent rarely does (Salmona et al.
        2022). :class:`~pyro_adv.infer.Trace_GAN` calls this once, on the first
        batch of each observed site a mixture generator simulates, and gives that
        site's discriminator the centres as mode features
        (:class:`~pyro_adv.nn.ModeFeatureDiscriminator`; kept here as
        ``component_centres`` and ``component_bandwidth``, the data's root-mean-square
        distance per coordinate to their centre). (Also matching
        each cluster's width, by per-component or shared output scales, measured
        worse on the 25-Gaussian grid: see :doc:`/guide/modes`.)

        :param torch.Tensor data: shape ``(n, output_dim)``, ``n >= num_components``.
        :param int num_draws: noise draws for :math:`\bar G_k`.
        """
        if self.num_components == 1:
            return
        data = data.detach().reshape(-1, self.output_dim).to(self.offsets)
        if data.shape[0] < self.num_components:
            raise ValueError(
                f"MLPGenerator.place_components: {data.shape[0]} data rows cannot place "
                f"{self.num_components} components"
            )
        centres = kmeans(data, self.num_components)
        nearest = torch.cdist(data, centres).argmin(-1)
        self.component_centres = centres.clone()
        # the root-mean-square distance of a coordinate to its centre
        self.component_bandwidth = float((data - centres[nearest]).pow(2).mean().sqrt())
        eps = self.noise(num_draws).sample()
        k = self.component(eps)
        code = nn.functional.one_hot(k, self.num_components).to(eps.dtype)
        with raw_weights():
            raw = MLP.forward(self, torch.cat([eps, code], -1))
        sums = torch.zeros_like(centres).index_add_(0, k, raw)
        counts = torch.bincount(k, minlength=self.num_components).unsqueeze(-1)
        self.offsets.copy_(centres - sums / counts.clamp_min(1))
        self._initial_offsets = None

    def component(self, eps):
        """The mixture component each noise row picks (its last coordinate's bin)."""
        return component_index(eps[..., -1], self.num_components)

    def forward(self, eps):
        if self.num_components == 1:
            return super().forward(eps)
        if eps.shape[-1] != self.noise_dim:
            raise ValueError(
                f"MLPGenerator: expected noise with {self.noise_dim} features, "
                f"got shape {tuple(eps.shape)}"
            )
        k = self.component(eps)
        code = nn.functional.one_hot(k, self.num_components).to(eps.dtype)
        offsets = averaged_value(self.offsets) if self.use_averages else self.offsets
        return super().forward(torch.cat([eps, code], -1)) + offsets[k]

    def noise(self, *batch_shape):
        """A standard-normal noise distribution with this generator's dtype and device."""
        p = next(self.parameters())
        zeros = p.new_zeros(torch.Size(batch_shape) + (self.noise_dim,))
        # standard normal noise: nothing to validate (a device read per argument check)
        return dist.Normal(zeros, 1.0, validate_args=False).to_event(1)

    def distribution(self, *batch_shape):
        """``ImplicitDistribution(self, self.noise(*batch_shape))``."""
        return ImplicitDistribution(self, self.noise(*batch_shape), (self.output_dim,))


def _mixture_of_regressions(design, z, num_components, jitter, iterations=50):
    r"""
    A mixture of :math:`K` linear regressions :math:`z \sim \sum_k \pi_k
    N(X \beta_k, \Sigma_k)` fitted by EM (Jacobs et al. 1991; the regressions share
    the design :math:`X`), started from k-means on the residuals of one regression:
    a posterior with several branches (:math:`z \approx \pm\sqrt{x}`) gets one
    regression per branch. ``None`` if a covariance is not positive definite.

    :returns: ``(coef (K, p, d), scale_tril (K, d, d))``.
    """
    n, p = design.shape
    d = z.shape[1]
    residual = z - design @ torch.linalg.lstsq(design, z).solution
    labels = torch.cdist(residual, kmeans(residual, num_components)).argmin(-1)
    resp = torch.nn.functional.one_hot(labels, num_components).to(z.dtype)  # (n, K)
    eye_p = torch.eye(p, dtype=z.dtype)
    floor = jitter * z.var(0).clamp_min(1e-30)
    for it in range(iterations + 1):
        weight = resp.sum(0).clamp_min(1e-9)  # (K,)
        xw = design.T.unsqueeze(0) * resp.T.unsqueeze(1)  # (K, p, n)
        coef = torch.linalg.solve(xw @ design + 1e-9 * eye_p, xw @ z)  # (K, p, d)
        residual = z.unsqueeze(0) - design.unsqueeze(0) @ coef  # (K, n, d)
        cov = (residual.mT * resp.T.unsqueeze(1)) @ residual / weight[:, None, None]
        cov = cov + torch.diag_embed(floor.expand(num_components, d))
        tril, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()) or not torch.isfinite(tril).all():
            return None
        if it == iterations:
            return coef, tril
        log_lik = torch.distributions.MultivariateNormal(
            torch.zeros(d, dtype=z.dtype), scale_tril=tril.unsqueeze(1)
        ).log_prob(residual)  # (K, n)
        resp = torch.softmax(log_lik.T + torch.log(weight / n), -1)


class ImplicitEncoder(nn.Module):
    r"""
    An amortized implicit posterior ``z = G(x, eps)`` (Mescheder et al. 2017,
    thesis section 4.2): the context ``x`` and fresh noise ``eps ~ N(0, I)`` are
    concatenated and passed through an MLP. Calling the encoder on a batch of
    contexts returns an :class:`~pyro_adv.distributions.ImplicitDistribution`
    with the context's batch shape and event shape ``(latent_dim,)``:

    .. math:: q_\gamma(z \mid x):\quad z = G_\gamma(x, \epsilon),\ \epsilon \sim N(0, I).

    Example (thesis 4.2.1 networks)::

        encoder = ImplicitEncoder(input_dim=1, latent_dim=2, noise_dim=3,
                                  hidden_dims=(20, 20, 20), activation="tanh")

        def guide(x):
            pyro.module("encoder", encoder)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", encoder(x.unsqueeze(-1)))

    Noise follows the context's device and dtype; move the encoder itself with
    ``.to()`` as any torch module.

    **Defaults** (measured on targets the tests do not use: ``benchmarks/new_user.py``):
    three hidden layers of 64 ELU units and at least 8 noise dimensions (a
    two-layer network with ``latent_dim + 1`` noise dims left the exponential
    model's ring posterior 7-10% off). The context is **standardized**: the
    first call fixes a mean and scale per feature from its batch (data-dependent
    initialization of two trained parameters, ``context_loc`` and
    ``context_log_scale``), so raw observations of any scale can be fed; make
    the first call on a representative batch (the first training step does).
    Before that, a non-negative column that spans more than a decade (at least a
    fifth of the first batch below a tenth of its maximum, as the exponential
    model's ``x`` do) is put on a log scale, ``asinh(x / m)`` with ``m`` that
    batch's 20% quantile of the column's positive values (``log_context="auto"``):
    standardized by its sd, such a column's small values, where a posterior may
    change fastest, are squeezed into a sliver of input units (x in [0.25, 3] into
    a fifth of a unit for the 4,096 observations over [0, 40] of Table 5's
    ``exponential_avb``; with the log, a whole unit). ``asinh`` is a log for
    ``x >> m``, linear near 0 and defined for any ``x``, so a query below the
    training range gets no NaN. Gaussian-like columns are never transformed: of
    20,000 Gaussian batches (any mean), at most 0.5% of batches of 16 trigger it,
    0.03% of 32, none of 64 or more; uniform ones on [0, a] 5.8% / 2.3% / 0.4% of
    16 / 32 / 64 rows, none of 256. :func:`~pyro_adv.infer.autoguide.amortized_guide`
    fixes the log and the standardization from the whole data set
    (:meth:`initialize_context`), not its first minibatch. The decisions and the
    units are buffers (``log_context_mask``, ``log_context_unit``), saved with the
    ``state_dict``: a loaded encoder does not decide again.
    Outside training the encoder samples with the weight average its objective
    keeps (:mod:`pyro_adv.nn.averaging`); set ``use_averages = False`` for the
    raw weights. :class:`~pyro_adv.infer.Trace_ALI` and
    :class:`~pyro_adv.infer.TraceAVB_ELBO` also give the encoder a **regression
    base** before its first step (:meth:`fit_regression_base`): the network then
    outputs the latents in units of the residual spread of a linear regression on
    ``x``, around that regression's prediction.

    :param int input_dim: width of the context ``x``.
    :param int latent_dim: width of ``z``.
    :param int noise_dim: width of ``eps`` (default ``max(8, latent_dim + 1)``).
    :param tuple hidden_dims: widths of the hidden layers.
    :param activation: hidden activation.
    :param callable context_transform: applied to the context before the network
        (e.g. ``torch.log1p``); when given, it replaces the automatic log
        (``log_context`` must then be ``"auto"`` or ``False``).
    :param log_context: ``"auto"`` (default): the first batch decides, per column,
        whether to take ``asinh(x / m)`` (above); ``True``: every column (each must
        be non-negative in the first batch); ``False``: none.
    :param bool standardize_context: standardize the (transformed) context with
        first-batch statistics.
    :param int num_components: ``K > 1``: a mixture of ``K`` networks picked per draw
        by the last noise coordinate (:class:`~pyro_adv.nn.MixtureMLP`), for
        posteriors with separated modes.
    :param float component_spread: sd of the components' starting output offsets.
    :param bool regression_base: let the objective (:class:`~pyro_adv.infer.Trace_ALI`,
        :class:`~pyro_adv.infer.TraceAVB_ELBO`) fix a linear regression base on simulated
        ``(x, z)`` pairs
        before the first step (:meth:`fit_regression_base`); ``False``: the network
        alone (default: on). A mixture gets one regression per component, a mixture
        of linear regressions fitted by EM, so each component starts on its own
        branch of a multimodal posterior (a single shared base had drawn both
        components of a two-component encoder onto one crescent of two_moons).
    :param bool learn_weights: a mixture's weights :math:`w_k(x)` depend on the
        context and are learned (default with ``num_components > 1``): a small
        network maps the standardized context to the weights' logits (zero at the
        start: equal weights), and one more noise coordinate, which no other
        network sees, picks the component by the bin it falls in, the weights
        being the bins' widths. That choice is not reparameterized: the objectives
        (:class:`~pyro_adv.infer.Trace_ALI`, :class:`~pyro_adv.infer.TraceAVB_ELBO`)
        train the weights by the score function of each draw's own loss
        (:meth:`~pyro_adv.distributions.ImplicitDistribution.choice_log_prob`). With
        equal weights (``False``) a mode gets a multiple of :math:`1/K` of the mass,
        whatever its posterior mass.
    """

    use_averages = True

    def __init__(
        self,
        input_dim,
        latent_dim,
        noise_dim=None,
        hidden_dims=(64, 64, 64),
        activation="elu",
        context_transform=None,
        standardize_context=True,
        num_components=1,
        component_spread=1.0,
        regression_base=None,
        log_context="auto",
        learn_weights=None,
    ):
        super().__init__()
        if input_dim < 1 or latent_dim < 1:
            raise ValueError(
                f"ImplicitEncoder: input_dim and latent_dim must be positive, "
                f"got {input_dim} and {latent_dim}"
            )
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.noise_dim = max(8, latent_dim + 1) if noise_dim is None else noise_dim
        if (
            isinstance(self.noise_dim, bool)
            or not isinstance(self.noise_dim, int)
            or self.noise_dim < 1
        ):
            raise ValueError(
                f"ImplicitEncoder: noise_dim must be a positive integer, got {noise_dim!r}"
            )
        if context_transform is not None and not callable(context_transform):
            raise ValueError(
                f"ImplicitEncoder: context_transform must be callable, got {context_transform!r}"
            )
        if not (log_context == "auto" or log_context is True or log_context is False):
            raise ValueError(
                f'ImplicitEncoder: log_context must be "auto", True or False, got {log_context!r}'
            )
        if context_transform is not None and log_context is True:
            raise ValueError(
                "ImplicitEncoder: context_transform and log_context=True both transform "
                "the context; give one (a context_transform replaces the automatic log)"
            )
        self.context_transform = context_transform
        self.standardize_context = standardize_context
        # the user's transform takes precedence over the automatic log
        self.log_context = False if context_transform is not None else log_context
        self.num_components = num_components
        if num_components == 1:
            self.net = MLP(input_dim + self.noise_dim, latent_dim, hidden_dims, activation)
        else:
            # the last input column is noise: it picks the component
            self.net = MixtureMLP(
                input_dim + self.noise_dim,
                latent_dim,
                num_components,
                hidden_dims,
                activation,
                spread=component_spread,
            )
        self.net.use_averages = True
        # context-dependent mixture weights: logits from a small network, zero at the
        # start (equal weights); trained by the objectives' score function
        self.learn_weights = num_components > 1 and (
            True if learn_weights is None else bool(learn_weights)
        )
        if self.learn_weights:
            self.weight_net = MLP(input_dim, num_components, (32,), activation, output_scale=0.0)
            self.weight_net.use_averages = True
        if standardize_context:
            self.context_loc = nn.Parameter(torch.zeros(input_dim))
            self.context_log_scale = nn.Parameter(torch.zeros(input_dim))
        if self.log_context is not False:
            # which columns the first batch put on a log scale, and their units m
            self.register_buffer("log_context_mask", torch.zeros(input_dim, dtype=torch.bool))
            self.register_buffer("log_context_unit", torch.ones(input_dim))
        if standardize_context or self.log_context is not False:
            # whether the first batch has fixed them (a buffer: saved with state_dict)
            self.register_buffer("context_initialized", torch.tensor(False))
        # the linear regression base z = a + B c + L G(c, eps) (fit_regression_base);
        # the identity until fitted
        # a mixture gets one base per component (a mixture of regressions): a single
        # shared base drew both components of a 2-component ALI encoder onto one
        # crescent of two_moons
        self.regression_base = True if regression_base is None else bool(regression_base)
        lead = (num_components,) if num_components > 1 else ()
        self.register_buffer("base_loc", torch.zeros(lead + (latent_dim,)))
        self.register_buffer("base_coef", torch.zeros(lead + (latent_dim, input_dim)))
        eye = torch.eye(latent_dim).expand(lead + (-1, -1)).clone()
        self.register_buffer("base_scale_tril", eye)
        self.register_buffer("base_fitted", torch.tensor(False))

    @property
    def regression_base_pending(self):
        """Whether an objective should fit the regression base (on, and not yet fitted)."""
        return self.regression_base and not self._base_ready()

    def _base_ready(self):
        return self._buffer_flag("base_fitted")

    def _buffer_flag(self, name):
        # a boolean buffer read once (a device read), then remembered in Python until
        # a state is loaded; only True is remembered
        flags = self.__dict__.setdefault("_flags", {})
        if not flags.get(name, False):
            flags[name] = bool(getattr(self, name))
        return flags[name]

    def _set_buffer_flag(self, name):
        getattr(self, name).fill_(True)
        self.__dict__.setdefault("_flags", {})[name] = True

    @torch.no_grad()
    def fit_regression_base(self, context, z, rows_per_coefficient=4, jitter=1e-6):
        r"""
        Fixes the encoder's **regression base** from simulated pairs
        :math:`(x_i, z_i) \sim p(x \mid z)\,p(z)`: the least-squares fit
        :math:`z \approx a + B c` on the (transformed) context :math:`c` and the
        Cholesky factor :math:`L` of the residuals' covariance, after which the
        encoder samples

        .. math:: z = a + B c + L\, G_\gamma(c, \epsilon).

        This is the linear regression adjustment of approximate Bayesian computation
        (Beaumont, Zhang and Balding 2002) used as a preconditioner: for a
        linear-Gaussian model :math:`a + Bc` is the posterior mean and :math:`LL^\top`
        its covariance, and in general the network only has to learn what the
        linear fit misses, *in units of the residual spread*. Without it the network
        outputs the posterior in prior units, and along a direction where the
        posterior is many times narrower than the prior its mean and width must be
        set to a small fraction of the output scale, which GAN-style training noise
        does not reach (ALI on random linear-Gaussian simulators left such
        directions 20-45% too narrow and the mean 0.3 sd off on half the seeds).
        :class:`~pyro_adv.infer.Trace_ALI` calls this once, on its first step's
        simulated pairs, and :class:`~pyro_adv.infer.TraceAVB_ELBO` on one
        gradient-free forward run of the model, when the encoder's context is an
        observed site's value (as :func:`~pyro_adv.infer.autoguide.amortized_guide`
        passes it) and the model has no parameters being trained (a decoder's first
        simulations would fix the base on an untrained model).

        A mixture encoder (``num_components = K > 1``) gets a mixture of :math:`K`
        linear regressions instead, fitted by EM from k-means on the one regression's
        residuals, one base :math:`(a_k, B_k, L_k)` per component and no offsets on
        top: where the posterior has several branches (:math:`z \approx \pm\sqrt{x}`,
        on which one regression is flat) each component starts on its own.

        :param torch.Tensor context: contexts of the simulated data, shape ``(n, input_dim)``.
        :param torch.Tensor z: their latents, shape ``(n, latent_dim)``.
        :param int rows_per_coefficient: fewer than this many rows per regression
            coefficient leave the base as it is.
        :returns: whether the base was fitted.
        :rtype: bool
        """
        c = self._transform_context(context.detach().reshape(-1, self.input_dim))
        z = z.detach().reshape(-1, self.latent_dim).to(c.dtype)
        n = c.shape[0]
        if n != z.shape[0] or n < rows_per_coefficient * (self.input_dim + 1):
            return False
        if not (torch.isfinite(c).all() and torch.isfinite(z).all()):
            return False
        design = torch.cat([torch.ones_like(c[:, :1]), c], -1).double()
        if self.num_components > 1:
            fitted = _mixture_of_regressions(design, z.double(), self.num_components, jitter)
            if fitted is None:
                return False
            coef, tril = fitted  # (K, 1 + input_dim, latent_dim), (K, latent_dim, latent_dim)
            # each component starts on its own regression: no offsets on top
            self.net.offsets.data.zero_()
        else:
            coef = torch.linalg.lstsq(design, z.double()).solution  # (1 + input_dim, latent_dim)
            residual = z.double() - design @ coef
            covariance = residual.mT @ residual / max(n - design.shape[1], 1)
            scale = covariance.diagonal().clamp_min(1e-30)
            tril, info = torch.linalg.cholesky_ex(covariance + jitter * torch.diag(scale))
            if info.item() != 0 or not torch.isfinite(tril).all():
                return False
        self.base_loc.copy_(coef[..., 0, :])
        self.base_coef.copy_(coef[..., 1:, :].mT)
        self.base_scale_tril.copy_(tril)
        self._set_buffer_flag("base_fitted")
        return True

    def _transform_context(self, context):
        # one home for what the network and the regression base read
        dtype = self.base_loc.dtype
        if context.dtype != dtype:
            context = context.to(dtype)
        if self.context_transform is not None:
            context = self.context_transform(context)
        if self._preprocessed and not self._context_ready():
            self._initialize_context(context)
        # the automatic log, as the first batch fixed it
        return self._log_transform(context)

    @property
    def _preprocessed(self):
        # whether the first batch fixes something (the log or the standardization)
        return self.standardize_context or self.log_context is not False

    def _context_ready(self):
        return self._buffer_flag("context_initialized")

    def _takes_log(self):
        # whether the automatic log takes any column, cached like the boolean buffers
        flags = self.__dict__.setdefault("_flags", {})
        if "log_any" not in flags:
            flags["log_any"] = self.log_context is not False and bool(self.log_context_mask.any())
        return flags["log_any"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.__dict__["_flags"] = {}  # the loaded buffers decide again
        saved_weights = any(k.startswith(prefix + "weight_net.") for k in state_dict)
        if self.learn_weights != saved_weights and self.num_components > 1:
            # the two samplers pick components differently: loading one into the
            # other would silently change the encoder's distribution
            saved = "learned" if saved_weights else "equal"
            raise ValueError(
                f"ImplicitEncoder: this state was saved by a mixture encoder with {saved} "
                f"weights; construct the encoder with learn_weights={saved_weights} to load it"
            )
        if self.log_context is not False and prefix + "log_context_mask" not in state_dict:
            # a state saved before the automatic log existed: its encoder took no log
            state_dict[prefix + "log_context_mask"] = torch.zeros_like(self.log_context_mask)
            state_dict[prefix + "log_context_unit"] = torch.ones_like(self.log_context_unit)
            state_dict.setdefault(prefix + "context_initialized", torch.tensor(True))
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _decide_log(self, flat):
        # per column: non-negative, and its maximum above LOG_CONTEXT_RATIO times its
        # LOG_CONTEXT_QUANTILE quantile (a fifth of the batch below a tenth of the maximum)
        low = torch.quantile(flat, LOG_CONTEXT_QUANTILE, dim=0)
        lowest, highest = flat.min(0).values, flat.max(0).values
        nonnegative = lowest >= 0
        if self.log_context is True:
            if not bool(nonnegative.all()):
                bad = [i for i, ok in enumerate(nonnegative.tolist()) if not ok]
                raise ValueError(
                    f"ImplicitEncoder: log_context=True needs non-negative context "
                    f"columns, but column(s) {bad} of the first batch have negative values"
                )
            mask = highest > 0
        else:
            mask = nonnegative & (highest > LOG_CONTEXT_RATIO * low)
        # m: the quantile of the column's positive values (zeros would make it 0)
        positive = torch.where(flat > 0, flat, torch.full_like(flat, float("nan")))
        unit = torch.nanquantile(positive, LOG_CONTEXT_QUANTILE, dim=0)
        unit = torch.where(mask & (unit > 0), unit, torch.ones_like(unit))
        self.log_context_mask.copy_(mask)
        self.log_context_unit.copy_(unit)
        self.__dict__.setdefault("_flags", {})["log_any"] = bool(mask.any())

    def _log_transform(self, context):
        if not self._takes_log():
            return context
        unit = self.log_context_unit
        return torch.where(self.log_context_mask, torch.asinh(context / unit), context)

    @torch.no_grad()
    def _initialize_context(self, context):
        flat = context.detach().reshape(-1, context.shape[-1])
        if not torch.isfinite(flat).all():
            raise ValueError(
                "ImplicitEncoder: the first context batch, which fixes the context "
                "standardization, has NaN or inf values"
            )
        if self.log_context is not False:
            self._decide_log(flat)
            flat = self._log_transform(flat)
        if not self.standardize_context:
            self._set_buffer_flag("context_initialized")
            return
        loc = flat.mean(0)
        scale = flat.std(0) if flat.shape[0] > 1 else torch.ones_like(loc)
        scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))
        self.context_loc.copy_(loc)
        self.context_log_scale.copy_(scale.log())
        self._set_buffer_flag("context_initialized")

    @property
    def chooser_dim(self):
        """Noise columns beyond ``noise_dim``: 1 when the weights are learned (it picks
        the component), else 0."""
        return 1 if self.learn_weights else 0

    def generate(self, context, noise):
        """``G(x, eps)`` for broadcastable ``context`` and ``noise`` (of width
        ``noise_dim + chooser_dim``)."""
        return self._draw(context, noise)[0]

    def component_weights(self, context):
        r"""
        The mixture weights :math:`w_k(x)` at each context (equal unless
        ``learn_weights``), detached.

        :param torch.Tensor context: shape ``batch + (input_dim,)``.
        :returns: shape ``batch + (num_components,)``.
        """
        context = self._check_context(context)
        with torch.no_grad():
            if not self.learn_weights:
                shape = context.shape[:-1] + (self.num_components,)
                return context.new_full(shape, 1.0 / self.num_components)
            return torch.softmax(self.weight_net(self._network_context(context)[1]), -1)

    def _draw(self, context, noise):
        # (value, log w_k(x) of each draw's component or None), with the weights the
        # encoder samples with (averages outside training)
        if not self.use_averages:
            with raw_weights():
                return self._generate(context, noise)
        return self._generate(context, noise)

    def _network_context(self, context):
        # the transformed context (for the regression base) and the standardized one
        # (what the networks read)
        context = transformed = self._transform_context(context)
        if self.standardize_context:
            loc = averaged_value(self.context_loc)
            log_scale = averaged_value(self.context_log_scale)
            context = (context - loc) * torch.exp(-log_scale)
        return transformed, context

    def _generate(self, context, noise):
        transformed, context = self._network_context(context)
        if self.learn_weights:
            noise, chooser = noise[..., :-1], noise[..., -1]
        shape = torch.broadcast_shapes(context.shape[:-1], noise.shape[:-1])
        inputs = torch.cat(
            [context.expand(shape + context.shape[-1:]), noise.expand(shape + noise.shape[-1:])],
            dim=-1,
        )
        component = log_weight = None
        if self.learn_weights:
            # detached: the score function's noise must not move the standardization
            log_w = torch.log_softmax(self.weight_net(context.detach()), -1)
            log_w = log_w.expand(shape + log_w.shape[-1:])
            with torch.no_grad():
                # the weights as the widths of the chooser's bins
                edges = log_w.exp().cumsum(-1)[..., :-1].contiguous()
                u = 0.5 * torch.erfc(-chooser.expand(shape) / 2**0.5)
                component = torch.searchsorted(edges, u.unsqueeze(-1).contiguous()).squeeze(-1)
                component = component.clamp_(0, self.num_components - 1)
            log_weight = log_w.gather(-1, component.unsqueeze(-1)).squeeze(-1)
            out = self.net(inputs, component=component)
        else:
            out = self.net(inputs)
        if self._base_ready():
            if self.num_components > 1:
                # the base of each draw's component
                k = self.net.component(inputs) if component is None else component
                transformed = transformed.expand(k.shape + transformed.shape[-1:])
                loc = self.base_loc[k] + (self.base_coef[k] @ transformed.unsqueeze(-1)).squeeze(-1)
                out = loc + (self.base_scale_tril[k] @ out.unsqueeze(-1)).squeeze(-1)
            else:
                out = (
                    self.base_loc + transformed @ self.base_coef.mT + out @ self.base_scale_tril.mT
                )
        return out, log_weight

    def _check_context(self, context):
        if not torch.is_tensor(context) or context.dim() < 1:
            raise ValueError(
                "ImplicitEncoder expects a context tensor of shape batch_shape + "
                f"({self.input_dim},), got {context!r}"
            )
        if context.shape[-1] != self.input_dim:
            raise ValueError(
                f"ImplicitEncoder: context has {context.shape[-1]} features "
                f"(shape {tuple(context.shape)}), expected input_dim={self.input_dim}; "
                "for scalar data use x.unsqueeze(-1)"
            )
        dtype = next(self.net.parameters()).dtype
        if context.dtype != dtype:
            # integer counts or float64 data: the network's dtype, not a matmul error
            context = context.to(dtype)
        return context

    def initialize_context(self, context, max_rows=4096):
        """
        Fixes the context preprocessing (the automatic log and the standardization)
        from ``context`` unless it is already fixed; the first call does it otherwise.
        :func:`~pyro_adv.infer.autoguide.amortized_guide` calls it with the whole
        data set, so a minibatch of 32 does not decide alone.

        :param torch.Tensor context: observations, shape ``(N, input_dim)``.
        :param int max_rows: at most this many rows are used, evenly strided.
        """
        if not self._preprocessed or self._context_ready():
            return
        flat = self._check_context(context).reshape(-1, self.input_dim)
        self._transform_context(flat[:: -(-flat.shape[0] // max_rows)])

    def forward(self, context):
        context = self._check_context(context)
        if self._preprocessed and not self._context_ready():
            self._transform_context(context)  # the first batch fixes the preprocessing
        batch_shape = context.shape[:-1]
        zeros = context.new_zeros(batch_shape + (self.noise_dim + self.chooser_dim,))
        # standard normal noise: nothing to validate (a device read per argument check)
        noise = dist.Normal(zeros, 1.0, validate_args=False).to_event(1)
        q = ImplicitDistribution(
            _EncoderSampler(self, context), noise, event_shape=(self.latent_dim,)
        )
        # where the draws come from, for objectives that initialize the encoder
        # (Trace_ALI's regression base)
        q.encoder, q.context = self, context
        return q


class _EncoderSampler:
    """``eps -> G(x, eps)`` at one context; with learned mixture weights it reports
    each draw's component log-weight (:func:`~pyro_adv.distributions.implicit.record_choice`)
    for the objectives' score function."""

    def __init__(self, encoder, context):
        self.encoder, self.context = encoder, context

    def __call__(self, eps):
        value, log_weight = self.encoder._draw(self.context, eps)
        if log_weight is not None:
            record_choice(eps, log_weight)
        return value
