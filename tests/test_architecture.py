"""The import graph keeps the architecture of the README: one direction, no cycles.

Read from the source (``ast``), every import counted, the ones inside functions too (a lazy import is
still a dependency). Two rules:

* packages (``unimat_dist.<name>``, and ``data_pipeline`` / ``deploy`` as wholes) sit in the rows of the
  README's architecture diagram and import only from lower rows: representation <- model <- diffusion <-
  inference <- training / generation <- Ray adapters, jobs, service <- CLI; evaluation sees structures only;
* no two modules import each other at module level (the cycles that break depending on import order).

A new package must be placed in a row of that diagram.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("unimat_dist", "data_pipeline", "deploy")


def _tiers() -> list[set[str]]:
    """The README's diagram, lowest row first: each row's package names (before the description)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- architecture:begin -->", 1)[1].split("<!-- architecture:end -->", 1)[0]
    rows = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    return [set(re.split(r"\s+·\s+", re.split(r"\s{2,}", row.strip())[0])) for row in reversed(rows)]


TIERS = _tiers()


def _modules() -> dict[str, Path]:
    mods = {}
    for top in TOP:
        for f in (ROOT / top).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported module, at module level) for every import between project modules."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = []
    for mod, f in mods.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(f.read_text(), str(f))
        top_level = {id(n) for stmt in tree.body for n in ast.walk(stmt)
                     if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                subs = [f"{base_name}.{a.name}" for a in node.names if f"{base_name}.{a.name}" in mods]
                names = subs or [base_name]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in TOP and (target := resolve(name)) and target != mod:
                    out.append((mod, target, id(node) in top_level))
    return out


def _package(mod: str) -> str:
    top, _, rest = mod.partition(".")
    if top != "unimat_dist":
        return top
    return rest.split(".")[0] if rest else "unimat_dist"


def test_packages_import_only_from_lower_tiers():
    mods = _modules()
    tier = {name: i for i, names in enumerate(TIERS) for name in names}
    packages = {_package(m) for m in mods}
    assert packages <= set(tier), f"place these packages in the README's architecture diagram: {packages - set(tier)}"
    assert set(tier) <= packages, f"the README's architecture diagram names packages that do not exist: {set(tier) - packages}"
    wrong = sorted({(a, b) for a, b, _ in _imports(mods)
                    if _package(a) != _package(b) and tier[_package(b)] >= tier[_package(a)]})
    assert not wrong, "imports against the direction (importer -> imported):\n" + "\n".join(f"  {a} -> {b}" for a, b in wrong)
    # evaluation sees structures only: no tensors, models or checkpoints
    blind = {"representation", "model", "diffusion", "inference", "shards"}
    seen = sorted({b for a, b, _ in _imports(mods) if _package(a) == "evaluation" and _package(b) in blind})
    assert not seen, f"evaluation imports {seen}"


def test_no_module_level_import_cycles():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, top in _imports(mods):
        if top and not b.startswith(a + "."):  # a package's __init__ re-exporting its own modules is no cycle
            graph[a].add(b)
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    assert not cycles, f"modules importing each other at module level: {cycles}"


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The rules are live: a model module importing training, and two modules importing each other,
    are both reported."""
    import shutil

    for top in TOP:
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__", "static", "grafana"))
    (tmp_path / "unimat_dist" / "model" / "bad.py").write_text("from unimat_dist.training import Trainer\n")
    (tmp_path / "unimat_dist" / "model" / "ping.py").write_text("from . import pong\n")
    (tmp_path / "unimat_dist" / "model" / "pong.py").write_text("from unimat_dist.model import ping\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    mods = _modules()
    tier = {name: i for i, names in enumerate(TIERS) for name in names}
    imports = _imports(mods)
    assert ("unimat_dist.model.bad", "unimat_dist.training", True) in imports
    assert any(a == "unimat_dist.model.bad" and tier[_package(b)] >= tier["model"] for a, b, _ in imports)
    try:
        test_no_module_level_import_cycles()
    except AssertionError as exc:
        assert "unimat_dist.model.ping" in str(exc) and "unimat_dist.model.pong" in str(exc)
    else:
        raise AssertionError("the cycle check did not see ping <-> pong")


def test_one_storage_module():
    """Every file system access to a URI goes through ``unimat_dist/storage.py`` (endpoints, credentials
    and emulators resolved in one place; nothing patches fsspec's process-wide defaults)."""
    users = []
    for mod, f in _modules().items():
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("fsspec", "s3fs", "gcsfs") for n in names):
                users.append(mod)
    assert sorted(set(users)) == ["unimat_dist.storage"], f"fsspec imported outside unimat_dist/storage.py: {users}"


def test_no_private_names_across_packages():
    """A leading underscore means "this package's business": other packages import public names only."""
    mods = _modules()
    found = []
    for mod, f in mods.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                parts = package.split(".")
                source = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in TOP or _package(source) == _package(mod):
                continue
            found += [f"{mod} imports {source}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across packages:\n" + "\n".join(found)
