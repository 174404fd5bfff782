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


# Third-party packages whose import costs enough (or pulls in enough) that a function may
# import them when it runs; a project module that imports one at its top is heavy too.
HEAVY = {"torch", "transformers", "mlflow", "feast", "onnx", "onnxruntime", "onnxscript",
         "great_expectations", "kubernetes", "faiss", "matplotlib", "kserve", "fastapi",
         "uvicorn", "boto3", "botocore", "scipy", "dask", "safetensors", "gguf", "moto",
         "pandas", "pyarrow"}
# Command dispatchers: each command imports its own code when it runs, so `hllm --help` and
# the light commands start in ~20 ms instead of loading every step's modules (hllm.config,
# tracking, gate, registry, experiment and msr's entry each cost 50-200 ms to import).
LAZY_BY_DESIGN = {"hllm/cli.py", "hllm/msr/__main__.py"}


def top_level_imports(path: Path) -> list[str]:
    """Modules (and module.name pairs) a file imports when it is imported itself."""
    found: list[str] = []

    def scan(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.extend([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
            elif isinstance(node, (ast.If, ast.Try)):
                scan(node.body)
                scan(node.orelse)
                for handler in getattr(node, "handlers", []):
                    scan(handler.body)

    scan(ast.parse(path.read_text()).body)
    return found


def heavy_modules() -> set[str]:
    """Project modules that load a HEAVY package when imported, directly or through others."""
    tops = {name: top_level_imports(path) for name, path in modules().items()}
    heavy = {m for m, found in tops.items() if any(t.split(".")[0] in HEAVY for t in found)}
    grew = True
    while grew:
        grew = False
        for m, found in tops.items():
            if m not in heavy and any(t in heavy for t in found):
                heavy.add(m)
                grew = True
    return heavy


def light_function_imports() -> list[str]:
    """Imports inside functions of a light module, without a comment saying why."""
    heavy = heavy_modules()
    found = []
    for name, path in modules().items():
        relative = path.relative_to(ROOT).as_posix()
        if not name.startswith("hllm") or relative in LAZY_BY_DESIGN:
            continue
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                else:
                    continue
                if any(t.split(".")[0] in HEAVY or t in heavy for t in targets):
                    continue
                here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                if "#" not in here and not above.startswith("#"):
                    found.append(f"{relative}:{node.lineno}: {here.strip()}")
    return sorted(set(found))


def test_imports_sit_at_the_top_unless_a_heavy_dependency_or_a_comment_says_why():
    """A function-level import is for a heavy package (or a module that loads one), or it
    carries a comment with its reason; everything else is imported at the module's top."""
    assert light_function_imports() == []


def test_heavy_modules_follow_their_imports():
    heavy = heavy_modules()
    assert {"hllm.train", "hllm.features", "hllm.pyfunc_model"} <= heavy  # torch, pandas, mlflow
    assert not {"hllm.errors", "hllm.atomic", "hllm.progress"} & heavy
