"""
TraceAVB_ELBO against an independent estimator: guides whose sites have a known
density are presented to AVB as implicit, so AVB must estimate ``log q`` with its
discriminator while ``Trace_ELBO`` scores the same guide exactly. Once the
discriminator has converged (the guide is frozen, only the discriminator learns),
the two losses must agree within Monte Carlo error, and so must their gradients.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_adv.distributions import HiddenDensity
from pyro_adv.infer import TraceAVB_ELBO, is_discriminator_param


def _site(name, fn, hide):
    return pyro.sample(name, HiddenDensity(fn) if hide else fn)


def _param(name, value):
    return pyro.param(name, torch.tensor(value))


# ---------------------------------------------------------------- the problems
X_FLAT = torch.tensor([0.8, 1.6, 0.4, 1.1, 2.0])


def flat_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z[..., 0] + 0.5 * z[..., 1], 1.0), obs=x)


def flat_guide(x, hide=True):
    loc = _param("loc", [0.5, 0.4])
    tril = _param("tril", [[0.5, 0.0], [-0.3, 0.6]])
    _site("z", dist.MultivariateNormal(loc, scale_tril=tril), hide)


X_COUNTS = torch.tensor([3.0, 5.0, 4.0, 6.0, 2.0, 4.0])


def constrained_model(x):
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Poisson(rate), obs=x)


def constrained_guide(x, hide=True):
    # a Gamma guide: skewed in the unconstrained log-rate the discriminator sees
    _site("rate", dist.Gamma(_param("alpha", 6.0), _param("beta", 1.6)), hide)


X_HIER = torch.tensor([1.2, -0.3, 2.1, 0.4, 1.7, 0.9])


def hierarchical_model(x, subsample=None):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample=subsample) as idx:
        z = pyro.sample("z", dist.Normal(g, 0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def hierarchical_guide(x, subsample=None, hide=True):
    g = _site("g", dist.Normal(_param("g_loc", 0.6), _param("g_scale", 0.5)), hide)
    a = pyro.param("a", 0.5 * x)
    b = _param("b", 1.0)
    c = _param("c", 0.4)
    with pyro.plate("data", len(x), subsample=subsample) as idx:
        # z_i depends on g through its mean and its spread: a conditional that a
        # Gaussian r(z_i | g) fits only roughly, so the discriminator has work to do
        _site("z", dist.Normal(a[idx] + b * g, 0.4 * torch.exp(c * g)), hide)


X_NESTED = torch.tensor([[0.5, 1.5], [-1.0, 0.2], [2.0, 2.4]])


def nested_model(x):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 3, dim=-2):
        h = pyro.sample("h", dist.Normal(g, 1.0))
        with pyro.plate("members", 2, dim=-1):
            w = pyro.sample("w", dist.Normal(h, 0.5))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)


def nested_guide(x, hide=True):
    g = _site("g", dist.Normal(_param("g_loc", 0.5), _param("g_scale", 0.6)), hide)
    with pyro.plate("groups", 3, dim=-2):
        h = _site("h", dist.Normal(0.5 * x.mean(-1, keepdim=True) + 0.8 * g, 0.6), hide)
        with pyro.plate("members", 2, dim=-1):
            _site("w", dist.Normal(0.5 * x + 0.6 * h, 0.5), hide)


A_MAT = torch.tensor([[1.0, 0.5], [0.3, -1.0], [0.8, 0.8], [-0.4, 1.2], [1.5, 0.1]])
X_MAT = torch.tensor([1.0, -0.5, 1.4, 0.2, 1.9])


def matmul_model(x, broadcast=False):
    # written `A @ z`, as users write it; it fails under a leftmost particle dim
    z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    loc = z @ A_MAT.T if broadcast else A_MAT @ z
    pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def matmul_guide(x, broadcast=False, hide=True):
    tril = _param("tril", [[0.4, 0.0], [0.2, 0.3]])
    _site("z", dist.MultivariateNormal(_param("loc", [0.6, -0.1]), scale_tril=tril), hide)


def factor_model(x, broadcast=False):
    # a likelihood given only as pyro.factor terms (a global one and one per
    # datum), written `A @ z` so the particles also stack factor sites
    z = pyro.sample("z", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    loc = (z * A_MAT).sum(-1) if broadcast else A_MAT @ z
    pyro.factor("sum_near_one", -0.5 * (z.sum(-1) - 1.0) ** 2)
    with pyro.plate("data", len(x)):
        pyro.factor("cauchy", -torch.log1p((x - loc) ** 2))


B_MAT = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [-0.5, 1.0]])
X_SEQ = torch.tensor([0.8, 0.2, -0.6, 1.1])


def sequential_model(x, broadcast=False):
    g = pyro.sample("g", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal((B_MAT * g).sum(-1) if broadcast else B_MAT @ g, 0.5))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def sequential_guide(x, broadcast=False, hide=True):
    g_loc = _param("g_loc", [0.3, -0.2])
    g = _site("g", dist.Normal(g_loc, 0.4).to_event(1), hide)
    with pyro.plate("data", len(x)):
        # the guide does not broadcast either: its particles run one at a time too
        loc = 0.5 * x + 0.8 * ((B_MAT * g).sum(-1) if broadcast else B_MAT @ g)
        _site("z", dist.Normal(loc, 0.4), hide)


Y_BIMODAL = 1.0 + torch.randn(20, generator=torch.Generator().manual_seed(11))


def bimodal_model(y):
    # the zoo's bimodal posterior: the data see only z^2
    z = pyro.sample("z", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(z**2, 1.0), obs=y)


class MirroredNormal(dist.TorchDistribution):
    """``p N(loc, scale) + (1 - p) N(-loc, scale)``: two separated modes, with a known
    density, reparameterized given the coin that picks the mode."""

    arg_constraints = {}
    support = dist.constraints.real
    has_rsample = True

    def __init__(self, loc, scale, p):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        self.p = p
        super().__init__(self.loc.shape, torch.Size())

    def expand(self, batch_shape, _instance=None):
        return MirroredNormal(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.p)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        eps = torch.randn(shape, dtype=self.loc.dtype)
        sign = torch.where(torch.rand(shape) < self.p, 1.0, -1.0)
        return sign * (self.loc + self.scale * eps)

    def log_prob(self, z):
        upper = dist.Normal(self.loc, self.scale).log_prob(z) + math.log(self.p)
        lower = dist.Normal(-self.loc, self.scale).log_prob(z) + math.log(1 - self.p)
        return torch.logaddexp(upper, lower)


def bimodal_guide(y, hide=True):
    _site("z", MirroredNormal(_param("loc", 1.1), _param("scale", 0.12), 0.6), hide)


PROBLEMS = {
    "flat": (flat_model, flat_guide, (X_FLAT,), {}),
    "constrained": (constrained_model, constrained_guide, (X_COUNTS,), {}),
    "hierarchical": (hierarchical_model, hierarchical_guide, (X_HIER,), {}),
    "nested": (nested_model, nested_guide, (X_NESTED,), {}),
    "matmul": (matmul_model, matmul_guide, (X_MAT,), {}),
    "factor": (factor_model, matmul_guide, (X_MAT,), {}),
}


def _exact_loss(model, guide, args, kwargs, num_particles=20000):
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
    with torch.no_grad():
        return elbo.loss(model, lambda *a, **k: guide(*a, hide=False, **k), *args, **kwargs)


def _train_discriminator(model, guide, args, kwargs, steps, average_last, **options):
    """Trains the discriminator only (the guide's parameters get learning rate 0)."""
    objective = TraceAVB_ELBO(**options)
    optim = Adam(lambda name, *_: {"lr": 3e-3 if is_discriminator_param(name) else 0.0})
    svi = SVI(model, guide, optim, loss=objective)
    losses = [svi.step(*args, **kwargs) for _ in range(steps)]
    tail = torch.tensor(losses[-average_last:])
    return tail.mean().item(), tail.std().item() / average_last**0.5, objective


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_avb_loss_matches_trace_elbo_on_a_known_density(name):
    model, guide, args, kwargs = PROBLEMS[name]
    # the exact loss of a model written `A @ z` comes from its broadcasting twin
    twin = {"broadcast": True} if name in ("matmul", "factor") else {}
    exact = _exact_loss(model, guide, args, {**kwargs, **twin})
    avb, se, objective = _train_discriminator(model, guide, args, kwargs, 400, 200)
    expected_mode = "model_sequential" if name in ("matmul", "factor") else "vectorized"
    assert objective.particle_mode == expected_mode
    # Monte Carlo error of the average (correlated across steps: 3x the iid value)
    # plus what is left of the discriminator's bias after 400 steps
    assert abs(avb - exact) < 3 * 3 * se + 0.1, (name, avb, exact, se)


def test_subsampled_plate_next_to_a_global():
    # the same five of twenty indices for both estimators: the plate's scale (4) and
    # the local draws' conditioning on the global are what is tested, not the
    # subsampling noise
    args = (torch.linspace(-1.5, 2.5, 20),)
    kwargs = {"subsample": torch.tensor([0, 6, 11, 15, 19])}
    exact = _exact_loss(hierarchical_model, hierarchical_guide, args, kwargs)
    avb, se, _ = _train_discriminator(
        hierarchical_model, hierarchical_guide, args, kwargs, 400, 200
    )
    assert abs(avb - exact) < 3 * 3 * se + 0.2, (avb, exact, se)


def test_a_guide_that_does_not_broadcast_gives_the_same_elbo():
    args = (X_SEQ,)
    exact = _exact_loss(sequential_model, sequential_guide, args, {"broadcast": True})
    options = dict(num_particles=4, moment_particles=64, discriminator_particles=32)
    with pytest.warns(UserWarning, match="guide does not broadcast"):
        avb, se, objective = _train_discriminator(
            sequential_model, sequential_guide, args, {}, 200, 100, **options
        )
    assert objective.particle_mode == "sequential"
    assert abs(avb - exact) < 4 * 3 * se + 0.15, (avb, exact, se)


@pytest.mark.parametrize("name", ["flat", "hierarchical"])
def test_avb_gradients_match_trace_elbo_in_expectation(name):
    model, guide, args, kwargs = PROBLEMS[name]
    _, _, objective = _train_discriminator(model, guide, args, kwargs, 600, 1)
    store = pyro.get_param_store()
    names = [n for n in store.keys() if not is_discriminator_param(n)]

    def grads(loss_fn, repeats):
        total = {n: torch.zeros_like(store[n]) for n in names}
        for _ in range(repeats):
            for n in store.keys():
                store[n].unconstrained().grad = None
            loss_fn()
            for n in names:
                total[n] += store[n].unconstrained().grad / repeats
        return total

    avb = grads(lambda: objective.loss_and_grads(model, guide, *args, **kwargs), 300)
    exact_elbo = Trace_ELBO(num_particles=20000, vectorize_particles=True)
    explicit = lambda *a, **k: guide(*a, hide=False, **k)  # noqa: E731
    exact = grads(lambda: exact_elbo.loss_and_grads(model, explicit, *args, **kwargs), 1)
    flat_avb = torch.cat([avb[n].reshape(-1) for n in names])
    flat_exact = torch.cat([exact[n].reshape(-1) for n in names])
    # agreement relative to the gradient's size
    error = (flat_avb - flat_exact).norm() / flat_exact.norm()
    assert error < 0.15, (name, flat_avb, flat_exact)


def test_mixture_reference_estimates_a_bimodal_guide():
    # Separated modes: with one Gaussian as the reference the discriminator must learn
    # a ratio that is steep at the modes and deeply negative between them, and after
    # 400 steps it under-states log q by 0.36-0.39 nats (measured, seeds 0 and 1; the
    # bias that makes AVB's modes too narrow). A two-component Gaussian-mixture
    # reference fitted to the guide's draws leaves a nearly flat ratio: measured
    # errors 0.01 and 0.00 (standard error 0.008).
    args = (Y_BIMODAL,)
    exact = _exact_loss(bimodal_model, bimodal_guide, args, {})
    avb, se, _ = _train_discriminator(
        bimodal_model, bimodal_guide, args, {}, 400, 200, contrast_components=2
    )
    # tighter than the other problems' 0.1 so that the Gaussian reference's bias fails
    assert abs(avb - exact) < 3 * 3 * se + 0.05, (avb, exact, se)


X_LOCAL_BIMODAL = torch.tensor([1.0, 2.5, 4.0, 0.6, 3.2, 1.8])


def local_bimodal_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 2.0))
        pyro.sample("x", dist.Normal(z**2, 0.5), obs=x)


def local_bimodal_guide(x, hide=True):
    # one pair of modes per observation, at +-sqrt(x_i): an amortized bimodal guide
    with pyro.plate("data", len(x)):
        _site("z", MirroredNormal(x.clamp_min(0.1).sqrt(), 0.15, 0.6), hide)


def test_mixture_reference_per_observation():
    # plate-local latents: one Gaussian mixture per observation. Measured (seed 0):
    # 0.10 nats from Trace_ELBO (standard error 0.03); with one Gaussian per
    # observation as the reference, 1.81 nats off
    args = (X_LOCAL_BIMODAL,)
    exact = _exact_loss(local_bimodal_model, local_bimodal_guide, args, {})
    avb, se, _ = _train_discriminator(
        local_bimodal_model, local_bimodal_guide, args, {}, 400, 200, contrast_components=2
    )
    assert abs(avb - exact) < 3 * 3 * se + 0.1, (avb, exact, se)
