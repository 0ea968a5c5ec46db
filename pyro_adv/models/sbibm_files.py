r"""
sbibm's stored observations and reference posterior draws, read from an installed
``sbibm`` package (Lueckmann et al. 2021). ``pip install sbibm --no-deps`` is enough:
the files are read directly, sbibm's code (and its heavy dependencies) is never
imported.

For each task and observation ``k = 1..10`` sbibm ships, under
``sbibm/tasks/<task>/files/num_observation_<k>/``:

* ``observation.csv``: the observed ``x`` (``dim_data`` values);
* ``true_parameters.csv``: the :math:`\theta` that simulated it;
* ``reference_posterior_samples.csv.bz2``: 10,000 reference posterior draws;
* ``observation_seed.csv``: the seed sbibm drew both with.

The simulators of :mod:`pyro_adv.models.sbi_tasks` regenerate the observations from
the seeds; the reference draws are what this module adds (for ``slcp`` and
``bernoulli_glm`` they come from long rejection / MCMC runs that have no cheap exact
counterpart).
"""

import bz2
import importlib.util
import os
from collections import namedtuple

import numpy as np
import torch

__all__ = ["SbibmObservation", "load_sbibm", "sbibm_available", "sbibm_task_dir"]

#: one stored observation: ``true_parameters`` ``(dim_parameters,)``, ``observation``
#: ``(dim_data,)``, ``reference_samples`` ``(10000, dim_parameters)``, ``seed`` (int)
SbibmObservation = namedtuple(
    "SbibmObservation", ["true_parameters", "observation", "reference_samples", "seed"]
)

_INSTALL = "pip install sbibm --no-deps  (only its data files are used)"


def sbibm_available():
    """Whether an ``sbibm`` package is installed (it is not imported)."""
    return importlib.util.find_spec("sbibm") is not None


def sbibm_task_dir(task):
    """
    The folder of sbibm's stored files for ``task`` (sbibm's name).

    :raises ModuleNotFoundError: if sbibm is not installed.
    :raises ValueError: if sbibm has no such task.
    """
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"sbibm's observations and reference posteriors for {task!r} need the sbibm "
            f"package: {_INSTALL}"
        )
    root = os.path.join(list(spec.submodule_search_locations)[0], "tasks")
    path = os.path.join(root, str(task), "files")
    if not os.path.isdir(path):
        known = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "files")))
        raise ValueError(f"sbibm has no stored files for task {task!r}; it has {known}")
    return path


def _read_csv(path):
    # a header line, then comma-separated rows; bz2-compressed where the name says so
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rt") as fh:
        return np.loadtxt(fh, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)


def load_sbibm(task, num_observation):
    """
    sbibm's observation ``num_observation`` (1-based, 1..10) of ``task``, with its
    true parameters and 10,000 reference posterior draws, as float32 tensors (sbibm's
    precision).

    :param str task: sbibm's task name, e.g. ``"two_moons"``.
    :param int num_observation: which of the 10 observations.
    :rtype: SbibmObservation
    :raises ModuleNotFoundError: if sbibm is not installed (``pip install sbibm --no-deps``).
    """
    path = os.path.join(sbibm_task_dir(task), f"num_observation_{int(num_observation)}")
    if not os.path.isdir(path):
        raise ValueError(
            f"sbibm's task {task!r} has no observation {num_observation} (they are 1..10)"
        )

    def tensor(name):
        return torch.from_numpy(_read_csv(os.path.join(path, name)).astype(np.float32))

    seed = int(_read_csv(os.path.join(path, "observation_seed.csv"))[0, 0])
    return SbibmObservation(
        tensor("true_parameters.csv")[0],
        tensor("observation.csv")[0],
        tensor("reference_posterior_samples.csv.bz2"),
        seed,
    )
