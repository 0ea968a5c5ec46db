"""
Table 4, overhead: one step through ``pyro.infer.SVI`` against a hand-written
PyTorch loop doing the same math with the same networks, batch and random stream,
for each engine:

* **AVB**: the conjugate Gaussian of ``pyro_adv.models.ConjugateGaussian`` (2
  correlated latents, 10 observations) with an ``AutoImplicit`` guide and
  ``TraceAVB_ELBO`` with adaptive contrast: 16 gradient draws, 512 moment draws and
  64 discriminator draws; whitening by the Cholesky factor of the moment draws; the
  logistic discriminator loss and the -ELBO.
* **ALI**: an amortized linear-Gaussian model (``z_i ~ N(0, I_2)``, ``x_i ~ N(A z_i,
  0.5^2 I_2)``, 256 data points) with an ``ImplicitEncoder`` guide and ``Trace_ALI``
  (reverse KL): the encoder's pairs against pairs simulated from the model.
* **GAN**: an ``MLPGenerator`` fitted to a 2-D minibatch of 256 points by
  ``Trace_GAN`` (non-saturating).

Each hand-written step draws its noise in the same order as the library, computes
both players' losses, does one backward and one ``torch.optim.Adam`` step over all
parameters. That it is the same math is checked, not assumed: from the same
parameters and random state, the library's loss, discriminator loss and every
gradient must equal the hand-written ones (to float32 round-off); the largest
relative difference is reported.

Timings alternate the loops in blocks (the order flipped every block) so that load
on the machine affects all alike; medians over blocks of **CPU time** per step
(``time.process_time``, which does not count time spent waiting for a core on a
loaded machine; wall time on a GPU, synchronized) are reported, and the wall-clock
medians too. ``SVI`` is timed with ``pyro.optim.Adam`` (one optimizer per
parameter, Pyro's default) and with ``pyro_adv.optim.foreach_adam`` (one
multi-tensor step), and both loops again with Pyro's validation off
(``pyro.enable_validation(False)``, which Pyro suggests once a model works) and with
torch's fused Adam (``foreach_adam({"fused": True})`` against
``torch.optim.Adam(fused=True)``). Also
reported: device reads (``.item()``, ``bool()``, ``.tolist()``...) per step outside
torch's optimizers, peak tensor memory of one step (the torch profiler's allocation
events on the CPU, ``max_memory_allocated`` on a GPU), how the step time and peak
memory grow with the number of observations, the latent dimension, the particles
(AVB) and the batch size (ALI, GAN), and where a step's time goes (:func:`breakdown`:
exclusive time per phase, networks, backward, optimizer, Pyro's traces, the
objective's code, the checks...).

Run alone::

    python -m benchmarks.overhead                 # the table
    python -m benchmarks.overhead --profile avb   # where an AVB step's time goes
"""

import copy
import math
import os
import statistics
import sys
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI
from torch.overrides import TorchFunctionMode

from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models import ConjugateGaussian
from pyro_adv.nn import ImplicitEncoder, MLPGenerator
from pyro_adv.optim import foreach_adam

__all__ = ["run"]

LR = 1e-3
_LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------- problems
class Problem:
    """An engine's SVI problem and the hand-written loop of the same math."""

    def __init__(self, name, task, model, guide, objective, args):
        self.name, self.task = name, task
        self.model, self.guide, self.objective, self.args = model, guide, objective, args

    def svi(self, optim):
        return SVI(self.model, self.guide, optim, self.objective)

    def manual(self):
        """``(losses, params, library_params)``: a function computing both players'
        losses, the hand-written loop's parameters and the library's, in the same order."""
        raise NotImplementedError


def _copy(module):
    module = copy.deepcopy(module)
    module._forward_hooks.clear()  # the objective's logit recorder is not hand-written math
    return module


def _frozen(module):
    # the discriminator's weights out of the generator's graph (one backward for both
    # players): the cheapest way, parameters not requiring gradients during the call
    params = list(module.parameters())

    def call(*inputs):
        for p in params:
            p.requires_grad_(False)
        try:
            return module(*inputs)
        finally:
            for p in params:
                p.requires_grad_(True)

    return call


class AVB(Problem):
    def __init__(
        self, device, suffix="", num_data=10, latent_dim=2, particles=16, moment=512, disc=64
    ):
        self.particles, self.moment, self.disc_draws = particles, moment, disc
        if latent_dim == 2:
            cg = ConjugateGaussian(noise_scale=2.0)
        else:
            g = torch.Generator().manual_seed(1)
            cg = ConjugateGaussian(
                prior_loc=torch.zeros(latent_dim),
                prior_cov=torch.eye(latent_dim),
                design=torch.randn(latent_dim, latent_dim, generator=g) / latent_dim**0.5,
                noise_scale=2.0,
            )
        cg.prior_loc, cg.prior_cov = cg.prior_loc.to(device), cg.prior_cov.to(device)
        cg.design = cg.design.to(device)
        _, x = cg.simulate(num_data, torch.Generator().manual_seed(0))
        self.cg, self.x = cg, x.to(device)
        guide = AutoImplicit(cg.model)
        guide._pyro_name += suffix  # its own parameters in the param store
        super().__init__(
            "AVB",
            f"conjugate Gaussian, AutoImplicit, {particles}+{moment}+{disc} draws",
            cg.model,
            guide,
            TraceAVB_ELBO(
                num_particles=particles,
                moment_particles=moment,
                discriminator_particles=disc,
                discriminator_prefix="discriminator" + suffix,
            ),
            (self.x,),
        )

    def manual(self):
        guide, cg, x = self.guide, self.cg, self.x
        (discriminator,) = self.objective.discriminators.values()
        loc = guide.loc.detach().clone().requires_grad_(True)
        sampler, disc = _copy(guide.sampler), _copy(discriminator)
        prior = dist.MultivariateNormal(cg.prior_loc, cg.prior_cov)
        n, m, noise_dim = self.particles, self.moment, guide.noise_dim
        eye = torch.eye(loc.shape[0], device=loc.device)

        def losses():
            u = loc + sampler(torch.randn(n, noise_dim, device=loc.device))
            with torch.no_grad():
                ref = loc + sampler(torch.randn(m + self.disc_draws, noise_dim, device=loc.device))
            mean = ref[:m].mean(0)
            centred = ref[:m] - mean
            cov = centred.T @ centred / m
            cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(1e-12) * eye
            chol = torch.linalg.cholesky(cov)
            real = torch.linalg.solve_triangular(chol, (ref[m:] - mean).T, upper=False).T
            fake = torch.randn_like(real)
            z = torch.linalg.solve_triangular(chol, (u - mean).T, upper=False).T
            log_r = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1) - chol.diagonal().log().sum()
            t = _frozen(disc)(z)
            lik = dist.Normal((u @ cg.design.T).unsqueeze(-2), cg.noise_scale).log_prob(x)
            log_p = prior.log_prob(u) + lik.sum((-1, -2))
            g_loss = -(log_p - t - log_r).mean()
            d_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake)).mean()
            return g_loss, d_loss

        ours = [loc, *sampler.parameters(), *disc.parameters()]
        theirs = [guide.loc, *guide.sampler.parameters(), *discriminator.parameters()]
        return losses, ours, theirs


class ALI(Problem):
    def __init__(self, device, suffix="", batch=256, dim=2):
        g = torch.Generator().manual_seed(2)
        self.design = (torch.eye(dim) + 0.5 * torch.randn(dim, dim, generator=g)).to(device)
        z = torch.randn(batch, dim, generator=g)
        self.data = (z.to(device) @ self.design.T) + 0.5 * torch.randn(batch, dim, generator=g).to(
            device
        )
        self.dim = dim
        self.encoder = ImplicitEncoder(dim, dim).to(device)
        design, encoder = self.design, self.encoder

        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], dim), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ design.T, 0.5).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder" + suffix, encoder)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", encoder(x))

        super().__init__(
            "ALI",
            f"amortized linear Gaussian, ImplicitEncoder, batch {batch}",
            model,
            guide,
            Trace_ALI(discriminator_prefix="discriminator" + suffix),
            (self.data,),
        )

    def manual(self):
        (discriminator,) = self.objective.discriminators.values()
        encoder, disc, x = _copy(self.encoder), _copy(discriminator), self.data
        noise_dim, dim = encoder.noise_dim, self.dim

        def losses():
            # the library's order: the guide's noise, then the model simulated forward
            z_q = encoder.generate(x, torch.randn(x.shape[0], noise_dim, device=x.device))
            z_s = torch.randn(x.shape[0], dim, device=x.device)
            x_s = z_s @ self.design.T + torch.randn_like(x) * 0.5
            real, fake = disc(x_s, z_s), disc(x, z_q.detach())
            # reverse KL: T = -exp(-v) on simulated pairs, f*(T) = v - 1 on the guide's
            d_loss = torch.exp(-real).mean() + (fake - 1.0).mean()
            g_loss = -(_frozen(disc)(x, z_q) - 1.0).mean()
            return g_loss, d_loss

        ours = [*encoder.parameters(), *disc.parameters()]
        theirs = [*self.encoder.parameters(), *discriminator.parameters()]
        return losses, ours, theirs


class GAN(Problem):
    def __init__(self, device, suffix="", batch=256):
        g = torch.Generator().manual_seed(3)
        self.data = (torch.randn(batch, 2, generator=g) * torch.tensor([1.0, 0.3])).to(device)
        self.generator = MLPGenerator(2, 2).to(device)
        generator = self.generator

        def model(x):
            pyro.module("generator" + suffix, generator)
            with pyro.plate("data", x.shape[0]):
                noise = dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1)
                pyro.sample("x", ImplicitDistribution(generator, noise), obs=x)

        super().__init__(
            "GAN",
            f"2-D data, MLPGenerator, batch {batch}",
            model,
            lambda *args, **kwargs: None,
            Trace_GAN(discriminator_prefix="discriminator" + suffix),
            (self.data,),
        )

    def manual(self):
        (discriminator,) = self.objective.discriminators.values()
        generator, disc, x = _copy(self.generator), _copy(discriminator), self.data

        def losses():
            fake = generator(torch.randn(x.shape[0], 2, device=x.device))
            d_loss = F.softplus(-disc(x)).mean() + F.softplus(disc(fake.detach())).mean()
            g_loss = F.softplus(-_frozen(disc)(fake)).mean()  # non-saturating
            return g_loss, d_loss

        ours = [*generator.parameters(), *disc.parameters()]
        theirs = [*self.generator.parameters(), *discriminator.parameters()]
        return losses, ours, theirs


ENGINES = {"avb": AVB, "ali": ALI, "gan": GAN}


# ------------------------------------------------------------------------ measures
def _manual_step(losses, params, fused=False):
    # torch's default Adam (a loop over the parameters on the CPU), or its fused kernel
    optim = torch.optim.Adam(params, lr=LR, **({"fused": True} if fused else {}))

    def step():
        g_loss, d_loss = losses()
        optim.zero_grad()
        (g_loss + d_loss).backward()
        optim.step()
        return g_loss.item()

    return step


def _same_math(problem, losses, ours, theirs):
    """Largest relative difference of the losses and gradients, library vs hand-written,
    from the same parameters and random state (before either has stepped apart)."""
    for p in ours + theirs:
        p.grad = None
    state = torch.get_rng_state()
    devices = [torch.cuda.get_rng_state()] if torch.cuda.is_available() else None
    loss = problem.objective.loss_and_grads(problem.model, problem.guide, *problem.args)
    d_loss = problem.objective.stats["discriminator_loss"]
    torch.set_rng_state(state)
    if devices:
        torch.cuda.set_rng_state(devices[0])
    g, d = losses()
    (g + d).backward()

    def rel(a, b):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    if problem.name == "AVB":
        losses_diff = max(rel(loss, g.item()), rel(d_loss, d.item()))
    else:
        # the reported ALI/GAN loss is the divergence estimate; compare the players' losses
        losses_diff = max(
            rel(problem.objective.stats["generator_loss"], g.item()), rel(d_loss, d.item())
        )
    grads_diff = max(
        rel(theirs_p.grad.cpu(), ours_p.grad.cpu()) for ours_p, theirs_p in zip(ours, theirs)
    )
    for p in ours + theirs:
        p.grad = None
    return losses_diff, grads_diff


class DeviceReads(TorchFunctionMode):
    """
    Counts reads of tensor values into Python (a synchronization each on a GPU),
    except those of torch's optimizers, which read their step counters kept on the CPU.
    """

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"}
    OPTIM = os.path.join(os.path.dirname(torch.__file__), "optim")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS:
            frame = sys._getframe(1)
            while frame is not None and not frame.f_code.co_filename.startswith(self.OPTIM):
                frame = frame.f_back
            self.count += frame is None
        return func(*args, **(kwargs or {}))


def _reads_per_step(step, steps=5):
    with DeviceReads() as reads:
        for _ in range(steps):
            step()
    return reads.count / steps


def _peak_bytes(step, device):
    """Peak tensor memory allocated during one step above the level at its start."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    level = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def _timed(steps, blocks, per_block, device):
    """Median CPU (GPU: wall, synchronized) and wall ms per step of each loop, the loops
    alternating block by block, the order reversed every other block."""
    names = list(steps)
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for block in range(blocks):
        for name in names if block % 2 == 0 else reversed(names):
            sync()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(per_block):
                steps[name]()
            sync()
            cpu[name].append((time.process_time() - c0) / per_block)
            wall[name].append((time.perf_counter() - w0) / per_block)
    primary = wall if device.type == "cuda" else cpu
    return (
        {n: 1000 * statistics.median(primary[n]) for n in names},
        {n: 1000 * statistics.median(wall[n]) for n in names},
    )


def _setup(problem_cls, device, seed, **options):
    """The problem, its SVI steps (Pyro's Adam, foreach Adam) and the hand-written step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    problem = problem_cls(device, **options)
    svi = problem.svi(pyro.optim.Adam({"lr": LR}))
    svi.step(*problem.args)  # builds the discriminators
    losses, ours, theirs = problem.manual()
    same = _same_math(problem, losses, ours, theirs)
    manual = _manual_step(losses, ours)
    manual()
    # the same problem again, stepped by the multi-tensor optimizer (its own objective)
    pyro.set_rng_seed(seed)
    twin = problem_cls(device, suffix="_twin", **options)
    twin_svi = twin.svi(foreach_adam({"lr": LR}))
    twin_svi.step(*twin.args)
    return (
        problem,
        {
            "svi": lambda: svi.step(*problem.args),
            "svi_foreach": lambda: twin_svi.step(*twin.args),
            "manual": manual,
        },
        same,
    )


def _without_validation(step):
    # Pyro's validation (distribution arguments and supports, trace shapes) off, as
    # Pyro suggests once a model works; it applies to both loops
    def call():
        with pyro.validation_enabled(False):
            return step()

    return call


def _engine_row(name, device, seed, blocks, per_block):
    problem, steps, (loss_diff, grad_diff) = _setup(ENGINES[name], device, seed)
    timed = dict(steps)
    timed["svi_foreach_novalidation"] = _without_validation(steps["svi_foreach"])
    timed["manual_novalidation"] = _without_validation(steps["manual"])
    # both loops with torch's fused Adam (one kernel for all parameters)
    pyro.set_rng_seed(seed)
    fused = ENGINES[name](device, suffix="_fused")
    fused_svi = fused.svi(foreach_adam({"lr": LR, "fused": True}))
    fused_svi.step(*fused.args)
    losses, ours, _ = problem.manual()
    timed["svi_fused"] = lambda: fused_svi.step(*fused.args)
    timed["manual_fused"] = _manual_step(losses, ours, fused=True)
    for step in timed.values():
        step()
    ms, wall = _timed(timed, blocks, per_block, device)
    # where the time goes (instrumented runs, after the timings they would disturb)
    found = _breakdown(steps, 5, 1) if blocks < 10 else _breakdown(steps, 200, 5)
    return {
        "engine": problem.name,
        "task": problem.task,
        "svi_ms_per_step": ms["svi"],
        "svi_foreach_ms_per_step": ms["svi_foreach"],
        "manual_ms_per_step": ms["manual"],
        "ratio": ms["svi"] / ms["manual"],
        "ratio_foreach": ms["svi_foreach"] / ms["manual"],
        "wall_ms_per_step": wall,
        "wall_ratio_foreach": wall["svi_foreach"] / wall["manual"],
        "novalidation_ms_per_step": {
            "svi_foreach": ms["svi_foreach_novalidation"],
            "manual": ms["manual_novalidation"],
        },
        "ratio_foreach_novalidation": ms["svi_foreach_novalidation"] / ms["manual_novalidation"],
        "fused_adam_ms_per_step": {"svi": ms["svi_fused"], "manual": ms["manual_fused"]},
        "ratio_fused": ms["svi_fused"] / ms["manual_fused"],
        "same_math_max_rel_diff_losses": loss_diff,
        "same_math_max_rel_diff_gradients": grad_diff,
        "device_reads_per_step": {k: _reads_per_step(s) for k, s in steps.items()},
        # the objective's own reads, without those of Pyro's argument validation
        "device_reads_per_step_novalidation": {
            k: _reads_per_step(timed[f"{k}_novalidation"]) for k in ("svi_foreach", "manual")
        },
        "peak_memory_kib": {k: _peak_bytes(s, device) / 1024 for k, s in steps.items()},
        "blocks": blocks,
        "steps_per_block": per_block,
        "breakdown_ms_per_step": found,
    }


def _pyro_reference_row(device, seed, blocks, per_block):
    """
    The floor set by Pyro itself: ``SVI`` + ``Trace_ELBO`` with ``AutoNormal`` on the
    AVB row's model (16 vectorized particles) against a hand-written loop of that
    Gaussian ELBO, timed the same way.
    """
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    avb = AVB(device)
    cg, x = avb.cg, avb.x
    guide = AutoNormal(cg.model)
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(cg.model, guide, foreach_adam({"lr": LR}), elbo)
    svi.step(x)
    loc = guide.locs.z.detach().clone().requires_grad_(True)
    scale = guide.scales.z.detach().clone().log().requires_grad_(True)
    optim = torch.optim.Adam([loc, scale], lr=LR)
    prior = dist.MultivariateNormal(cg.prior_loc, cg.prior_cov)

    def manual():
        z = loc + scale.exp() * torch.randn(16, loc.shape[-1], device=loc.device)
        log_q = dist.Normal(loc, scale.exp()).log_prob(z).sum(-1)
        lik = dist.Normal((z @ cg.design.T).unsqueeze(-2), cg.noise_scale).log_prob(x)
        loss = -(prior.log_prob(z) + lik.sum((-1, -2)) - log_q).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.item()

    steps = {"svi_foreach": lambda: svi.step(x), "manual": manual}
    for step in steps.values():
        step()
    ms, wall = _timed(steps, blocks, per_block, device)
    return {
        "engine": "Pyro (reference)",
        "task": "the AVB row's model, AutoNormal + Trace_ELBO, 16 draws",
        "svi_foreach_ms_per_step": ms["svi_foreach"],
        "manual_ms_per_step": ms["manual"],
        "ratio_foreach": ms["svi_foreach"] / ms["manual"],
        "wall_ms_per_step": wall,
        "blocks": blocks,
        "steps_per_block": per_block,
    }


# ---------------------------------------------------------------------- breakdown
class _Phases:
    """
    Exclusive wall time per phase of a step: each instrumented function's time less
    that of the instrumented functions it calls, summed by phase (the step itself is
    phase ``"rest"``). Each instrumented call adds about a microsecond.
    """

    def __init__(self):
        self.totals = {}
        self._stack = []
        self._restore = []

    def wrap(self, owner, attr, phase, skip=None):
        if isinstance(owner, type):  # the class that defines it (engines are mixins)
            owner = next(c for c in owner.__mro__ if attr in c.__dict__)
        raw = owner.__dict__[attr]
        static = isinstance(raw, staticmethod)
        fn = raw.__func__ if static else raw

        def timed(*args, **kwargs):
            if skip is not None and skip(args):
                return fn(*args, **kwargs)
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.totals[phase] = self.totals.get(phase, 0.0) + spent - self._stack.pop()
                if self._stack:
                    self._stack[-1] += spent

        setattr(owner, attr, staticmethod(timed) if static else timed)
        self._restore.append((owner, attr, raw))

    def restore(self):
        for owner, attr, raw in reversed(self._restore):
            setattr(owner, attr, raw)
        self._restore = []


def _instrument(phases):
    """Where an SVI step and a hand-written step spend their time (see ``PHASES``)."""
    import pyro.infer.util
    from pyro.nn import PyroModule

    from pyro_adv.infer import adversarial, checks, particles, trace_ali, trace_gan
    from pyro_adv.infer import trace_avb_elbo as avb
    from pyro_adv.nn import averaging
    from pyro_adv.optim import ForeachOptim

    # the networks' forward passes, wherever they run (not a PyroModule guide's call,
    # which runs Pyro statements)
    phases.wrap(
        torch.nn.Module, "__call__", "networks", skip=lambda a: isinstance(a[0], PyroModule)
    )
    phases.wrap(torch.Tensor, "backward", "backward")
    phases.wrap(ForeachOptim, "__call__", "optimizer")
    phases.wrap(pyro.optim.PyroOptim, "__call__", "optimizer")
    phases.wrap(torch.optim.Adam, "step", "optimizer")
    phases.wrap(torch.optim.Optimizer, "zero_grad", "optimizer")
    phases.wrap(pyro.infer.util, "zero_grads", "optimizer")
    for owner, attr in [
        (particles.ParticleTraces, "_traces"),
        (particles.ParticleTraces, "_run_model"),
        (trace_ali.Trace_ALI, "_traces"),
        (trace_gan.Trace_GAN, "_traces"),
        (trace_ali, "forward_simulations"),
        (avb.AutoImplicit, "draw_unconstrained"),
    ]:
        phases.wrap(owner, attr, "traces")
    for attr in ["_prepare", "_read_losses", "_check_gradients", "_remember"]:
        phases.wrap(checks.StepChecks, attr, "checks")
    phases.wrap(particles.ParticleTraces, "_prepare", "checks")
    phases.wrap(averaging.ParameterEMA, "update", "averaging")
    phases.wrap(averaging.ParameterEMA, "track", "averaging")
    phases.wrap(adversarial.AdversarialObjective, "discriminator", "registration")
    for cls in (avb.TraceAVB_ELBO, trace_ali.Trace_ALI, trace_gan.Trace_GAN):
        phases.wrap(cls, "_losses", "objective")
    phases.wrap(SVI, "step", "bookkeeping")
    phases.wrap(adversarial.AdversarialObjective, "loss_and_grads", "bookkeeping")
    phases.wrap(adversarial.AdversarialObjective, "_surrogate", "bookkeeping")


#: the phases of a step, in the order reported
PHASES = {
    "networks": "networks' forward passes (guide/generator, discriminators)",
    "backward": "backward pass",
    "optimizer": "optimizer step and gradient reset",
    "traces": "Pyro's guide and model traces (handlers, the model's own densities), "
    "minus the networks inside",
    "objective": "the objective's own code (features, whitening, losses, statistics)",
    "checks": "reliability checks (fingerprint, finite losses, zero gradients)",
    "averaging": "weight averaging (EMA of the guide/generator)",
    "registration": "discriminator registration (pyro.param of its weights)",
    "bookkeeping": "SVI.step and loss_and_grads glue (param capture)",
    "rest": "everything else in the step (hand-written: its tensor math)",
}


def breakdown(name, device="cpu", seed=0, steps=200, repeats=5):
    """
    Exclusive milliseconds per step in each of :data:`PHASES`, for the SVI step
    (foreach Adam) and the hand-written step of engine ``name``; the least over
    ``repeats`` runs of ``steps`` steps for each phase (wall time).
    """
    _, loops, _ = _setup(ENGINES[name], torch.device(device), seed)
    return _breakdown(loops, steps, repeats)


def _breakdown(loops, steps, repeats):
    result = {"repeats": repeats, "steps": steps}
    for loop in ("svi_foreach", "manual"):
        step = loops[loop]
        for _ in range(min(steps, 10)):
            step()
        best = {}
        for _ in range(repeats):
            phases = _Phases()
            _instrument(phases)
            phases.wrap(_Step, "__call__", "rest")
            call = _Step(step)
            try:
                start = time.perf_counter()
                for _ in range(steps):
                    call()
                total = time.perf_counter() - start
            finally:
                phases.restore()
            ms = {k: 1000 * v / steps for k, v in phases.totals.items()}
            ms["total"] = 1000 * total / steps
            for key, value in ms.items():
                best[key] = min(best.get(key, math.inf), value)
        result[loop] = {k: best.get(k, 0.0) for k in (*PHASES, "total")}
    return result


class _Step:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self):
        return self.fn()


def _breakdown_markdown(name, result):
    svi, manual = result["svi_foreach"], result["manual"]
    lines = [
        f"Where a {name.upper()} step's time goes (ms/step, wall, exclusive times; the "
        f"least of {result['repeats']} runs of {result['steps']} steps per phase):",
        "",
        "| phase | SVI + foreach Adam | hand-written |",
        "|---|---|---|",
    ]
    for key, label in PHASES.items():
        if svi[key] or manual[key]:
            lines.append(f"| {label} | {svi[key]:.3f} | {manual[key]:.3f} |")
    lines.append(f"| **step** | {svi['total']:.3f} | {manual['total']:.3f} |")
    return "\n".join(lines) + "\n"


#: (engine, option, values): how the step time grows
SCALING = [
    ("avb", "num_data", (10, 1000, 100_000)),
    ("avb", "latent_dim", (2, 8, 32)),
    ("avb", "particles", (16, 128, 1024)),
    ("ali", "batch", (64, 1024, 16384)),
    ("gan", "batch", (64, 1024, 16384)),
]


def _scaling_rows(device, seed, blocks, per_block):
    rows = []
    for engine, option, values in SCALING:
        for value in values:
            problem, steps, _ = _setup(ENGINES[engine], device, seed, **{option: value})
            steps = {"svi": steps["svi_foreach"], "manual": steps["manual"]}
            for step in steps.values():
                step()
            ms, _ = _timed(steps, blocks, per_block, device)
            rows.append(
                {
                    "engine": problem.name,
                    "option": option,
                    "value": value,
                    "svi_foreach_ms_per_step": ms["svi"],
                    "manual_ms_per_step": ms["manual"],
                    "ratio": ms["svi"] / ms["manual"],
                    "peak_memory_kib": {k: _peak_bytes(s, device) / 1024 for k, s in steps.items()},
                }
            )
    return rows


def _markdown(rows, scaling, device, reference):
    unit = "ms/step, CPU time" if device.type == "cpu" else "ms/step, wall"
    lines = [
        f"| engine | task | SVI + pyro Adam ({unit}) | SVI + foreach Adam | hand-written "
        "| ratio (pyro Adam) | ratio (foreach) | same math: max rel. diff losses / grads "
        "| device reads / step (SVI / hand) | peak memory KiB (SVI / hand) "
        "| ratio (foreach), Pyro validation off | both with fused Adam: SVI / hand "
        "(ratio) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reads, peak = r["device_reads_per_step"], r["peak_memory_kib"]
        quiet = r["device_reads_per_step_novalidation"]
        lines.append(
            f"| {r['engine']} | {r['task']} | {r['svi_ms_per_step']:.2f} "
            f"| {r['svi_foreach_ms_per_step']:.2f} | {r['manual_ms_per_step']:.2f} "
            f"| {r['ratio']:.2f} | {r['ratio_foreach']:.2f} "
            f"| {r['same_math_max_rel_diff_losses']:.1e} / "
            f"{r['same_math_max_rel_diff_gradients']:.1e} "
            f"| {reads['svi_foreach']:.0f} / {reads['manual']:.0f} "
            f"({quiet['svi_foreach']:.0f} / {quiet['manual']:.0f} without validation) "
            f"| {peak['svi_foreach']:.0f} / {peak['manual']:.0f} "
            f"| {r['ratio_foreach_novalidation']:.2f} "
            f"| {r['fused_adam_ms_per_step']['svi']:.2f} / "
            f"{r['fused_adam_ms_per_step']['manual']:.2f} ({r['ratio_fused']:.2f}) |"
        )
    lines += [
        "",
        f"Pyro's own floor, {reference['task']}: SVI {reference['svi_foreach_ms_per_step']:.2f}, "
        f"hand-written {reference['manual_ms_per_step']:.2f} ms/step, ratio "
        f"{reference['ratio_foreach']:.2f}.",
    ]
    if scaling:
        lines += [
            "",
            "How a step grows (SVI with foreach Adam against the hand-written loop; the "
            "other options at the values above):",
            "",
            f"| engine | option | value | SVI ({unit}) | hand-written | ratio "
            "| peak memory KiB (SVI / hand) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in scaling:
            peak = r["peak_memory_kib"]
            lines.append(
                f"| {r['engine']} | {r['option']} | {r['value']} "
                f"| {r['svi_foreach_ms_per_step']:.2f} | {r['manual_ms_per_step']:.2f} "
                f"| {r['ratio']:.2f} | {peak['svi']:.0f} / {peak['manual']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def run(quick=False, seed=0, outdir=None, device="cpu"):
    """
    :returns: a list of result rows (dicts; scaling rows have an ``option``) and the
        table's Markdown.
    """
    torch.set_num_threads(1)
    device = torch.device(device)
    blocks, per_block = (3, 5) if quick else (30, 20)
    rows = [_engine_row(name, device, seed, blocks, per_block) for name in ENGINES]
    reference = _pyro_reference_row(device, seed, blocks, per_block)
    scaling = []
    if not quick:
        scaling = _scaling_rows(device, seed, 7, 5)
    table = _markdown(rows, scaling, device, reference)
    for name, row in zip(ENGINES, rows):
        table += "\n" + _breakdown_markdown(name, row["breakdown_ms_per_step"])
    if outdir is not None and scaling:
        _plot(scaling, os.path.join(outdir, "overhead_scaling.png"), device)
        table += "\n![step time against problem size](overhead_scaling.png)\n"
    return rows + [reference] + scaling, table


def _plot(scaling, path, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    groups = {}
    for r in scaling:
        groups.setdefault((r["engine"], r["option"]), []).append(r)
    fig, axes = plt.subplots(
        2, len(groups), figsize=(3.0 * len(groups), 5.4), squeeze=False, sharex="col"
    )
    unit = " (CPU)" if device.type == "cpu" else ""
    for column, ((engine, option), rs) in enumerate(groups.items()):
        values = [r["value"] for r in rs]
        top, bottom = axes[0, column], axes[1, column]
        top.loglog(values, [r["svi_foreach_ms_per_step"] for r in rs], "o-", label="SVI")
        top.loglog(values, [r["manual_ms_per_step"] for r in rs], "s--", label="hand-written")
        top.set_title(f"{engine}: {option}", fontsize=10)
        top.set_ylabel("ms / step" + unit)
        for key, style in (("svi", "o-"), ("manual", "s--")):
            peak = [max(r["peak_memory_kib"][key], 1.0) / 1024 for r in rs]
            bottom.loglog(values, peak, style)
        bottom.set_ylabel("peak memory of a step (MiB)")
        bottom.set_xlabel(option)
        for ax in (top, bottom):
            # the measured values as ticks (log minor labels overlap on short ranges)
            ax.set_xticks(values)
            ax.set_xticklabels([str(v) for v in values])
            ax.xaxis.set_minor_formatter(NullFormatter())
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            low, high = ax.get_ylim()
            # minor labels only where the axis spans less than a decade (else they crowd)
            ax.yaxis.set_minor_formatter(plain if high < 10 * low else NullFormatter())
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """``python -m benchmarks.overhead``: the table, or a profile breakdown."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile",
        metavar="ENGINES",
        help="print where a step's time goes for these engines (e.g. avb,ali,gan) instead",
    )
    parser.add_argument("--json", help="with --profile: also write the breakdowns here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.profile:
        found = {}
        for name in args.profile.split(","):
            steps = 20 if args.quick else 200
            found[name] = breakdown(name, args.device, args.seed, steps=steps)
            print(_breakdown_markdown(name, found[name]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(found, f, indent=2)
        return found
    _, table = run(quick=args.quick, seed=args.seed, device=args.device)
    print(table)


if __name__ == "__main__":
    main()
