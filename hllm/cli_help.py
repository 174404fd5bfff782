"""Help text shared by `hllm` and `hllm msr`: one `--set` spelling and one example per command.

A command's `--help` is read by someone about to type it, so each one ends with a command
that works as written from the repository root (paths relative to it, data from
`../shared/data`). The examples live in tables next to the parsers and are attached here by
command path ("features build"), which fails loudly on a path that does not exist, so an
example cannot silently outlive its command.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping

SET_METAVAR = "section.key=value"


def add_set_argument(p: argparse.ArgumentParser) -> None:
    """`--set section.key=value`, spelled the same in every command that takes it."""
    p.add_argument("--set", action="append", default=[], metavar=SET_METAVAR,
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def commands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command under `parser` as ("features build", its parser)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from commands(sub, f"{path} {name}".strip())


def attach_examples(parser: argparse.ArgumentParser, examples: Mapping[str, str]) -> None:
    """End each listed command's help with its example (raises on an unknown command path)."""
    leaves = dict(commands(parser))
    unknown = sorted(set(examples) - set(leaves))
    if unknown:
        raise KeyError(f"examples for commands that do not exist: {', '.join(unknown)}")
    for path, example in examples.items():
        leaf = leaves[path]
        leaf.epilog = "example:\n  " + example.replace("\n", "\n  ")
        leaf.formatter_class = argparse.RawDescriptionHelpFormatter
