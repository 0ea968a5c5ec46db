"""
Table 8, data-parallel scaling: samples per second of the same training run on 1
and 2 ranks (``pyro_adv.distributed``; gloo on CPU, NCCL on CUDA), and the scaling
efficiency ``throughput(2) / (2 * throughput(1))``.

The tasks keep the global minibatch fixed, so 2 ranks each process half of it:
AVB with an amortized ``ImplicitEncoder`` (8-dim observations, 2-dim local
latents, 4 particles), and a GAN (``MLPGenerator`` 8 -> 8). Each rank runs one
thread; the ranks are processes spawned with ``torch.multiprocessing`` and
synchronized with a barrier before and after the timed steps.

    python -m benchmarks --tables distributed
    python -m benchmarks.distributed --device cuda     # one GPU per rank
"""

import argparse
import json
import os
import tempfile
import time

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from pyro.infer import SVI

from pyro_adv import distributed
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_GAN, TraceAVB_ELBO
from pyro_adv.nn import ImplicitEncoder, MLPGenerator

__all__ = ["run"]

NUM_DATA, X_DIM, Z_DIM = 8192, 8, 2


def _avb(device, batch):
    g = torch.Generator().manual_seed(0)
    design = torch.randn(Z_DIM, X_DIM, generator=g).to(device)
    data = (torch.randn(NUM_DATA, Z_DIM, generator=g).to(device) @ design).add_(
        0.5 * torch.randn(NUM_DATA, X_DIM, generator=g).to(device)
    )
    encoder = ImplicitEncoder(X_DIM, Z_DIM, hidden_dims=(64, 64)).to(device)
    zeros = torch.zeros(Z_DIM, device=device)

    def model(x, idx):
        with pyro.plate("data", NUM_DATA, subsample=idx):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ design, 0.5).to_event(1), obs=x[idx])

    def guide(x, idx):
        pyro.module("encoder", encoder)
        with pyro.plate("data", NUM_DATA, subsample=idx):
            pyro.sample("z", encoder(x[idx]))

    objective = TraceAVB_ELBO(num_particles=4, moment_particles=64, discriminator_particles=16)
    return model, guide, objective, lambda idx: (data, idx)


def _gan(device, batch):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(NUM_DATA, X_DIM, generator=g).to(device).exp()
    generator = MLPGenerator(X_DIM, X_DIM, hidden_dims=(64, 64)).to(device)
    zeros = torch.zeros(X_DIM, device=device)

    def model(x, idx):
        pyro.module("generator", generator)
        with pyro.plate("data", NUM_DATA, subsample=idx):
            noise = dist.Normal(zeros, 1.0).expand([len(idx), X_DIM]).to_event(1)
            pyro.sample("x", ImplicitDistribution(generator, noise), obs=x[idx])

    return model, lambda *a: None, Trace_GAN(), lambda idx: (data, idx)


TASKS = {
    "AVB, ImplicitEncoder (8-dim x, 2-dim z), 4 particles": _avb,
    "GAN, MLPGenerator 8 -> 8": _gan,
}


def _time_communication(optim):
    """Wraps the optimizer's collectives with a timer; returns the running total (a list)."""
    total = [0.0]
    for name in ("all_reduce_gradients", "_check_same_params"):
        method = getattr(optim, name)

        def timed(*args, _method=method):
            start = time.perf_counter()
            try:
                return _method(*args)
            finally:
                total[0] += time.perf_counter() - start

        optim.__dict__[name] = timed
    return total


def _worker(rank, world, rendezvous, out, task, batch, warmup, steps, device_type):
    torch.set_num_threads(1)
    if device_type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        device, backend = torch.device(device_type), "gloo"
    torch_dist.init_process_group(
        backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world
    )
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide, objective, step_args = TASKS[task](device, batch)
        optim = distributed.DistributedOptimizer(pyro.optim.Adam({"lr": 1e-3}))
        comm = _time_communication(optim)
        svi = SVI(model, guide, optim, objective)
        batches = distributed.ShardedSubsample(NUM_DATA, batch, seed=0)
        distributed.broadcast_parameters(svi, *step_args(batches.indices(0, device)))
        distributed.set_rng_seed(0)
        for step in range(warmup):
            svi.step(*step_args(batches.indices(step, device)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        torch_dist.barrier()
        comm[0] = 0.0
        start = time.perf_counter()
        for step in range(warmup, warmup + steps):
            loss = svi.step(*step_args(batches.indices(step, device)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        torch_dist.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"seconds": seconds, "loss": loss, "communication": comm[0]}, f)
    finally:
        torch_dist.destroy_process_group()


def _measure(task, world, batch, warmup, steps, device):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        args = (world, os.path.join(tmp, "rdzv"), out, task, batch, warmup, steps, device)
        mp.spawn(_worker, args=args, nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)


def run(quick=False, seed=0, outdir=None, device="cpu"):
    """
    :returns: a list of result rows (dicts) and the table's Markdown.
    """
    batch, warmup, steps = (64, 2, 5) if quick else (512, 10, 60)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for task in TASKS:
        result = {w: _measure(task, w, batch, warmup, steps, device) for w in (1, 2)}
        rate = {w: batch * steps / result[w]["seconds"] for w in result}
        rows.append(
            {
                "task": task,
                "device": str(device),
                "global_batch": batch,
                "steps": steps,
                "samples_per_second_1_rank": rate[1],
                "samples_per_second_2_ranks": rate[2],
                "ms_per_step_1_rank": 1000 * result[1]["seconds"] / steps,
                "ms_per_step_2_ranks": 1000 * result[2]["seconds"] / steps,
                "scaling_efficiency": rate[2] / (2 * rate[1]),
                # time in the gradient all-reduce and the parameter check, per step
                "ms_communication_per_step_2_ranks": 1000 * result[2]["communication"] / steps,
                "cpu_count": os.cpu_count(),
            }
        )
    table = (
        "| task | device | global batch | samples/s, 1 rank | samples/s, 2 ranks "
        "| ms/step 1 / 2 ranks | of which all-reduce (2 ranks) | scaling efficiency |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        table += (
            f"| {r['task']} | {r['device']} | {r['global_batch']} "
            f"| {r['samples_per_second_1_rank']:.0f} | {r['samples_per_second_2_ranks']:.0f} "
            f"| {r['ms_per_step_1_rank']:.1f} / {r['ms_per_step_2_ranks']:.1f} "
            f"| {r['ms_communication_per_step_2_ranks']:.1f} "
            f"| {r['scaling_efficiency']:.2f} |\n"
        )
    return rows, table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(run(quick=args.quick, device=args.device)[1])
