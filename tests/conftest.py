import os

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny networks gain nothing from intra-op threads, and on two shared cores a second
# thread made them several times slower: one thread per test process.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for tests that take the `device` fixture (default: cuda where "
        "present, else cpu)",
    )
    parser.addoption(
        "--docs-steps",
        type=int,
        default=None,
        help="tests/test_docs.py: cap on each documented `num_steps = N` (default: 20, "
        "or $PYRO_ADV_DOCS_STEPS); 0 runs the documented step counts",
    )


def pytest_collection_modifyitems(config, items):
    """Accuracy fits marked ``slow`` run first: under ``pytest -n 2`` (``make test``) a
    three-minute fit that starts last would otherwise run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def device(request):
    """The torch.device given by ``--device`` (``cpu`` unless asked otherwise)."""
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda was given, but torch sees no CUDA device")
    return device


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from a clean param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
