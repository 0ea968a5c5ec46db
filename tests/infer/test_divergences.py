"""The divergence family: formulas, registry, and discriminators trained to their optimum."""

import math

import pytest
import torch

from pyro_adv.infer.divergences import (
    DIVERGENCES,
    Divergence,
    NonSaturating,
    TotalVariation,
    Wasserstein,
    get_divergence,
)
from pyro_adv.models.gan_targets import gaussian_divergence, gaussian_kl
from pyro_adv.nn import Discriminator

F_DIVERGENCES = [name for name in DIVERGENCES if name != "wasserstein"]
# tanh(v)/2 is only a smooth stand-in for total variation's sign(u - 1)/2
SADDLE = [n for n in F_DIVERGENCES if n not in ("nonsaturating", "total_variation")]


@pytest.fixture(autouse=True)
def _one_thread():
    # these networks are tiny: extra intra-op threads only wait on each other, and on
    # a shared machine they slow every step down several times
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------- registry
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_divergence("kullback")
    for name in DIVERGENCES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "alias, name",
    [
        ("forward_kl", "kl"),
        ("JS", "js"),
        ("wgan-gp", "wasserstein"),
        ("non-saturating", "nonsaturating"),
    ],
)
def test_aliases(alias, name):
    assert get_divergence(alias).name == name


def test_instances_and_options():
    div = Wasserstein(gradient_penalty=0.0, weight_clip=0.01)
    assert get_divergence(div) is div
    assert get_divergence("wasserstein", gradient_penalty=1.0).gradient_penalty == 1.0
    with pytest.raises(ValueError, match="divergence name"):
        get_divergence(div, gradient_penalty=1.0)
    with pytest.raises(TypeError):
        get_divergence(3)
    with pytest.raises(ValueError, match="gradient_penalty"):
        Wasserstein(gradient_penalty=-1.0)
    with pytest.raises(ValueError, match="weight_clip"):
        Wasserstein(weight_clip=0.0)


# ------------------------------------------------------------------ formulas
@pytest.mark.parametrize("name", F_DIVERGENCES)
def test_f_is_convex_and_vanishes_at_one(name):
    div = get_divergence(name)
    log_u = torch.linspace(-4.0, 4.0, 801, dtype=torch.float64)
    f = div.f(log_u)
    # the minimax game's f is 2 JSD shifted by -log 4 (thesis eq. 7)
    at_one = -math.log(4.0) if name == "minimax" else 0.0
    assert abs(div.f(torch.zeros((), dtype=torch.float64)).item() - at_one) < 1e-12
    # convexity in u on a non-uniform grid: slopes increase
    u = log_u.exp()
    slopes = (f[1:] - f[:-1]) / (u[1:] - u[:-1])
    assert (slopes[1:] - slopes[:-1] >= -1e-9).all()


@pytest.mark.parametrize("name", SADDLE)
def test_bound_is_tight_at_the_log_ratio(name):
    # Fenchel equality at T* = f'(u): f*(f'(u)) = u f'(u) - f(u), i.e. the bound (15)
    # equals D_f when the logit is the log density ratio.
    div = get_divergence(name)
    log_u = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    v = div.optimal_logit(log_u)
    lhs = div.conjugate(v)
    rhs = log_u.exp() * div.activation(v) - div.f(log_u)
    assert torch.allclose(lhs, rhs, atol=1e-9), (lhs - rhs).abs().max()


def test_generator_losses_match_the_thesis():
    d = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    v = torch.logit(d)
    minimax = get_divergence("minimax")
    # eq. 4 (without the 1/2): E log(1 - D), up to the sign convention of the saddle
    assert torch.allclose(minimax.conjugate(v), -torch.log1p(-d))
    # eq. 8: -E log D
    assert math.isclose(
        NonSaturating().generator_loss(v).item(), (-d.log()).mean().item(), rel_tol=1e-12
    )
    # eq. 11: E log((1 - D) / D), up to the constant of f*
    rkl = get_divergence("reverse_kl")
    assert math.isclose(
        rkl.generator_loss(v).item(), (torch.log((1 - d) / d)).mean().item() + 1.0, rel_tol=1e-12
    )
    # section 3.3.1.1: -E exp(sigma^{-1}(D))
    kl = get_divergence("kl")
    assert math.isclose(kl.generator_loss(v).item(), -(d / (1 - d)).mean().item(), rel_tol=1e-12)


def test_wasserstein_penalty_and_clipping():
    torch.manual_seed(0)
    real, fake = torch.randn(64, 2), torch.randn(64, 2) + 1.0
    flat = torch.nn.Linear(2, 1)
    with torch.no_grad():
        flat.weight.fill_(0.1)
    critic = lambda x: flat(x).squeeze(-1)  # noqa: E731
    # a critic with slope below one is free under the one-sided penalty, not the two-sided one
    assert Wasserstein().penalty(critic, real, fake).item() == 0.0
    assert Wasserstein(one_sided=False).penalty(critic, real, fake).item() > 0.5
    with torch.no_grad():
        flat.weight.fill_(3.0)
    assert Wasserstein().penalty(critic, real, fake).item() > 10.0
    assert Wasserstein(gradient_penalty=0.0).penalty(critic, real, fake).item() == 0.0
    Wasserstein(weight_clip=0.5).after_update(flat)
    assert flat.weight.abs().max().item() == 0.5
    assert "one_sided=True" in repr(Wasserstein())


def test_accuracy_and_log_ratio():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([-3.0, -2.0, 1.0])
    accuracies = get_divergence("js").accuracy(real, fake)
    assert tuple(float(a) for a in accuracies) == pytest.approx((0.5, 2 / 3))
    assert get_divergence("total_variation").log_ratio(real) is None
    assert get_divergence("wasserstein").log_ratio(real) is None
    assert torch.equal(get_divergence("kl").log_ratio(real), real)
    with pytest.raises(NotImplementedError):
        get_divergence("wasserstein").f(real)
    assert isinstance(get_divergence("pearson"), Divergence)


def test_pearson_uses_the_identity_activation():
    # f-GAN's output activation (Nowozin et al. 2016, table 2): T = v, f*(T) = T + T^2/4;
    # the exponential one, T = 2(e^v - 1), froze the critic (Table 3: energy distance 0.76)
    pearson = get_divergence("pearson")
    v = torch.linspace(-1.9, 5.0, 50, dtype=torch.float64)
    assert torch.equal(pearson.activation(v), v)
    # log_ratio inverts optimal_logit; the critic's gradient does not vanish for v << 0
    log_u = torch.linspace(-4.0, 3.0, 50, dtype=torch.float64)
    assert torch.allclose(pearson.log_ratio(pearson.optimal_logit(log_u)), log_u)
    v = torch.tensor([-10.0, -5.0], requires_grad=True)
    pearson.discriminator_loss(v[:1], v[1:]).backward()
    assert (v.grad.abs() > 0.5).all()
    assert torch.isfinite(pearson.log_ratio(torch.tensor([-3.0]))).all()


def test_total_variation_logit_penalty():
    tv = get_divergence("total_variation")
    assert tv.logit_penalty == 0.1 and "logit_penalty=0.1" in repr(tv)
    # a critic saturated at v << 0 on both sides (accuracy 0/1): the plain bound is
    # flat there, the penalty pulls the logits back to where tanh has a slope
    v = torch.full((8,), -6.0, requires_grad=True)
    TotalVariation(logit_penalty=0.0).discriminator_loss(v[:4], v[4:]).backward()
    assert v.grad.abs().max() < 1e-4
    v.grad = None
    tv.discriminator_loss(v[:4], v[4:]).backward()
    assert (v.grad < -0.1).all()  # descent moves the logits up, toward 0
    with pytest.raises(ValueError, match="logit_penalty"):
        TotalVariation(logit_penalty=-1.0)


# -------------------------------------------- discriminators trained to optimum
# real p = N(0, 1), fake q = N(1, 1.5^2): log p/q = log 1.5 - x^2/2 + (x - 1)^2 / 4.5
P, Q = (0.0, 1.0), (1.0, 1.5)
#: tolerance on the recovered log p/q on [-1, 2], where both samples are dense
RATIO_TOL = 0.25


def _true_log_ratio(x):
    (mp, sp), (mq, sq) = P, Q
    return math.log(sq / sp) - 0.5 * ((x - mp) / sp) ** 2 + 0.5 * ((x - mq) / sq) ** 2


def _train_discriminator(div, steps=500, batch=1024):
    def real(n):
        return P[0] + P[1] * torch.randn(n, 1)

    def fake(n):
        return Q[0] + Q[1] * torch.randn(n, 1)

    disc = Discriminator((32, 32), "elu")
    disc.initialize(torch.cat([real(batch), fake(batch)]))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.05 ** (1 / steps))
    for _ in range(steps):
        r, f = real(batch), fake(batch)
        loss = div.discriminator_loss(disc(r), disc(f)) + div.penalty(disc, r, f)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        div.after_update(disc)
    with torch.no_grad():
        estimate = div.estimate(disc(real(50000)), disc(fake(50000))).item()
    return disc, estimate


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_optimal_discriminator(name):
    div = get_divergence(name)
    disc, estimate = _train_discriminator(div)
    x = torch.linspace(-1.0, 2.0, 31).unsqueeze(-1)
    truth = _true_log_ratio(x.squeeze(-1))
    with torch.no_grad():
        logits = disc(x)
    if div.identifies_ratio:
        err = (div.log_ratio(logits) - truth).abs().max().item()
        assert err < RATIO_TOL, f"{name}: log-ratio error {err:.3f}"
    elif name == "total_variation":
        # the optimum only identifies the sign of log p/q
        clear = truth.abs() > 0.3
        assert ((logits[clear] > 0) == (truth[clear] > 0)).all()

    # the estimate is the divergence: closed form for the KLs, quadrature otherwise
    if name == "kl":
        exact, tol = gaussian_kl(*P, *Q), 0.05
    elif name == "reverse_kl":
        exact, tol = gaussian_kl(*Q, *P), 0.08
    elif name == "nonsaturating":
        # its discriminator is the minimax one: the bound is 2 JSD - log 4
        exact, tol = gaussian_divergence("minimax", *P, *Q), 0.05
    elif name == "wasserstein":
        # the penalty only softly bounds the slope: the estimate may overshoot a little
        exact, tol = gaussian_divergence(name, *P, *Q), 0.12
    else:
        exact = gaussian_divergence(name, *P, *Q)
        tol = max(0.05, 0.1 * abs(exact))
    assert abs(estimate - exact) < tol, f"{name}: estimate {estimate:.3f} vs exact {exact:.3f}"
