"""The code's structure, checked: layers, private names and import cycles.

`hllm/` is the library (it never imports kfp or `pipelines`); no module reaches into
another's private names (a leading underscore is a promise that only its module uses it);
and no two project modules import each other, at any depth, lazily or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.fast

PACKAGES = ("hllm", "pipelines", "components")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement in the file, top-level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def project_edges() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for module, names in imports(path):
            targets = [module] + [f"{module}.{n}" for n in names]
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    scripts = {f"bench.{p.stem}": p for p in sorted((ROOT / "bench").glob("*.py"))}
    offenders = []
    for name, path in {**mods, **scripts}.items():
        for module, names in imports(path):
            if module.split(".")[0] in PACKAGES and module != name:
                offenders += [f"{path.relative_to(ROOT)}: {module}.{n}" for n in names
                              if n.startswith("_") and not n.startswith("__")]
    assert offenders == []


def test_the_library_never_imports_kfp_or_the_pipelines():
    bad = [f"{path.relative_to(ROOT)}: {module}" for name, path in modules().items()
           if name.startswith("hllm") for module, _ in imports(path)
           if module.split(".")[0] in ("kfp", "pipelines", "components")]
    assert bad == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles_between_project_modules():
    """Package __init__ files aside (a package importing its own modules is no cycle)."""
    edges = {m: {t for t in targets if not m.startswith(t + ".")}
             for m, targets in project_edges().items()}
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def declared_distributions() -> set[str]:
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_third_party_import_is_a_declared_dependency():
    """A module the code imports must not arrive only because another package needs it."""
    import sys
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    declared = declared_distributions()
    missing = set()
    for path in modules().values():
        for module, _ in imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in PACKAGES or top not in owners:
                continue
            dists = {d.lower().replace("_", "-") for d in owners[top]}
            if not dists & declared:
                missing.add(f"{top} ({', '.join(sorted(dists))}) in {path.relative_to(ROOT)}")
    assert not missing, sorted(missing)
