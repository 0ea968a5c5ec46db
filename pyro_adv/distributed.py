r"""
Data-parallel training on :mod:`torch.distributed`, launched with ``torchrun``.

Each process (rank) runs the user's ordinary ``SVI`` loop on its own shard of
every minibatch; the only change is the optimizer, wrapped in
:class:`DistributedOptimizer`, which averages the gradients of every parameter it
steps over the ranks before the step, as Pyro's
:class:`~pyro.optim.horovod.HorovodOptimizer` does for Horovod. Guide, model and
discriminator parameters all live in Pyro's param store and are stepped by
``svi.optim``, so they are all averaged; the extra discriminator updates of
``discriminator_steps > 1`` use a copy of ``svi.optim`` that averages too.
With every rank's loss scaled to the global data size, the averaged gradient is
the gradient of the full minibatch, and the ranks' parameters stay identical::

    # torchrun --nproc-per-node 2 train.py
    import torch.distributed as dist
    from pyro_adv import distributed

    dist.init_process_group("gloo")          # "nccl" on GPUs
    pyro.set_rng_seed(0)                      # the same networks on every rank
    svi = SVI(model, guide, distributed.DistributedOptimizer(Adam({"lr": 1e-3})),
              TraceAVB_ELBO())
    batches = distributed.ShardedSubsample(len(data), 256, seed=0)
    distributed.broadcast_parameters(svi, data, batches.indices(0))
    distributed.set_rng_seed(0)               # distinct, reproducible draws per rank
    for step in range(num_steps):
        svi.step(data, batches.indices(step))  # with pyro.plate("data", N, subsample=idx)

**Why this design.** ``DistributedDataParallel`` wraps one ``nn.Module`` and
synchronizes on its ``forward``; a Pyro program has several players whose
parameters are created lazily in the param store (Pyro's Lightning example needs
``module_local_params=True`` and an eagerly built ``PyroModule`` for that
reason), and a GAN under DDP easily leaves the discriminator's gradients
un-reduced. Reducing in the optimizer sees exactly the parameters that are
stepped, whoever owns them, and leaves model, guide and objective untouched.

**Loss scaling.** Averaging the ranks' gradients gives the full-batch gradient
when each rank's loss estimates the same full-data quantity: for
:class:`~pyro_adv.infer.TraceAVB_ELBO`, a plate subsampled with
``pyro.plate(name, N, subsample=idx)`` scales the local terms by
``N / len(idx)``, so each rank's ELBO is an unbiased estimate of the full-data
ELBO and their mean is the estimate of the combined minibatch.
:class:`~pyro_adv.infer.Trace_GAN` and :class:`~pyro_adv.infer.Trace_ALI`
average over plate elements; with equal shards (:class:`ShardedSubsample` makes
them equal) the mean of the ranks' means is the combined minibatch's mean.

**Randomness.** Parameters must start equal on every rank:
:func:`broadcast_parameters` builds everything (guide networks, discriminators
with their input standardization) with one evaluation and copies rank 0's values
to all ranks; :class:`DistributedOptimizer` refuses, naming them, parameters that
differ across ranks when it first sees them, instead of averaging gradients taken
at different points. Draws must then differ per rank (otherwise every rank
simulates the same noise): :func:`set_rng_seed` seeds rank ``r`` with
:func:`rank_seed` ``(seed, r)`` (rank 0 keeps ``seed``, so one rank reproduces a
single-process run).

**Checkpoints.** :func:`save_checkpoint` gathers every rank's random state and
rank 0 writes the file; :func:`load_checkpoint` loads it on every rank, on any
number of ranks: parameters and optimizer moments are the same everywhere, rank
``r`` gets the saved stream of rank ``r`` where there was one and a fresh
reproducible stream otherwise.

**Simulation banks.** :func:`shard` gives each rank its slice of a bank (or of any
tensor) along the simulation dimension, so that ranks train on disjoint
simulations; equivalently each rank may simulate its own part with
``simulate(model, S // world_size)`` after :func:`set_rng_seed`.

Without an initialized process group everything here works as one rank of one,
so the same script runs unchanged without ``torchrun``.
"""

import zlib

import numpy as np
import pyro
import pyro.optim
import torch
import torch.distributed as dist

__all__ = [
    "DistributedOptimizer",
    "ParameterMismatchError",
    "ShardedSubsample",
    "broadcast_parameters",
    "is_distributed",
    "load_checkpoint",
    "rank",
    "rank_seed",
    "save_checkpoint",
    "set_rng_seed",
    "shard",
    "world_size",
]


class ParameterMismatchError(RuntimeError):
    """Parameters differ across ranks where they must be identical."""


def is_distributed(group=None):
    """Whether a process group of more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group=None):
    """This process's rank in ``group`` (0 without a process group)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group=None):
    """The number of ranks in ``group`` (1 without a process group)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank_seed(seed, rank):
    """
    The seed of rank ``rank`` for a run seeded ``seed``: ``seed`` itself for rank
    0, and for other ranks a number drawn from :class:`numpy.random.SeedSequence`
    with ``spawn_key=(rank,)`` (distinct streams, not ``seed + rank``, which would
    make run 0's rank 1 the same as run 1's rank 0).
    """
    seed, rank = int(seed), int(rank)
    if rank < 0:
        raise ValueError(f"rank_seed: rank must be non-negative, got {rank}")
    if rank == 0:
        return seed
    # numpy's global seed must fit in 32 bits (pyro.set_rng_seed seeds numpy too)
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1)[0])


def set_rng_seed(seed, group=None):
    """
    Seeds torch, numpy and Python's ``random`` (:func:`pyro.set_rng_seed`) with
    :func:`rank_seed` ``(seed, rank)``: every rank draws differently, and a rerun
    on the same number of ranks draws the same. Returns the seed used.
    """
    value = rank_seed(seed, rank(group))
    pyro.set_rng_seed(value)
    return value


def shard(value, dim=0, group=None):
    """
    This rank's contiguous part of ``value`` along ``dim``: a tensor, or a dict of
    tensors such as a simulation bank from :func:`~pyro_adv.infer.simulate`
    (``dim=0``, the simulation dim; ``dim=1`` for the plate of a bank of one
    simulation). Parts differ in size by at most one element
    (:func:`torch.tensor_split`); rank ``r``'s part of a tensor of length ``n`` is
    ``value[r * n // W : (r + 1) * n // W]`` up to that rounding.
    """
    r, w = rank(group), world_size(group)
    if isinstance(value, dict):
        if not value:
            raise ValueError("shard: the dict to shard is empty")
        sizes = {k: v.shape[dim] for k, v in value.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"shard: the entries have different sizes along dim {dim}: {sizes}")
        return type(value)((k, shard(v, dim, group)) for k, v in value.items())
    if not torch.is_tensor(value):
        raise TypeError(f"shard: expected a tensor or a dict of tensors, got {type(value)}")
    if value.shape[dim] < w:
        raise ValueError(
            f"shard: dim {dim} has {value.shape[dim]} elements, fewer than the {w} ranks"
        )
    return torch.tensor_split(value, w, dim=dim)[r]


class ShardedSubsample:
    """
    Minibatch indices for data-parallel training: step ``t``'s global minibatch of
    ``subsample_size`` distinct indices of ``range(size)`` is drawn from a
    generator seeded by ``(seed, t)``, the same on every rank, and each rank gets
    its contiguous share of ``subsample_size / world_size`` indices. The shares of
    one step are disjoint and together form the global minibatch, whatever the
    ranks' own random streams do. Pass them to the plate as Pyro does::

        with pyro.plate("data", N, subsample=idx):   # scaled by N / len(idx)
            pyro.sample("x", ..., obs=data[idx])

    :param int size: number of data points (the plate's full size).
    :param int subsample_size: global minibatch size, a multiple of the number of
        ranks (equal shares keep the mean of per-rank means the global mean).
    :param int seed: seed of the minibatch stream.
    :param group: the process group (default: the world).
    """

    def __init__(self, size, subsample_size, seed=0, group=None):
        w = world_size(group)
        for name, value in (("size", size), ("subsample_size", subsample_size)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(
                    f"ShardedSubsample: {name} must be a positive integer, got {value}"
                )
        if subsample_size > size:
            raise ValueError(
                f"ShardedSubsample: subsample_size ({subsample_size}) exceeds size ({size})"
            )
        if subsample_size % w:
            raise ValueError(
                f"ShardedSubsample: subsample_size ({subsample_size}) must be a multiple of "
                f"the number of ranks ({w}) so that every rank's share has the same size"
            )
        self.size, self.subsample_size, self.seed = int(size), int(subsample_size), int(seed)
        self.group = group

    def global_indices(self, step):
        """Step ``step``'s whole minibatch (the concatenation of the ranks' shares)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        return torch.randperm(self.size, generator=generator)[: self.subsample_size]

    def indices(self, step, device=None):
        """This rank's share of step ``step``'s minibatch (on ``device``)."""
        w, r = world_size(self.group), rank(self.group)
        share = self.subsample_size // w
        idx = self.global_indices(step)[r * share : (r + 1) * share]
        return idx if device is None else idx.to(device)


def _control_device(group):
    """Where small control tensors live: NCCL reduces only CUDA tensors."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _param_name(p):
    name = pyro.get_param_store().param_name(p)
    if name is None:
        raise ValueError(
            "DistributedOptimizer: a parameter to step is not in Pyro's param store; it "
            "orders parameters by their param-store names so every rank reduces them alike"
        )
    return name


class DistributedOptimizer(pyro.optim.PyroOptim):
    r"""
    Wraps a :class:`~pyro.optim.PyroOptim` (an optimizer or a learning-rate
    scheduler) so that each step first averages the gradients of the parameters
    it steps over the ranks of ``group`` (one ``all_reduce`` per device and dtype,
    parameters in the order of their param-store names), then lets the wrapped
    optimizer step them. Gradient clipping applies to the averaged gradient, as in
    a single process.

    The first time it sees a parameter it checks that its value is the same on
    every rank and raises :class:`ParameterMismatchError` otherwise (call
    :func:`broadcast_parameters` first). Every call also checks that all ranks
    step the same parameters, so a rank that built a different model fails
    instead of deadlocking. Without a process group (or with one rank) it is the
    wrapped optimizer.

    :param pyro.optim.PyroOptim optim: the optimizer to wrap.
    :param group: the process group (default: the world).
    """

    def __init__(self, optim, group=None):
        if not isinstance(optim, pyro.optim.PyroOptim):
            raise TypeError(
                f"DistributedOptimizer wraps a pyro.optim.PyroOptim, got {type(optim).__name__}"
            )
        if isinstance(optim, DistributedOptimizer):
            raise TypeError("DistributedOptimizer: the optimizer is already distributed")
        # the wrapped optimizer keeps all state; this object only reduces gradients
        self.__dict__["optim"] = optim
        self.__dict__["group"] = group
        self.__dict__["_checked"] = set()

    def __getattr__(self, name):
        # optim_objs, grad_clip, pt_optim_args, ...: the wrapped optimizer's
        return getattr(self.__dict__["optim"], name)

    def copy(self):
        """A fresh :class:`DistributedOptimizer` with the same settings and no state."""
        from pyro_adv.optim import ForeachOptim

        optim = self.optim
        if type(optim) not in (pyro.optim.PyroOptim, ForeachOptim):
            raise TypeError(f"DistributedOptimizer: {type(optim).__name__} cannot be copied")
        fresh = type(optim)(optim.pt_optim_constructor, optim.pt_optim_args, optim.pt_clip_args)
        return DistributedOptimizer(fresh, self.group)

    def __call__(self, params, *args, **kwargs):
        params = sorted(params, key=_param_name)
        if is_distributed(self.group):
            names = [_param_name(p) for p in params]
            self._check_same_params(names, params)
            new = [(n, p) for n, p in zip(names, params) if n not in self._checked]
            if new:
                _check_equal(new, self.group, "DistributedOptimizer")
                self._checked.update(n for n, _ in new)
            self.all_reduce_gradients(params)
        self.optim(params, *args, **kwargs)

    def all_reduce_gradients(self, params):
        """Replaces each ``p.grad`` by its mean over the ranks (``None`` counts as zero;
        a gradient that is ``None`` on every rank stays ``None``)."""
        buckets = {}
        for p in params:
            buckets.setdefault((p.device, p.dtype), []).append(p)
        w = world_size(self.group)
        for (device, dtype), group_params in buckets.items():
            grads = [
                torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1)
                for p in group_params
            ]
            present = torch.tensor(
                [p.grad is not None for p in group_params], dtype=dtype, device=device
            )
            flat = torch.cat(grads + [present])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            counts = flat[-len(group_params) :]
            offset = 0
            for p, count in zip(group_params, counts.tolist()):
                n = p.numel()
                if count > 0:
                    mean = flat[offset : offset + n].view_as(p) / w
                    if p.grad is None:
                        p.grad = mean.clone()
                    else:
                        p.grad.copy_(mean)
                offset += n

    def _check_same_params(self, names, params):
        signature = zlib.crc32("\0".join(names).encode())
        numel = sum(p.numel() for p in params)
        local = torch.tensor(
            [signature, -signature, numel, -numel],
            dtype=torch.float64,
            device=_control_device(self.group),
        )
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=self.group)
        if local[0] != -local[1] or local[2] != -local[3]:
            raise ParameterMismatchError(
                f"DistributedOptimizer: the ranks step different parameters (this rank: "
                f"{len(names)} parameters, {numel} numbers: {names[:8]}...); every rank must "
                "build the same model, guide and objective"
            )

    def get_state(self):
        return self.optim.get_state()

    def set_state(self, state):
        return self.optim.set_state(state)

    def save(self, filename):
        return self.optim.save(filename)

    def load(self, filename, map_location=None):
        return self.optim.load(filename, map_location=map_location)

    def step(self, *args, **kwargs):
        """A learning-rate scheduler's epoch step (:class:`~pyro.optim.PyroLRScheduler`)."""
        return self.optim.step(*args, **kwargs)


def _flat(tensors, device, dtype):
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])


def _check_equal(named, group, owner):
    """Raises ParameterMismatchError naming the tensors whose values differ from rank 0's."""
    buckets = {}
    for name, t in named:
        buckets.setdefault((t.device, t.dtype), []).append((name, t))
    mismatched = []
    for (device, dtype), items in buckets.items():
        local = _flat([t for _, t in items], device, dtype)
        root = local.clone()
        dist.broadcast(root, src=0, group=group)
        offset = 0
        for name, t in items:
            n = t.numel()
            if not torch.equal(local[offset : offset + n], root[offset : offset + n]):
                mismatched.append(name)
            offset += n
    flag = torch.tensor(
        [float(bool(mismatched))], dtype=torch.float64, device=_control_device(group)
    )
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if flag.item():
        where = f"on rank {rank(group)}: {mismatched}" if mismatched else "on another rank"
        raise ParameterMismatchError(
            f"{owner}: parameters differ from rank 0's {where}. Averaging gradients taken at "
            "different points is not data-parallel training: call "
            "pyro_adv.distributed.broadcast_parameters(svi, *step_args) before the first "
            "step (it builds guide and discriminators and copies rank 0's values)."
        )


def _module_buffers(svi):
    """Buffers outside the param store that must agree: discriminators', the guide's."""
    from pyro_adv.training import objective_of

    buffers = []
    objective = objective_of(svi)
    for key, module in getattr(objective, "discriminators", {}).items():
        buffers += [(f"discriminator {key}: {n}", b) for n, b in module.named_buffers()]
    if isinstance(svi.guide, torch.nn.Module):
        buffers += [(f"guide: {n}", b) for n, b in svi.guide.named_buffers()]
    return [(n, b) for n, b in buffers if b is not None]


def broadcast_parameters(svi=None, *args, group=None, **kwargs):
    """
    Makes every rank start from rank 0's parameters: with ``svi`` and the
    arguments of ``svi.step``, first one ``svi.evaluate_loss(*args, **kwargs)``
    builds what is built lazily (guide networks, discriminators and their input
    standardization); then every param-store parameter and the buffers of the
    objective's discriminators (and of the guide, if it is a module) are copied
    from rank 0. Call it on every rank, before the first step. The ranks must have
    the same param-store names.

    :param pyro.infer.SVI svi: the SVI object (optional: without it only the param
        store is broadcast).
    :param group: the process group (default: the world).
    """
    if svi is not None and (args or kwargs):
        svi.evaluate_loss(*args, **kwargs)
    if not is_distributed(group):
        return
    store = pyro.get_param_store()
    params = store.get_state()["params"]  # the live unconstrained tensors
    named = sorted(params.items())
    if svi is not None:
        named += _module_buffers(svi)
    names = [n for n, _ in named]
    signature = zlib.crc32("\0".join(names).encode())
    check = torch.tensor(
        [signature, -signature], dtype=torch.float64, device=_control_device(group)
    )
    dist.all_reduce(check, op=dist.ReduceOp.MAX, group=group)
    if check[0] != -check[1]:
        raise ParameterMismatchError(
            f"broadcast_parameters: the ranks hold different parameters (this rank: {names}); "
            "build the same model, guide and objective on every rank"
        )
    with torch.no_grad():
        for _, t in named:
            dist.broadcast(t.data, src=0, group=group)


def save_checkpoint(path, svi, step=None, history=None, modules=None, extra=None, group=None):
    """
    :func:`pyro_adv.training.save_checkpoint` for data-parallel runs: call it on
    every rank. The ranks' random states are gathered and rank 0 writes the file
    (parameters and optimizer state are the same on every rank); the others wait.
    """
    from pyro_adv import training

    states = [None] * world_size(group)
    local = training._rng_state()
    if is_distributed(group):
        dist.all_gather_object(states, local, group=group)
    else:
        states = [local]
    if rank(group) == 0:
        extra = dict(extra or {})
        extra["distributed"] = {"world_size": len(states), "rng": states}
        training.save_checkpoint(path, svi, step, history, modules, extra)
    if is_distributed(group):
        dist.barrier(group=group)


def load_checkpoint(path, svi, *args, modules=None, map_location=None, group=None, **kwargs):
    """
    :func:`pyro_adv.training.load_checkpoint` for data-parallel runs, on any number
    of ranks: call it on every rank. Each rank loads the same parameters and
    optimizer state; rank ``r`` continues the saved random stream of rank ``r`` if
    the saved run had one, and otherwise starts the stream of
    :func:`rank_seed` ``(seed, r)`` with ``seed`` derived from the saved rank 0's
    state, so resuming is reproducible on any world size.

    :returns: dict with ``step``, ``history`` and ``extra`` (without the gathered
        random states).
    """
    from pyro_adv import training

    state = training.load_checkpoint(
        path, svi, *args, modules=modules, restore_rng=False, map_location=map_location, **kwargs
    )
    extra = dict(state["extra"] or {})
    saved = extra.pop("distributed", None)
    if saved is None:
        raise training.CheckpointError(
            f"{path} was not written by pyro_adv.distributed.save_checkpoint (it has no "
            "per-rank random states); load it with pyro_adv.training.load_checkpoint"
        )
    r = rank(group)
    if r < len(saved["rng"]):
        training._set_rng_state(saved["rng"][r])
    else:
        root = saved["rng"][0]["torch"]
        seed = zlib.crc32(root.numpy().tobytes())
        pyro.set_rng_seed(rank_seed(seed, r))
    state["extra"] = extra or None
    if is_distributed(group):
        dist.barrier(group=group)
    return state
