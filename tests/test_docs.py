"""
Every Python block of the README and of the documentation runs.

A page's blocks (```` ```python ```` fences in Markdown, ``.. code-block:: python`` and
``.. code:: python`` in reST) run in order, in one namespace, in a fresh temporary
directory; a block that raises fails the page's test.

**Step counts.** Documented training loops are written as ``num_steps = N`` followed by
``range(num_steps)``. The test caps every such assignment at 20 steps, so that the
pages run in seconds: ``pytest tests/test_docs.py --docs-steps 0`` (or
``PYRO_ADV_DOCS_STEPS=0``) runs the documented counts, ``--docs-steps 100`` caps them
at 100. Nothing else in the blocks is changed.

The module also checks what the documentation promises about the package layout:
``import pyro_adv`` imports neither torch nor matplotlib, the public API is importable
from the top level, and no diagnostics module imports plotting.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted(
    p
    for p in (ROOT / "docs").rglob("*")
    if p.suffix in (".md", ".rst")
    and "_build" not in p.parts
    and "_generated" not in p.parts
    and "api" not in p.relative_to(ROOT / "docs").parts[:1]
)
DEFAULT_STEPS = 20

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)
_RST_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code(?:-block)?:: python[^\n]*\n")
_NUM_STEPS = re.compile(r"^(?P<lhs>[ \t]*num_steps[ \t]*=[ \t]*)(?P<value>[0-9_]+)[ \t]*$", re.M)


def extract_blocks(path):
    """The Python blocks of a Markdown or reST page, in order, dedented."""
    text = path.read_text()
    if path.suffix == ".md":
        return [m.group(1) for m in _FENCE.finditer(text)]
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = _RST_BLOCK.match(lines[i] + "\n")
        i += 1
        if not match:
            continue
        indent = len(match.group("indent"))
        while i < len(lines) and lines[i].strip().startswith(":"):  # directive options
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            body.append(lines[i])
            i += 1
        depth = min(_indent(line) for line in body if line.strip())
        blocks.append("\n".join(line[depth:] for line in body).strip("\n") + "\n")
    return blocks


def _indent(line):
    return len(line) - len(line.lstrip())


def cap_steps(code, cap):
    """Caps each ``num_steps = N`` line at ``cap`` (``cap`` 0: unchanged)."""
    if not cap:
        return code
    return _NUM_STEPS.sub(lambda m: f"{m.group('lhs')}min({m.group('value')}, {cap})", code)


def _steps_cap(config):
    option = config.getoption("--docs-steps")
    if option is not None:
        return option
    return int(os.environ.get("PYRO_ADV_DOCS_STEPS", DEFAULT_STEPS))


def test_pages_have_python_blocks():
    assert extract_blocks(ROOT / "README.md"), "the README shows no Python"
    assert len(PAGES) > 5, PAGES


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_blocks_run(page, request, tmp_path, monkeypatch):
    blocks = extract_blocks(page)
    if not blocks:
        pytest.skip("no Python blocks")
    monkeypatch.chdir(tmp_path)  # checkpoints and figures the blocks write land here
    cap = _steps_cap(request.config)
    namespace = {"__name__": "__docs__"}
    try:
        for number, code in enumerate(blocks, 1):
            code = cap_steps(code, cap)
            try:
                compiled = compile(code, f"{page.name}, block {number}", "exec")
            except SyntaxError as error:
                pytest.fail(f"{page.name}, block {number} is not valid Python: {error}")
            try:
                exec(compiled, namespace)
            except Exception as error:
                raise AssertionError(
                    f"{page.relative_to(ROOT)}, Python block {number} raised "
                    f"{type(error).__name__}: {error}\n--- the block:\n{code}"
                ) from error
    finally:
        plt.close("all")


def test_num_steps_cap():
    code = "num_steps = 3000\nfor step in range(num_steps):\n    pass\n"
    assert "num_steps = min(3000, 20)" in cap_steps(code, 20)
    assert cap_steps(code, 0) == code


def test_rst_extraction(tmp_path):
    page = tmp_path / "page.rst"
    page.write_text(
        "Text.\n\n.. code-block:: python\n   :caption: x\n\n   a = 1\n\n   b = a + 1\n\n"
        "After.\n\n.. code-block:: bash\n\n   make docs\n\n.. code:: python\n\n  c = b\n"
    )
    assert extract_blocks(page) == ["a = 1\n\nb = a + 1\n", "c = b\n"]


def test_import_is_light_and_lazy():
    code = (
        "import sys, pyro_adv\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
        "from pyro_adv import (TraceAVB_ELBO, Trace_ALI, Trace_GAN, AutoImplicit,\n"
        "    ImplicitEncoder, ImplicitDistribution, infer, nn, distributions, models)\n"
        "assert 'matplotlib' not in sys.modules, 'the engines import matplotlib'\n"
        "for name in pyro_adv.__all__:\n"
        "    getattr(pyro_adv, name)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_diagnostics_never_import_plotting():
    for path in (ROOT / "pyro_adv" / "diagnostics").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.startswith(("pyro_adv.plotting", "matplotlib"))]
            assert not bad, f"{path.name} imports {bad}: diagnostics sit below plotting"
