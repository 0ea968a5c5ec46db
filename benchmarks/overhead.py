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
multi-tensor step). Also reported: device reads (``.item()``, ``bool()``,
``.tolist()``...) per step outside torch's optimizers, and peak tensor memory of one step (the torch
profiler's allocation events on the CPU, ``max_memory_allocated`` on a GPU), and
how the step time grows with the number of observations, the latent dimension, the
particles (AVB) and the batch size (ALI).
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
def _manual_step(losses, params):
    optim = torch.optim.Adam(params, lr=LR)

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


def _engine_row(name, device, seed, blocks, per_block):
    problem, steps, (loss_diff, grad_diff) = _setup(ENGINES[name], device, seed)
    for step in steps.values():
        step()
    ms, wall = _timed(steps, blocks, per_block, device)
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
        "same_math_max_rel_diff_losses": loss_diff,
        "same_math_max_rel_diff_gradients": grad_diff,
        "device_reads_per_step": {k: _reads_per_step(s) for k, s in steps.items()},
        "peak_memory_kib": {k: _peak_bytes(s, device) / 1024 for k, s in steps.items()},
        "blocks": blocks,
        "steps_per_block": per_block,
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


#: (engine, option, values): how the step time grows
SCALING = [
    ("avb", "num_data", (10, 1000, 100_000)),
    ("avb", "latent_dim", (2, 8, 32)),
    ("avb", "particles", (16, 128, 1024)),
    ("ali", "batch", (64, 1024, 16384)),
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
        "| device reads / step (SVI / hand) | peak memory KiB (SVI / hand) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reads, peak = r["device_reads_per_step"], r["peak_memory_kib"]
        lines.append(
            f"| {r['engine']} | {r['task']} | {r['svi_ms_per_step']:.2f} "
            f"| {r['svi_foreach_ms_per_step']:.2f} | {r['manual_ms_per_step']:.2f} "
            f"| {r['ratio']:.2f} | {r['ratio_foreach']:.2f} "
            f"| {r['same_math_max_rel_diff_losses']:.1e} / "
            f"{r['same_math_max_rel_diff_gradients']:.1e} "
            f"| {reads['svi_foreach']:.0f} / {reads['manual']:.0f} "
            f"| {peak['svi_foreach']:.0f} / {peak['manual']:.0f} |"
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
    if outdir is not None and scaling:
        _plot(scaling, os.path.join(outdir, "overhead_scaling.png"), device)
        table += "\n![step time against problem size](overhead_scaling.png)\n"
    return rows + [reference] + scaling, table


def _plot(scaling, path, device):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in scaling:
        groups.setdefault((r["engine"], r["option"]), []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.0))
    for ax, ((engine, option), rs) in zip(axes, groups.items()):
        values = [r["value"] for r in rs]
        ax.loglog(values, [r["svi_foreach_ms_per_step"] for r in rs], "o-", label="SVI")
        ax.loglog(values, [r["manual_ms_per_step"] for r in rs], "s--", label="hand-written")
        ax.set_xlabel(f"{engine}: {option}")
        ax.set_ylabel("ms / step" + (" (CPU)" if device.type == "cpu" else ""))
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
