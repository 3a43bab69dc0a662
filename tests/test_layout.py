"""The shape of the code: no import cycles, each room imports only the rooms below it, and the engine
and the CLI run without the app's packages."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mudsc", "landscape", "pages")
APP_PACKAGES = ("streamlit", "plotly", "kaleido", "umap")

# What each room may import from the project (besides itself and mudsc's leaf modules).
LEAVES = {"mudsc", "mudsc.errors", "mudsc.atomic", "mudsc.device", "mudsc.data", "mudsc.evaluate", "mudsc.methods",
          "mudsc.distributed"}
ROOMS = {
    "mudsc.unitgraph": set(),
    "mudsc.models": {"mudsc.unitgraph"},
    "mudsc.zoo": {"mudsc.models"},
    "mudsc.diffinit": {"mudsc.unitgraph", "mudsc.models"},
    "mudsc.sameinit": {"mudsc.unitgraph", "mudsc.models", "mudsc.zoo", "mudsc.diffinit"},
    "landscape": {"mudsc.unitgraph", "mudsc.models", "mudsc.diffinit", "mudsc.studio.figure_export"},
    "mudsc.studio": {"mudsc.unitgraph", "mudsc.models", "mudsc.zoo", "mudsc.diffinit", "mudsc.sameinit",
                     "landscape"},
    "mudsc.cli": {"mudsc.unitgraph", "mudsc.models", "mudsc.zoo", "mudsc.diffinit", "mudsc.sameinit",
                  "mudsc.studio", "landscape"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its body (function-level imports included).

    Unlike a plain graph, a package's face importing its own submodules counts: a submodule that
    imports its package's face while the face imports it is a real cycle.
    """
    def resolve(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    edges: dict[str, set[str]] = {}
    for m, f in mods.items():
        here = m if f.name == "__init__.py" else m.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # a name is a submodule, or an attribute of `base` (which then runs base's face)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            out |= {r for t in targets if (r := resolve(t)) not in (None, m)}
        edges[m] = out
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str | None:
    for room in sorted(ROOMS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def test_no_import_cycles():
    assert _cycles(_imports(_modules())) == []


def test_cycle_finder_sees_deferred_and_face_cycles(tmp_path):
    # The checker itself: a function-level import and a face re-export each close a cycle.
    edges = {"p": {"p.a"}, "p.a": {"p"}, "q.x": {"q.y"}, "q.y": {"q.x"}, "r": set()}
    assert sorted(map(tuple, _cycles(edges))) == [("p", "p.a"), ("q.x", "q.y")]


def test_each_room_imports_only_the_rooms_below_it():
    edges = _imports(_modules())
    wrong = []
    for m, targets in edges.items():
        room = _room(m)
        if room is None:
            continue
        for t in targets:
            if t in LEAVES or _room(t) == room:
                continue
            allowed = ROOMS[room]
            if not any(t == a or t.startswith(a + ".") for a in allowed):
                wrong.append(f"{m} -> {t}")
    assert wrong == []


def test_engine_leaves_import_no_room():
    edges = _imports(_modules())
    wrong = [f"{m} -> {t}" for m in LEAVES - {"mudsc", "mudsc.methods"} for t in edges.get(m, ())
             if t not in LEAVES]
    assert wrong == []


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for init in sorted((REPO / "mudsc").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(REPO)} has no docstring"
        if init.parent.name != "solvers":
            assert "import" in doc.lower(), f"{init.relative_to(REPO)} does not say what it may import"


def _app_modules_loaded(argv: list[str], cwd: Path) -> dict:
    code = (
        "import json, sys\n"
        "from mudsc.cli import main\n"
        f"rc = main({argv!r})\n"
        f"app = sorted({{m.split('.')[0] for m in sys.modules}} & {set(APP_PACKAGES)!r})\n"
        "print(json.dumps({'rc': rc, 'app': app}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_merge_and_landscape_import_no_app_package(tiny_parents, tmp_path):
    merge = _app_modules_loaded(["merge", "--parents", *tiny_parents, "--method", "zipit", "--dataset", "digits",
                                 "--stats-images", "200", "--batch-size", "100", "--out", str(tmp_path / "m")], tmp_path)
    assert merge == {"rc": 0, "app": []}
    land = _app_modules_loaded(["landscape", "--models", *tiny_parents, "--methods", "zipit", "permute",
                                "--grid", "3", "--dataset", "digits", "--stats-images", "250", "--eval-images", "50",
                                "--calib-images", "50", "--reset-images", "200", "--path-steps", "0",
                                "--no-cache",
                                "--out", str(tmp_path / "l.npz")], tmp_path)
    assert land == {"rc": 0, "app": []}
