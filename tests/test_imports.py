"""Import hygiene (issue 14, item 3): every module imports on its own, there is no
import cycle anywhere in the package (lazy imports inside functions included), the
arrows run one way (diagnostics never reach plotting) and the public API is
importable from ``pyro_adv``."""

import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_adv"


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name):
    """The package modules that ``name`` imports anywhere in its source (functions too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pyro_adv")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rsplit(".", 1)[0]
                base = f"{parent}.{base}" if base else parent
            if base.split(".")[0] != "pyro_adv":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    found.discard(name)
    return {m for m in found if m in MODULES}


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def closure(graph, start):
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


GRAPH = {name: imports_of(name) for name in MODULES}


def test_import_graph_is_read():
    # the analysis sees the imports it must see (a broken reader would pass everything)
    assert "pyro_adv.infer.adversarial" in GRAPH["pyro_adv.infer.trace_avb_elbo"]
    assert "pyro_adv.diagnostics" in GRAPH["pyro_adv.plotting"] or any(
        m.startswith("pyro_adv.diagnostics.") for m in GRAPH["pyro_adv.plotting"]
    )
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_diagnostics_never_reach_plotting():
    for name in MODULES:
        if name.startswith("pyro_adv.diagnostics"):
            reached = closure(GRAPH, name)
            assert "pyro_adv.plotting" not in reached, f"{name} imports pyro_adv.plotting"


def test_every_module_imports_on_its_own_and_the_top_level_has_the_api():
    """Each module imported first, in an interpreter where no other pyro_adv module is
    loaded (torch and pyro stay loaded: they are not ours); the diagnostics load
    neither pyro_adv.plotting nor matplotlib.pyplot; then the public names resolve
    from ``pyro_adv``."""
    code = (
        "import importlib, sys\n"
        "import pyro, torch\n"
        f"names = {sorted(MODULES)!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'pyro_adv']:\n"
        "        del sys.modules[loaded]\n"
        "    sys.modules.pop('matplotlib.pyplot', None)\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "        continue\n"
        "    if name.startswith('pyro_adv.diagnostics'):\n"
        "        for bad in ('pyro_adv.plotting', 'matplotlib.pyplot'):\n"
        "            if bad in sys.modules:\n"
        "                failed.append(f'{name} loads {bad}')\n"
        "assert not failed, failed\n"
        # the public API from the top level (after the loop: pyro_adv imported afresh)
        "for loaded in [m for m in sys.modules if m.split('.')[0] == 'pyro_adv']:\n"
        "    del sys.modules[loaded]\n"
        "import pyro_adv\n"
        "from pyro_adv import (TraceAVB_ELBO, Trace_ALI, Trace_GAN, simulate, AutoImplicit,\n"
        "    ImplicitEncoder, ImplicitDistribution, fit)\n"
        "from pyro_adv.infer import checks, simulation\n"
        "assert pyro_adv.simulate is simulation.simulate\n"
        "assert pyro_adv.NonFiniteLossError is checks.NonFiniteLossError\n"
        "for name in pyro_adv.__all__:\n"
        "    getattr(pyro_adv, name)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
