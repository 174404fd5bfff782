"""The kinds of model the platform carries, and what differs between them.

A Task is everything the shared machinery needs to know about one kind of model:
which evidence of an offline evaluation the gate reads and how, the gate's rules for
it, and how a finished run becomes registered models. The gate (hllm.gate) and the
registry (hllm.registry) look a task up by name and never branch on it, so a new kind
of model is one new Task, registered here, and no edit to either.

Two tasks ship with the platform:

* ``ranking`` (hllm.ranking_task): full-ranking recommenders, HLLM and SASRec, judged
  per user (paired bootstrap over users, segments);
* ``ctr`` (hllm.msr.task): multi-scenario CTR models, a backbone alone or with LLM4MSR,
  judged per row and per scenario.

Other packages add theirs under the ``hllm.tasks`` entry-point group (the entry point
names a Task object) or, in a process, with `register_task`. Built-in tasks are
imported by name on first use, so `task_names()` costs no import and the task modules
may import the gate's and registry's public helpers without a cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from hllm.errors import ConfigError
from hllm.gate_rules import Evidence, TaskRules

ENTRY_POINT_GROUP = "hllm.tasks"
BUILTIN = {"ranking": "hllm.ranking_task:TASK", "ctr": "hllm.msr.task:TASK"}


@dataclass(frozen=True)
class ModelToRegister:
    """One registered model a registration creates a version of."""

    name: str
    info: Any  # the mlflow ModelInfo of the logged model
    description: str


@dataclass(frozen=True)
class RegistrationPlan:
    """A run that passed every check, ready to be registered; nothing written yet.

    tags: lineage tags every version gets (hllm.lineage). log(client, uri, experiment)
    is the first registry write: it logs the run and its models to MLflow and returns
    the MLflow run id and the models to version. The registry does the rest (versions,
    aliases, undo on failure) the same way for every task.
    """

    tags: dict[str, str]
    log: Callable[[Any, str, str | None], tuple[str, list[ModelToRegister]]]


@dataclass(frozen=True)
class Task:
    """What differs between kinds of model, for the gate and the registry."""

    name: str  # `gate.task` in an A/B config; the `task` of `hllm register`
    default_model: str  # registered model name when none is given
    evidence: str  # per-unit evaluation file beside metrics.json (per user, per row...)
    evidence_writer: str  # the command that writes it, named when it is missing
    # (directory holding metrics.json and the evidence files, label) -> Evidence
    read_evidence: Callable[[Path, str], Evidence]
    gate_rules: Callable[[Any], TaskRules]  # ABConfig -> the rules hllm.gate.decide applies
    # (run_dir, workdir, name=..., **options) -> RegistrationPlan; every check of the run
    # happens here, before the registry is touched
    plan_registration: Callable[..., RegistrationPlan]
    optional_evidence: tuple[str, ...] = ()  # read when the run logged them
    segments: bool = False  # per-user segments exist, so an A/B config may set gate.segments
    # "module:Class" of the hllm.online.endpoints.ArmEndpoint `hllm serve` runs for it
    # ("" = not served online); a name, so the gate and registry never import kserve.
    endpoint: str = ""

    def serving_endpoint(self) -> type:
        """The endpoint class `hllm serve` builds for this task's A/B experiments."""
        if not self.endpoint:
            raise ConfigError(f"task {self.name!r} has no serving endpoint")
        module, _, attr = self.endpoint.partition(":")
        return getattr(importlib.import_module(module), attr)


_registered: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` known under its name in this process (replacing one of that name)."""
    _registered[task.name] = task
    return task


def unregister_task(name: str) -> None:
    _registered.pop(name, None)


def _entry_points() -> dict[str, Any]:
    return {e.name: e for e in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    """Every task a config may name (the built-in ones first), importing none of them."""
    return [*BUILTIN, *sorted({*_entry_points(), *_registered} - set(BUILTIN))]


def get_task(name: str) -> Task:
    """The task called `name`; ConfigError naming the known ones otherwise."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        task = getattr(importlib.import_module(module), attr)
    elif name in (found := _entry_points()):
        task = found[name].load()
    else:
        raise ConfigError(f"unknown task {name!r}: one of {', '.join(task_names())}")
    if not isinstance(task, Task) or task.name != name:
        raise ConfigError(f"task {name!r} does not load as a hllm.tasks.Task named {name!r}")
    return register_task(task)
