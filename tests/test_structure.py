"""The code's structure, checked: layers, private names and import cycles.

`hllm/` is the library (it never imports kfp or `pipelines`); no module reaches into
another's private names (a leading underscore is a promise that only its module uses it);
and no two project modules import each other, at any depth, lazily or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
