"""Every command in the README's ```bash blocks, run as written from a fresh checkout.

A command that takes under a minute runs here, in a scratch copy of the repository layout
(the repository's files linked in, `../shared` beside it, `runs/` empty), and must exit 0.
The others are skipped with the reason in the test output (`-ra`). A README command that no
rule below covers fails the test: a new command gets a rule, so it is run or its reason said.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# (pattern matched at the start of the command, reason to skip or None to run), first match wins.
RULES: list[tuple[str, str | None]] = [
    (r"make (run|test)\b", "the whole pipeline / the whole suite: what CI and make run do"),
    (r"make image\b", "builds the container image (minutes; tests/test_containers.py checks it)"),
    (r".*\.\.\.", "arguments elided in the README (`...`)"),
    (r".*s3://datasets|.*kfp\.example\.com", "needs a cluster's bucket or KFP endpoint"),
    (r"python bench/train_step_mfu\.py --derive-memory", "calibrates the memory model by "
     "running training steps (minutes)"),
    (r"torchrun|.*configs/(hllm-1b|fsdp)|python bench/(item_batches|train_step_mfu)\.py",
     "GPU-sized or multi-process training (minutes to hours)"),
    (r"hllm train|hllm pipeline run|hllm msr (train|knowledge|compare|probe)", "trains or runs an LLM (minutes)"),
    (r"hllm features build .*--embed-preset", "embeds every item with SmolLM2 (minutes, cold cache)"),
    (r"hllm (evaluate|compare|register|export-onnx|explain|msr (evaluate|register|explain))",
     "needs a trained run under runs/ (made by a skipped command)"),
    (r"hllm (gate|rollback|recommend|serve|ab promote)", "needs a registered model on an MLflow server"),
    (r"hllm features add-items|cd runs/features", "needs runs/features (made by a skipped command)"),
    (r"xdg-open", "opens a browser"),
    (r"python bench/ml1m(_msr)?\.py", "downloads MovieLens-1M and trains (minutes to hours)"),
    (r"hllm ab (replay|readout)", "needs a running hllm serve or the log it wrote"),
    (r"hllm features build --data runs/replay", "needs runs/replay (hllm ab holdback, run "
     "above) and builds the online store"),
    (r"python bench/(serve_load|ab_replay)\.py", "starts a registry and hllm serve over "
     "make run's runs (minutes)"),
    (r"hllm (validate|ab (validate|holdback)|pipeline compile|msr (stats|validate))", None),
]


def readme_commands() -> list[str]:
    """The README's bash commands: continuation lines joined, trailing comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                commands.append(" ".join(command.split()))
    return commands


def rule_for(command: str) -> tuple[str, str | None] | None:
    return next(((p, why) for p, why in RULES if re.match(p, command)), None)


COMMANDS = readme_commands()


def test_every_readme_command_has_a_rule():
    assert len(COMMANDS) > 30
    assert [c for c in COMMANDS if rule_for(c) is None] == []
    assert sum(rule_for(c)[1] is None for c in COMMANDS) >= 5


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A scratch tree shaped like a fresh clone: repository files linked, ../shared beside it."""
    top = tmp_path_factory.mktemp("clone")
    repo = top / "repo"
    repo.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git") and not entry.name.endswith(".yaml"):
            (repo / entry.name).symlink_to(entry)
    (top / "shared").symlink_to(SHARED)
    return repo


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command_runs_as_written(command, checkout):
    rule = rule_for(command)
    if rule is None or rule[1] is not None:
        pytest.skip(f"{rule[1] if rule else 'no rule'}: {command}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
