"""Reading a YAML file an operator wrote: one line naming the file and the place when it
is not YAML, never a parser traceback.

A tab in the indentation is the commonest slip (YAML allows only spaces there, and
PyYAML's message, "found character '\\t' that cannot start any token", does not say
so): it gets its own message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hllm.errors import ConfigError


def load_yaml(path: str | Path, loader: type = yaml.SafeLoader) -> Any:
    """The document in `path` (read with a SafeLoader subclass); ConfigError when not YAML."""
    path = Path(path)
    text = path.read_text()
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        line = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        if mark and "\t" in line[: len(line) - len(line.lstrip())] or "'\\t'" in str(exc):
            raise ConfigError(f"{path}: {where}a tab indents this line; YAML indents with "
                              "spaces only") from None
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML: {where}{problem}") from None
