"""The architecture's two hard rules: the Studio is torch-free, the backend is Qt-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

HEAVY = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "lpips", "safetensors"}
QT = {"PySide6", "shiboken6", "pyqtgraph"}


def _imported_roots(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_studio_source_imports_no_ml_library():
    roots = _imported_roots(REPO / "studio")
    offenders = {lib: files for lib, files in roots.items() if lib in HEAVY}
    assert not offenders, f"studio/ imports heavy ML libraries: {offenders}"


def test_studio_imports_backend_only_through_the_client():
    tree_imports = []
    for path in (REPO / "studio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("backend"):
                tree_imports.append((str(path.relative_to(REPO)), node.module))
            if isinstance(node, ast.Import):
                tree_imports += [(str(path.relative_to(REPO)), a.name) for a in node.names if a.name.startswith("backend")]
    bad = [(f, m) for f, m in tree_imports if not m.startswith("backend.service.client")]
    assert not bad, f"studio/ may reach the backend only through backend.service.client: {bad}"


def test_backend_source_imports_no_qt():
    roots = _imported_roots(REPO / "backend")
    offenders = {lib: files for lib, files in roots.items() if lib in QT}
    assert not offenders, f"backend/ imports Qt: {offenders}"


def _modules(package: str) -> list[str]:
    base = REPO / package
    mods = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append(".".join(parts))
    return mods


def test_importing_every_studio_module_loads_no_torch():
    code = (
        "import importlib, sys\n"
        f"for m in {_modules('studio')!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(HEAVY)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing the Studio pulled in: {out.stdout.strip()}"


def test_importing_every_backend_module_loads_no_qt():
    code = (
        "import importlib, sys\n"
        f"for m in {_modules('backend')!r}:\n"
        "    if not m.endswith('__main__'): importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(QT)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing the backend pulled in: {out.stdout.strip()}"


def test_import_contracts_hold():
    """The layers of backend/ and both process rules, as pyproject's import-linter contracts say."""
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles_between_backend_modules():
    """Not even through imports inside functions: a cycle there is a layering debt waiting to bite."""
    import grimp

    graph = grimp.build_graph("backend")
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules} for m in graph.modules}
    assert _cycles(edges) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can see a cycle
