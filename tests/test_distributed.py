"""
Data-parallel training (pyro_adv.distributed): two gloo ranks on CPU, spawned here,
against one process doing the same math.

Two kinds of reference:

* **exact, the combined batch**: models without random draws after set-up (a
  conditional GAN with a deterministic generator, with two discriminator updates per
  step; a MAP guide under TraceAVB_ELBO with a subsampled plate). One process steps on
  the whole global minibatch; two ranks step on its halves. Equal parameters need the
  gradients of guide, model *and* discriminators averaged (the extra discriminator
  updates too), and each rank's ELBO scaled by N / its share.
* **the same draws**: AVB, ALI and GAN with their noise. One process computes, for each
  step, the gradients of both ranks' shares, each under the random state of that
  rank (the ranks' streams are distinct), averages and steps. Any un-averaged
  parameter (a discriminator left out) then differs.

The workers also run the same training with the discriminators' gradients left
un-averaged, to show that these tests fail on that bug.
"""

import os

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.multiprocessing as mp
from pyro.infer import SVI
from pyro.infer.util import zero_grads
from pyro.util import get_rng_state, set_rng_state

from pyro_adv import distributed, training
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_ALI, Trace_GAN, TraceAVB_ELBO, is_discriminator_param
from pyro_adv.nn import ImplicitEncoder, MLPGenerator

N, BATCH, STEPS, LR = 48, 16, 4, 0.02
SEED, DATA_SEED, BUILD_SEED = 5, 1, 0

# ------------------------------------------------------------------------- problems


def _data():
    g = torch.Generator().manual_seed(DATA_SEED)
    c = torch.randn(N, 1, generator=g)
    return c, 2.0 * c + 0.3 * torch.randn(N, 1, generator=g)


def _amortized(objective):
    """x_i ~ N(z_i, 0.5), z_i ~ N(0, 1); an implicit encoder q(z_i | x_i)."""
    _, x = _data()
    encoder = ImplicitEncoder(1, 1, hidden_dims=(8,))

    def model(x, idx):
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[idx])

    def guide(x, idx):
        pyro.module("encoder", encoder)
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("z", encoder(x[idx]))

    return model, guide, objective, lambda idx: (x, idx)


def _gan(discriminator_steps=1, deterministic=False):
    c, y = _data()
    generator = MLPGenerator(1, 1, hidden_dims=(8,))

    def model(c, y, idx):
        pyro.module("generator", generator)
        with pyro.plate("data", N, subsample=idx):
            if deterministic:  # y = G(c): nothing random once built
                pyro.deterministic("c", c[idx], event_dim=1)
                pyro.sample("y", dist.Delta(generator(c[idx]), event_dim=1), obs=y[idx])
            else:
                noise = dist.Normal(torch.zeros(len(idx), 1), 1.0).to_event(1)
                pyro.sample("y", ImplicitDistribution(generator, noise), obs=y[idx])

    objective = Trace_GAN(
        discriminator_hidden_dims=(8,),
        discriminator_steps=discriminator_steps,
        # a plain optimizer: under data parallelism the objective must average anyway
        discriminator_optim=pyro.optim.Adam({"lr": LR}) if discriminator_steps > 1 else None,
    )
    return model, lambda *a: None, objective, lambda idx: (c, y, idx)


def _map():
    """z ~ N(0, 1), x_i ~ N(z, 1) in a subsampled plate; a Delta (MAP) guide."""
    _, x = _data()

    def model(x, idx):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", N, subsample=idx):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx, 0])

    def guide(x, idx):
        pyro.sample("z", dist.Delta(pyro.param("loc", torch.tensor(0.5))))

    return model, guide, TraceAVB_ELBO(num_particles=1, ema_decay=0.999), lambda idx: (x, idx)


PROBLEMS = {
    "avb": lambda: _amortized(
        TraceAVB_ELBO(
            ema_decay=0.999,
            num_particles=4,
            moment_particles=32,
            discriminator_particles=16,
            discriminator_hidden_dims=(8,),
        )
    ),
    "ali": lambda: _amortized(Trace_ALI(discriminator_hidden_dims=(8,))),
    "gan": lambda: _gan(),
    "gan_exact": lambda: _gan(discriminator_steps=2, deterministic=True),
    "map_exact": _map,
}
STOCHASTIC = ("avb", "ali", "gan")
EXACT = ("gan_exact", "map_exact")


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _build(problem):
    pyro.clear_param_store()
    pyro.set_rng_seed(BUILD_SEED)  # the same networks on every rank
    return PROBLEMS[problem]()


# --------------------------------------------------------------------------- ranks


def _train_rank(problem, broken=False, guard=True, checkpoint=None):
    model, guide, objective, step_args = _build(problem)
    optim = distributed.DistributedOptimizer(pyro.optim.Adam({"lr": LR}))
    if broken:  # the bug these tests must catch: discriminators left un-averaged
        reduce = optim.all_reduce_gradients
        name = pyro.get_param_store().param_name

        def skip_discriminators(params):
            reduce([p for p in params if not is_discriminator_param(name(p))])

        optim.__dict__["all_reduce_gradients"] = skip_discriminators
        objective._distributed_discriminator_optim = lambda: objective.discriminator_optim
        if not guard:  # nor refused when first seen: only the comparison can catch it
            optim.__dict__["_checked"] = _Everything()
    svi = SVI(model, guide, optim, objective)
    batches = distributed.ShardedSubsample(N, BATCH, seed=DATA_SEED)
    distributed.broadcast_parameters(svi, *step_args(batches.indices(0)))
    distributed.set_rng_seed(SEED)
    for step in range(STEPS):
        if checkpoint is not None and step == STEPS // 2:
            distributed.save_checkpoint(checkpoint, svi, step=step)
        svi.step(*step_args(batches.indices(step)))
    return _params(), objective.averages.state_dict()["shadows"]


class _Everything(set):
    def __contains__(self, item):
        return True


def _worker(rank, path, results, checkpoint):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{path}", rank=rank, world_size=2
    )
    try:
        pyro.enable_validation(True)
        out = {}
        for p in PROBLEMS:
            out[p], out[f"{p}_averages"] = _train_rank(
                p, checkpoint=checkpoint if p == "gan_exact" else None
            )
        out["gan_broken"] = _train_rank("gan", broken=True, guard=False)[0]
        out["gan_exact_broken"] = _train_rank("gan_exact", broken=True, guard=False)[0]
        try:  # with the guard, the un-averaged extra updates are refused at once
            _train_rank("gan_exact", broken=True)
        except distributed.ParameterMismatchError as e:
            out["guard_error"] = str(e)
        # a mismatch that is not fixed: refused, not averaged
        pyro.clear_param_store()
        distributed.set_rng_seed(SEED)  # different networks per rank
        model, guide, objective, step_args = PROBLEMS["gan"]()
        svi = SVI(model, guide, distributed.DistributedOptimizer(pyro.optim.Adam({})), objective)
        try:
            svi.step(*step_args(torch.arange(rank * 8, rank * 8 + 8)))
        except distributed.ParameterMismatchError as e:
            out["mismatch_error"] = str(e)
        torch.save(out, results[rank])
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    results = [str(tmp / f"rank{r}.pt") for r in range(2)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    checkpoint = str(tmp / "checkpoint.pt")
    mp.spawn(_worker, args=(str(tmp / "rendezvous"), results, checkpoint), nprocs=2, join=True)
    return [torch.load(f, weights_only=True) for f in results] + [checkpoint]


# ---------------------------------------------------------------------- references


def _combined_batch(problem):
    """One process, the whole global minibatch each step."""
    model, guide, objective, step_args = _build(problem)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), objective)
    batches = distributed.ShardedSubsample(N, BATCH, seed=DATA_SEED)
    # built on rank 0's share, as broadcast_parameters does
    svi.evaluate_loss(*step_args(batches.global_indices(0)[: BATCH // 2]))
    for step in range(STEPS):
        svi.step(*step_args(batches.global_indices(step)))
    return _params()


def _same_draws(problem):
    """One process: each step, both ranks' gradients under their own random streams."""
    model, guide, objective, step_args = _build(problem)
    optim = pyro.optim.Adam({"lr": LR})
    batches = distributed.ShardedSubsample(N, BATCH, seed=DATA_SEED)
    shares = [slice(0, BATCH // 2), slice(BATCH // 2, BATCH)]
    objective.loss(model, guide, *step_args(batches.global_indices(0)[shares[0]]))
    states = []
    for r in range(2):
        pyro.set_rng_seed(distributed.rank_seed(SEED, r))
        states.append(get_rng_state())
    for step in range(STEPS):
        params = set()
        for r in range(2):
            set_rng_state(states[r])
            with pyro.poutine.trace(param_only=True) as capture:
                objective.loss_and_grads(
                    model, guide, *step_args(batches.global_indices(step)[shares[r]])
                )
            states[r] = get_rng_state()
            params |= {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        for p in params:
            p.grad /= 2
        optim(params)
        zero_grads(params)
    return _params()


def _close(a, b, atol=1e-5):
    assert set(a) == set(b)
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-5) for k in a)


def _assert_close(a, b, atol=1e-5):
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-5), (k, a[k], b[k])


# --------------------------------------------------------------------------- tests


def test_ranks_stay_identical(ranks):
    for problem in PROBLEMS:
        _assert_close(ranks[0][problem], ranks[1][problem], atol=0)
        # the weight averages the sampling networks use, too
        averages = ranks[0][f"{problem}_averages"]
        assert averages and not any(is_discriminator_param(k) for k in averages)
        _assert_close(averages, ranks[1][f"{problem}_averages"], atol=0)
    assert any(is_discriminator_param(k) for k in ranks[0]["gan"])


@pytest.mark.parametrize("problem", EXACT)
def test_matches_one_process_on_the_combined_batch(ranks, problem):
    reference = _combined_batch(problem)
    _assert_close(ranks[0][problem], reference)
    model, guide, objective, step_args = _build(problem)
    batches = distributed.ShardedSubsample(N, BATCH, seed=DATA_SEED)
    objective.loss(model, guide, *step_args(batches.global_indices(0)[: BATCH // 2]))
    # training moved every parameter: the comparison has teeth
    assert all(not torch.allclose(reference[k], v) for k, v in _params().items())


@pytest.mark.parametrize("problem", STOCHASTIC)
def test_matches_one_process_with_the_ranks_draws(ranks, problem):
    _assert_close(ranks[0][problem], _same_draws(problem))


def test_unaveraged_discriminators_fail_the_comparison(ranks):
    # the bug: with the discriminators' gradients (or their extra updates) left
    # un-averaged the ranks drift apart and neither matches the reference
    for broken, reference in (("gan_broken", _same_draws("gan")), ("gan_exact_broken", None)):
        reference = _combined_batch("gan_exact") if reference is None else reference
        assert not _close(ranks[0][broken], ranks[1][broken])
        assert not _close(ranks[0][broken], reference)
        disc = [k for k in reference if is_discriminator_param(k)]
        assert not all(torch.allclose(ranks[0][broken][k], ranks[1][broken][k]) for k in disc)


def test_checkpoint_of_two_ranks_resumes_on_one(ranks):
    # rank 0 wrote the state after STEPS // 2 steps; one process continues on the
    # combined batch and ends where the two ranks ended
    model, guide, objective, step_args = _build("gan_exact")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), objective)
    batches = distributed.ShardedSubsample(N, BATCH, seed=DATA_SEED)
    pyro.set_rng_seed(123)
    state = distributed.load_checkpoint(ranks[2], svi, *step_args(batches.global_indices(0)))
    assert state["step"] == STEPS // 2 and state["extra"] is None
    saved = training._read(ranks[2], None)["extra"]["distributed"]
    assert saved["world_size"] == 2  # rank 0 continues rank 0's stream
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    for step in range(STEPS // 2, STEPS):
        svi.step(*step_args(batches.global_indices(step)))
    _assert_close(_params(), ranks[0]["gan_exact"])
    # the averages were saved and restored: they continue as the two ranks' did
    _assert_close(objective.averages.state_dict()["shadows"], ranks[0]["gan_exact_averages"])


def test_parameters_that_differ_are_refused(ranks):
    for r in range(2):
        message = ranks[r]["mismatch_error"]
        assert "differ from rank 0" in message and "broadcast_parameters" in message
        assert "discriminator_data" in ranks[r]["guard_error"] or r == 0


# ------------------------------------------------------------------ single process


def test_sharding_helpers_single_process():
    batches = distributed.ShardedSubsample(10, 4, seed=3)
    idx = batches.indices(2)
    assert torch.equal(idx, batches.global_indices(2)) and len(set(idx.tolist())) == 4
    assert not torch.equal(batches.indices(2), batches.indices(3))
    bank = {"x": torch.arange(6.0).reshape(1, 6), "z": torch.zeros(1, 6, 2)}
    assert distributed.shard(bank, dim=1)["z"].shape == (1, 6, 2)
    assert distributed.rank_seed(7, 0) == 7
    seeds = {distributed.rank_seed(s, r) for s in range(3) for r in range(3)}
    assert len(seeds) == 9
    with pytest.raises(ValueError, match="subsample_size"):
        distributed.ShardedSubsample(10, 11)
    with pytest.raises(TypeError, match="PyroOptim"):
        distributed.DistributedOptimizer(torch.optim.Adam)
