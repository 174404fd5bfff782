"""Render the Kustomize tree under infra/k8s without a kustomize binary (CI and previews).

    python infra/k8s/render.py infra/k8s/overlays/prod      # the objects, as one YAML stream

It supports exactly the subset of Kustomize this tree uses and refuses anything else,
so it produces the same objects as `kubectl kustomize` for these files (kustomize may
order them differently):

* `resources:` files (one or more YAML documents) and directories holding a
  `kustomization.yaml`, in order, recursively;
* `patches:` with an inline RFC 6902 JSON patch (`op` add / replace / remove / test)
  and a `target` selecting objects by `kind` and `name` (optionally `group`,
  `version`, `namespace`); a target that matches nothing is an error, as in kustomize.

No namespace, label, image or generator transformers: every object states its own
namespace, labels and pinned image, which also keeps each file readable on its own.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches"}
PATCH_KEYS = {"target", "patch"}
TARGET_KEYS = {"group", "version", "kind", "name", "namespace"}
OPS = {"add", "replace", "remove", "test"}


class RenderError(ValueError):
    pass


def _load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    doc = yaml.safe_load(path.read_text()) or {}
    unknown = set(doc) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{path}: unsupported kustomization keys {sorted(unknown)}")
    if doc.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind must be Kustomization")
    return doc


def _key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""),
            meta.get("name", ""))


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    meta = obj.get("metadata") or {}
    wanted = {"group": group, "version": version, "kind": obj.get("kind"),
              "name": meta.get("name"), "namespace": meta.get("namespace", "")}
    return all(wanted[k] == v for k, v in target.items())


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list, token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit():
        raise RenderError(f"list index expected, got {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise RenderError(f"list index {i} out of range")
    return i


def apply_json_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 add / replace / remove / test on a copy of `doc`."""
    doc = copy.deepcopy(doc)
    for op in operations:
        kind = op.get("op")
        if kind not in OPS:
            raise RenderError(f"unsupported JSON patch op {kind!r}")
        tokens = _pointer(op["path"])
        if not tokens:
            raise RenderError("patching the whole document is not supported")
        parent = doc
        for token in tokens[:-1]:
            if isinstance(parent, list):
                parent = parent[_index(parent, token, allow_end=False)]
            elif isinstance(parent, dict) and token in parent:
                parent = parent[token]
            else:
                raise RenderError(f"path {op['path']}: {token!r} does not exist")
        last = tokens[-1]
        if isinstance(parent, list):
            i = _index(parent, last, allow_end=kind == "add")
            if kind == "add":
                parent.insert(i, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[i] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[i]
            elif parent[i] != op["value"]:
                raise RenderError(f"test failed at {op['path']}")
        elif isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise RenderError(f"path {op['path']} does not exist")
            if kind in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            elif parent[last] != op["value"]:
                raise RenderError(f"test failed at {op['path']}")
        else:
            raise RenderError(f"path {op['path']}: parent is not a list or mapping")
    return doc


def render(directory: str | Path) -> list[dict[str, Any]]:
    """Every object the kustomization at `directory` produces, in input order."""
    directory = Path(directory).resolve()
    kustomization = _load_kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
        else:
            raise RenderError(f"{directory / 'kustomization.yaml'}: resource {entry} not found")
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        if _key(obj) in seen:
            raise RenderError(f"{directory}: duplicate object {_key(obj)}")
        seen.add(_key(obj))
    for patch in kustomization.get("patches", []):
        if set(patch) - PATCH_KEYS or set(patch.get("target", {})) - TARGET_KEYS:
            raise RenderError(f"{directory}: unsupported patch fields in {patch}")
        operations = yaml.safe_load(patch["patch"])
        if not isinstance(operations, list):
            raise RenderError(f"{directory}: only inline JSON 6902 patches are supported")
        hits = [i for i, obj in enumerate(objects) if _matches(obj, patch["target"])]
        if not hits:
            raise RenderError(f"{directory}: patch target {patch['target']} matches no object")
        for i in hits:
            objects[i] = apply_json_patch(objects[i], operations)
    return objects


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python infra/k8s/render.py <kustomization directory>", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(argv[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
