r"""
Simulations for likelihood-free inference: :func:`simulate` draws a *simulation
bank* of :math:`(z, x)` pairs from a model run forward, and :class:`Trace_ALI`
reads this step's simulated side either from fresh forward runs
(:func:`forward_simulations`) or from a bank (:func:`draw_from_bank`).

Both return the simulated sites in the layout of a vectorized forward run (the
particle plate on the left, one ``nodes`` entry per site), so that the feature
builders of the objective read them like a trace.
"""

from collections import OrderedDict

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_factor, site_is_subsample

from pyro_adv.distributions.implicit import unwrap
from pyro_adv.infer.util import depends_on_parameters, plate_frames

__all__ = [
    "SiteNodes",
    "check_bank",
    "draw_from_bank",
    "forward_simulations",
    "sample_sites",
    "simulate",
]

_SIMULATION_PLATE = "ali_simulations"

_REPARAM_HINT = (
    "Trace_ALI trains the model through its simulated values (pathwise gradients), so every "
    "site between a model parameter and an observed site must be reparameterizable: use an "
    "ImplicitDistribution, a dist.Delta of a generator's output, or a continuous "
    "distribution with rsample. To infer latents of a fixed simulator, register no model "
    "parameters (or train from a bank, simulations=simulate(model, ...))."
)


class SiteNodes:
    """A stand-in for a trace: the ``nodes`` (``{name: site}``) that feature builders read."""

    def __init__(self, nodes):
        self.nodes = nodes


def sample_sites(trace):
    """The sample sites of a trace, subsample sites excluded."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def simulate(model, num_simulations, *args, **kwargs):
    r"""
    Runs ``model(*args, **kwargs)`` forward ``num_simulations`` times, ignoring its
    observations (:func:`~pyro.poutine.uncondition`), and returns every sample site:
    latent draws from the prior and simulated observations. The runs are
    vectorized in an outer plate, so the model must broadcast like any Pyro model
    used with vectorized particles. Nothing is scored, so implicit simulators work.

    The result is the *simulation bank* of :class:`~pyro_adv.infer.Trace_ALI`
    (``simulations=``): a fixed budget of :math:`(z, x)` pairs from
    :math:`p(z)\,p(x \mid z)`, drawn once (the setting of neural posterior
    estimation, Papamakarios and Murray 2016; Greenberg et al. 2019).

    Example::

        bank = simulate(exponential_model, 1, num_data=100_000)
        bank["z"].shape, bank["x"].shape      # (1, 100000, 2), (1, 100000)

    :param callable model: a Pyro model.
    :param int num_simulations: number of forward runs.
    :returns: ``{site name: tensor}``, each of shape ``(num_simulations,) +
        batch_shape + event_shape`` of the site in one run (plates with their full
        size: run the model without subsampling).
    :rtype: dict
    """
    if int(num_simulations) != num_simulations or num_simulations < 1:
        raise ValueError(
            f"simulate: num_simulations must be a positive integer, got {num_simulations}"
        )
    num_simulations = int(num_simulations)
    simulator = poutine.uncondition(model)
    with torch.no_grad(), poutine.block():
        probe = poutine.trace(simulator).get_trace(*args, **kwargs)
        nesting = max(
            [-f.dim for site in sample_sites(probe) for f in plate_frames(site)], default=0
        )
        runs = pyro.plate(_SIMULATION_PLATE, num_simulations, dim=-(nesting + 1))(simulator)
        trace = poutine.trace(runs).get_trace(*args, **kwargs)
    bank = OrderedDict()
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site_is_factor(site):
            continue
        frames = [f for f in plate_frames(site) if f.name != _SIMULATION_PLATE]
        batch = max([-f.dim for f in frames], default=0)
        value = site["value"]
        keep = value.dim() - batch - site["fn"].event_dim
        lead = value.shape[:keep]
        if lead.numel() not in (1, num_simulations):
            raise ValueError(
                f"simulate: site '{name}' has value shape {tuple(value.shape)}, whose batch "
                "dims are not all declared by pyro.plate"
            )
        value = value.reshape((lead.numel(),) + value.shape[keep:])
        bank[name] = value.expand((num_simulations,) + value.shape[1:]).detach()
    return bank


def check_bank(bank, owner="Trace_ALI"):
    """
    Validates a simulation bank (``None`` passes): a non-empty dict of tensors with
    the same leading simulation dim. Returns it with its tensors detached.
    """
    if bank is None:
        return None
    if not isinstance(bank, dict) or not bank:
        raise TypeError(
            f"{owner}: simulations must be a non-empty dict {{site name: tensor}} as returned "
            f"by pyro_adv.infer.simulate, got {type(bank).__name__}"
        )
    sizes = set()
    for key, value in bank.items():
        if not torch.is_tensor(value) or value.dim() < 1:
            raise TypeError(
                f"{owner}: simulations['{key}'] must be a tensor with a leading simulation "
                f"dim, got {value!r}"
            )
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise ValueError(
            f"{owner}: every entry of simulations must have the same number of simulations "
            f"(leading dim); got {sorted(sizes)}"
        )
    return {key: value.detach() for key, value in bank.items()}


def forward_simulations(model, guide_trace, model_trace, names, args, kwargs, vectorize, owner):
    """
    The model run forward (prior latents, simulated observations) on this step's
    plates: subsample indices are replayed from the guide and model traces, and
    ``vectorize(fn)`` wraps the simulator in the objective's particle plate.
    Sites whose parameters need gradients must be reparameterizable.

    :returns: the sites ``names`` as a :class:`SiteNodes`, each marked observed
        where the model observes it.
    """
    indices = poutine.Trace()
    for trace in (guide_trace, model_trace):
        for site_name, site in trace.nodes.items():
            if site_is_subsample(site) and site_name not in indices.nodes:
                indices.add_node(site_name, **site)
    simulator = poutine.uncondition(poutine.replay(model, trace=indices))
    trace = poutine.trace(vectorize(simulator)).get_trace(*args, **kwargs)
    for site_name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        fn = site["fn"]
        if not getattr(fn, "has_rsample", False) and depends_on_parameters(fn):
            kind = "observed" if site["infer"].get("was_observed") else "latent"
            raise ValueError(
                f"{owner}: {kind} site '{site_name}' ({type(unwrap(fn)[0]).__name__}) is "
                f"not reparameterizable, but its parameters need gradients. {_REPARAM_HINT}"
            )
    nodes = OrderedDict()
    for site_name in names:
        if site_name not in trace.nodes:
            raise ValueError(f"{owner}: site '{site_name}' was not simulated by the model")
        site = dict(trace.nodes[site_name])
        site["is_observed"] = model_trace.nodes[site_name]["is_observed"]
        nodes[site_name] = site
    return SiteNodes(nodes)


def draw_from_bank(bank, guide_trace, model_trace, names, num_particles, nesting, owner):
    """
    This step's simulated pairs drawn from a bank, in the layout of a forward run:
    ``num_particles`` simulations and, inside them, as many plate elements as the
    step's plates have. A subsampled plate of the bank's size takes the
    minibatch's own indices for the first particle (so that with a bank of one
    simulation each data ``x_i`` is paired with its own simulated ``z_i``), other
    plates are drawn uniformly with replacement. Plate indices are shared by all
    sites of a plate.

    :returns: the sites ``names`` as a :class:`SiteNodes`.
    """
    model_params = [
        n
        for n, site in model_trace.nodes.items()
        if site["type"] == "param" and n not in guide_trace.nodes
    ]
    if model_params:
        raise ValueError(
            f"{owner}: the model has parameters {model_params}, but a simulation bank "
            "was drawn once and cannot train them; drop simulations= to simulate "
            "afresh every step (full ALI), or fix the parameters."
        )
    num_sims = next(iter(bank.values())).shape[0]
    particles = num_particles
    device = next(iter(bank.values())).device
    sims = torch.randint(num_sims, (particles,), device=device)
    subsample = {
        site_name: site["value"]
        for trace in (guide_trace, model_trace)
        for site_name, site in trace.nodes.items()
        if site_is_subsample(site)
    }
    plate_indices = {}
    nodes = OrderedDict()
    for site_name in names:
        if site_name not in bank:
            raise ValueError(
                f"{owner}: the simulation bank has no site '{site_name}' (it has "
                f"{sorted(bank)}); build it with pyro_adv.infer.simulate(model, ...)"
            )
        site = model_trace.nodes[site_name]
        event_dim = site["fn"].event_dim
        value = bank[site_name][sims]
        batch_dims = value.dim() - 1 - event_dim
        frames = plate_frames(site)
        needed = max([-f.dim for f in frames], default=0)
        if batch_dims < needed or batch_dims > nesting - (particles > 1):
            raise ValueError(
                f"{owner}: bank entry '{site_name}' has shape {tuple(bank[site_name].shape)}, "
                f"which does not fit the site's plates {[f.name for f in frames]}; "
                "build the bank with simulate(model, num_simulations, *args, **kwargs)"
            )
        for frame in frames:
            pos = 1 + batch_dims + frame.dim
            idx = _plate_indices(
                frame,
                value.shape[pos],
                subsample,
                plate_indices,
                value.device,
                particles,
                owner,
            )
            if idx is None:
                continue
            idx = idx.to(value.device)
            shape = [1] * value.dim()
            shape[0], shape[pos] = particles, idx.shape[-1]
            index = idx.reshape(shape).expand(
                value.shape[:pos] + idx.shape[-1:] + value.shape[pos + 1 :]
            )
            value = value.gather(pos, index)
        expected = site["value"].shape[site["value"].dim() - event_dim :]
        if value.shape[value.dim() - event_dim :] != expected:
            raise ValueError(
                f"{owner}: bank entry '{site_name}' has event shape "
                f"{tuple(value.shape[value.dim() - event_dim :])}, but the site's values "
                f"have event shape {tuple(expected)}"
            )
        if particles > 1:
            value = value.reshape(
                (particles,) + (1,) * (nesting - 1 - batch_dims) + value.shape[1:]
            )
        else:
            value = value[0]
        nodes[site_name] = dict(site, value=value)
    return SiteNodes(nodes)


def _plate_indices(frame, bank_size, subsample, cache, device, particles, owner):
    """Indices into a bank plate for this step's elements, shared by all its sites."""
    if frame.name in cache:
        size, idx = cache[frame.name]
        if size != bank_size:
            raise ValueError(
                f"{owner}: plate '{frame.name}' has {size} elements in one "
                f"bank entry and {bank_size} in another"
            )
        return idx
    if frame.name in subsample and frame.full_size == bank_size:
        idx = subsample[frame.name].reshape(1, -1)
        if particles > 1:
            # the first particle pairs with the data minibatch; the others add new pairs
            extra = torch.randint(bank_size, (particles - 1, idx.shape[-1]), device=idx.device)
            idx = torch.cat([idx, extra])
    elif frame.size == bank_size:
        idx = None
    elif frame.size < bank_size:
        idx = torch.randint(bank_size, (particles, frame.size), device=device)
    else:
        raise ValueError(
            f"{owner}: plate '{frame.name}' has {frame.size} elements in "
            f"this step, but the bank's simulations have only {bank_size}"
        )
    cache[frame.name] = (bank_size, idx)
    return idx
