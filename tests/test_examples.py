"""Smoke-runs every example script with its small-run flags (``--quick``)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--outdir", str(tmp_path), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        # this checkout's pyro_adv, not whichever one is installed (as the docs build does)
        env={
            "MPLBACKEND": "Agg",
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), f"{script.name} saved no figure"
