"""The package's shape: no import circles, layers that only point down, no module past ~400 lines.

The import graph is read from the source (every ``import``, module-level or inside a function, type-checking
blocks included: a circle through a lazy import is still a circle a reader has to hold in their head).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "instantid"
MAX_LINES = 420  # "around 400": a module that grows past this is split by what its parts are

# Each top-level part of the package and its rank: a module may import its own part and any part ranked lower.
LAYERS: dict[str, int] = {
    "errors": 0, "internal_errors": 0, "sharding": 0, "_moved": 0,
    "core": 1,          # the paper's boxes
    "faces": 2,         # photos -> faces
    "pipelines": 3,     # diffusers-style pipelines on the core
    "speed": 4,         # levers on a pipeline
    "io": 5, "hub": 5,  # files in and out
    "api": 6,           # the high-level API
    "apps": 7,          # applications on the API
    "training": 8, "evaluation": 8,
    "comfyui": 9, "webui": 9, "service": 10, "cli": 11,  # surfaces (the server mounts the web UI; the CLI runs all)
}
# The package's own __init__ (lazy re-exports for users) and the old-path aliases may point anywhere.
EXEMPT = {"instantid", "instantid._moved", "instantid.__main__"}


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def import_graph() -> dict[str, set[str]]:
    modules = module_names()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                # ``from pkg import sub`` imports the submodule sub, not just the package
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {t for t in map(owner, (t for t in targets if t.startswith("instantid"))) if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_the_graph_reader_sees_a_planted_circle():
    graph = {"instantid.a": {"instantid.b"}, "instantid.b": {"instantid.c"}, "instantid.c": {"instantid.a"},
             "instantid.d": {"instantid.a"}}
    assert cycles(graph) == [["instantid.a", "instantid.b", "instantid.c"]]
    real = import_graph()
    assert "instantid.api.regions" in real["instantid.apps.swap"]  # a lazy import inside a function counts too
    assert "instantid.pipelines.schedulers" in real["instantid.api.settings"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_every_part_has_a_layer_and_imports_only_point_down():
    graph = import_graph()
    unranked = sorted({part(m) for m in graph if m not in EXEMPT} - set(LAYERS))
    assert not unranked, f"give these parts a rank in LAYERS: {unranked}"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() if m not in EXEMPT for t in targets
                    if t not in EXEMPT and LAYERS[part(t)] > LAYERS[part(m)])
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_module_is_past_about_400_lines():
    long = {str(p.relative_to(SRC)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by what their parts are: {long}"


# Imports every module first, each in a forked child of one interpreter that has only the third-party libraries
# loaded: a fresh interpreter per module would pay torch's import ~130 times.
ISOLATED = """
import importlib, json, os, sys, traceback
for lib, names in json.loads(sys.argv[1]).items():
    try:
        module = importlib.import_module(lib)
        for name in names:
            getattr(module, name, None)
    except Exception:
        pass
failed = []
for name in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED", *failed)
"""


def test_every_module_imports_first_in_a_fresh_process():
    """No import order in which a circle would bite: each module imported before any other of the package."""
    modules = module_names()
    # The ComfyUI nodes import ComfyUI's own modules: they load inside ComfyUI (tests/test_comfyui.py does that).
    names = sorted(m for m in modules if not m.endswith("__main__") and not m.startswith("instantid.comfyui"))
    libraries: dict[str, set[str]] = {}
    for path in modules.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                libraries.setdefault(node.module, set()).update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                libraries.update({a.name: libraries.get(a.name, set()) for a in node.names})
    third_party = json.dumps({lib: sorted(attrs) for lib, attrs in libraries.items()
                              if not lib.startswith("instantid")})
    result = subprocess.run([sys.executable, "-c", ISOLATED, third_party, *names], capture_output=True, text=True,
                            timeout=600,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                 "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"})
    failed = result.stdout.strip().rpartition("FAILED")[2].split()
    assert result.returncode == 0 and not failed, f"{failed}\n{result.stderr[-3000:]}"


def test_old_flat_module_paths_are_the_new_modules():
    from instantid._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
