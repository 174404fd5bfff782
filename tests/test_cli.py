"""The CLI turns bad input into one readable line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_recbole

ROOT = Path(__file__).resolve().parents[1]


def hllm(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hllm.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file or directory"),
    ("no_timestamp", "interactions column 'timestamp': expect_column_to_exist (column is missing)"),
    ("header_only", "header but no rows"),
    ("one_each", "users column 'interactions': expect_column_values_to_be_between"),
])
def test_bad_data_gives_a_one_line_error(tmp_path, case, expected):
    # Training runs validation's checks first, so it answers with validation's messages.
    data = tmp_path / "data"
    if case == "no_timestamp":
        data.mkdir()
        (data / "d.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
        (data / "d.item").write_text("item_id:token\ttitle:token_seq\n1\tHeat\n")
    elif case == "header_only":
        write_recbole(data, [], [(1, "a", "g")])
    elif case == "one_each":
        write_recbole(data, [(1, 1, 5, 1), (2, 2, 5, 2)], [(1, "a", "g"), (2, "b", "g")])
    result = hllm("train", "--preset", "cpu-tiny", "--data", str(data), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert str(data.name) in result.stderr or case == "one_each"
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_bad_override_is_refused_before_any_work(tmp_path, toy_data):
    result = hllm("train", "--preset", "cpu-tiny", "--data", str(toy_data), "--out", str(tmp_path / "r"),
                  "--set", "train.lr=fast")
    assert result.returncode == 2 and "'train.lr'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_train_then_evaluate_and_compare(tmp_path, toy_data):
    out = tmp_path / "run"
    trained = hllm("train", "--preset", "cpu-tiny", "--data", str(toy_data), "--out", str(out),
                   "--model", "sasrec", "--set", "train.epochs=1")
    assert trained.returncode == 0, trained.stderr
    assert "wrote" in trained.stdout and "test R@10=" in trained.stdout
    evaluated = hllm("evaluate", "--run", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    # Same weights, same split: evaluate prints the numbers train printed.
    assert trained.stdout.split("  ", 1)[1] == evaluated.stdout.split("  ", 1)[1]
    table = hllm("compare", str(out))
    assert table.returncode == 0 and "| sasrec |" in table.stdout
    assert "| warm users | warm R@10 | warm N@10 |" in table.stdout  # the segment table
    paired = hllm("compare", str(out), str(out)).stdout  # a run against itself: zero everywhere
    lines = paired.split("95% paired bootstrap over users", 1)[1].splitlines()
    assert [ln.split()[0] for ln in lines if ln.strip()] == ["overall", "warm", "long_tail", "cold"]
    assert "+0.0000 (+0.0000 .. +0.0000)" in lines[1]
    # Another dataset's split never overwrites the run's own metrics.json.
    from helpers import synthetic_rows

    inter, items = synthetic_rows(seed=1)
    other = write_recbole(tmp_path / "other", inter, items)
    before = (out / "metrics.json").read_bytes()
    refused = hllm("evaluate", "--run", str(out), "--data", str(other))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-1500:]
    recorded = __import__("json").loads(before)["split_sha256"][:12]
    assert "split_sha256" in refused.stderr and recorded in refused.stderr
    assert (out / "metrics.json").read_bytes() == before


def test_features_commands_report_bad_input_in_one_line(tmp_path, toy_data):
    bad = write_recbole(tmp_path / "bad", [(1, 1, 5, 1_000_000_000), (1, 99, 5, 1_000_000_100),
                                           (1, 1, 5, 1_000_000_200)], [(1, "a", "g")])
    built = hllm("features", "build", "--data", str(bad), "--run", str(tmp_path / "run"))
    assert built.returncode == 2 and "Traceback" not in built.stderr
    assert "features not built" in built.stderr and "'99'" in built.stderr
    assert not (tmp_path / "run" / "feature_repo").exists()
    new = tmp_path / "new.csv"
    new.write_text("item_id,title\nn1,Fresh\n")
    added = hllm("features", "add-items", str(new), "--run", str(tmp_path / "run"))
    assert added.returncode == 2 and "no feature repo built by `hllm features build`" in added.stderr


def test_features_build_takes_a_relative_run_directory(tmp_path, toy_data):
    # The README's own spelling: `--run runs/features`, relative to where the command runs.
    built = hllm("features", "build", "--data", str(toy_data), "--run", "runs/features",
                 cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    repo = tmp_path / "runs" / "features" / "feature_repo"
    assert (repo / "feature_store.yaml").is_file() and (repo / "data" / "online_store.db").is_file()


def test_msr_stats_through_the_cli(tmp_path):
    from helpers import ML100K

    result = hllm("msr", "stats", "--data", str(ML100K))
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    totals = {row[0]: int(row[2]) for row in lines if len(row) == 6 and row[1] == "all"}
    assert totals == {"train": 80_000, "valid": 10_000, "test": 10_000}
    missing = hllm("msr", "stats", "--data", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_msr_knowledge_is_pushed_to_the_feature_repo(tmp_path, ml100k_300):
    from feast import FeatureStore

    from hllm.features import build_features

    repo = build_features(str(ml100k_300), tmp_path / "run").repo
    result = hllm("msr", "knowledge", "--data", str(ml100k_300), "--preset", "cpu-tiny",
                  "--feature-repo", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert '"user_knowledge": 300' in result.stdout
    got = FeatureStore(repo_path=str(repo)).get_online_features(
        features=["user_knowledge:vector", "scenario_knowledge:vector"],
        entity_rows=[{"user_id": "196", "scenario": "family"}], full_feature_names=True).to_dict()
    for view in ("user_knowledge", "scenario_knowledge"):
        vector = got[f"{view}__vector"][0]
        assert len(vector) == 32 and all(v == v for v in vector)  # cpu-tiny LLM width, no NaN


def test_msr_probe_prints_each_target_beside_its_random_control(tmp_path, ml100k_300):
    out = tmp_path / "probes.json"
    result = hllm("msr", "probe", "--data", str(ml100k_300), "--preset", "cpu-tiny",
                  "--folds", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["target", "metric", "users", "knowledge",
                                                     "random", "chance"]
    saved = json.loads(out.read_text())
    targets = {p["target"] for p in saved["probes"]}
    assert targets == {"positive rate: family", "positive rate: action", "positive rate: thriller",
                       "positive rate: drama_comedy", "gender (F)", "age"}
    assert all(p["users"] >= 12 and p["random"] == p["random"] for p in saved["probes"])
    assert -1 <= saved["scenario_cosine"] <= 1 and "scenario vectors" in result.stdout


def test_msr_train_then_evaluate_from_the_shell(tmp_path, ml100k_300):
    import json

    run = tmp_path / "star"
    result = hllm("msr", "train", "--data", str(ml100k_300), "--preset", "cpu-tiny", "--set",
                  "train.epochs=1", "--backbone-only", "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("star ") and "test AUC" in result.stdout
    trained = json.loads((run / "metrics.json").read_text())
    result = hllm("msr", "evaluate", "--run", str(run), "--out", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["auc"] == pytest.approx(trained["auc"], abs=1e-6)
    # A bad backbone, and a run directory that is not one, are one-line errors.
    bad = hllm("msr", "train", "--data", str(ml100k_300), "--preset", "cpu-tiny", "--backbone", "xgb",
               "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "xgb" in bad.stderr and "Traceback" not in bad.stderr
    missing = hllm("msr", "evaluate", "--run", str(tmp_path))
    assert missing.returncode == 2 and "hllm msr train" in missing.stderr


def test_msr_help_lists_the_steps_and_hllm_has_a_version(capsys):
    from hllm.cli import main
    from hllm.msr.__main__ import STEPS

    assert main(["msr"]) == 2  # bare: the listing, on stderr, as a usage error
    bare = capsys.readouterr().err
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as done:
            main(["msr", flag])
        assert done.value.code == 0
        listing = capsys.readouterr().out
        assert all(step in listing for step in STEPS) and listing == bare
    with pytest.raises(SystemExit):
        main(["msr", "explain", "-h"])
    assert "--user USER --run RUN" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("hllm 0.")


def test_every_option_and_argument_has_a_help_line():
    import argparse

    from hllm.cli import build_parser
    from hllm.msr.__main__ import build_parser as msr_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, prog: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prog} {name}")
            elif not action.help:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "hllm")
    walk(msr_parser(), "hllm msr")
    assert missing == []


def test_every_command_help_ends_with_an_example_that_parses():
    """Each command's --help ends with one example, and that example is a valid command
    line for the parser it documents (so renaming an option breaks this test, not a user)."""
    import shlex

    from hllm.cli import build_parser
    from hllm.cli_help import commands
    from hllm.msr.__main__ import build_parser as msr_parser

    checked, problems = 0, []
    for prog, parser, skip in (("hllm", build_parser(), 1), ("hllm msr", msr_parser(), 2)):
        for path, leaf in commands(parser):
            if prog == "hllm" and path == "msr":
                continue  # its help is `hllm msr`'s own, checked in the second round
            tail = leaf.format_help().rstrip().splitlines()
            example = tail[-1].strip()
            if tail[-2:-1] != ["example:"] or not example.startswith(f"{prog} {path} "):
                problems.append(f"{prog} {path}: help ends with {tail[-1]!r}")
                continue
            try:
                parser.parse_args(shlex.split(example)[skip:])
            except SystemExit:
                problems.append(f"{prog} {path}: its example does not parse: {example}")
            checked += 1
    assert problems == []
    assert checked >= 24  # 16 `hllm` commands besides msr, 8 msr steps


def test_one_spelling_of_set_everywhere():
    from hllm.cli import build_parser
    from hllm.cli_help import SET_METAVAR, commands
    from hllm.msr.__main__ import build_parser as msr_parser

    spellings = {action.metavar
                 for parser in (build_parser(), msr_parser())
                 for _, leaf in commands(parser)
                 for action in leaf._actions if "--set" in action.option_strings}
    assert spellings == {SET_METAVAR}


def test_a_registered_command_that_cannot_load_breaks_only_itself(tmp_path):
    """An image or venv without a registering package: `hllm` still runs, that command says why."""
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hllm.commands]\nbroken = no_such_module.cli:add\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "hllm.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, env=env)
    listed = run("--help")
    assert listed.returncode == 0 and "unavailable: No module named 'no_such_module'" in listed.stdout
    assert run("validate", "--help").returncode == 0
    refused = run("broken", "anything", "--at-all")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "`hllm broken` is unavailable here" in lines[0], refused.stderr
    assert "no_such_module.cli:add" in lines[0]
