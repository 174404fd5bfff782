"""`hllm msr <step>` (also `python -m hllm.msr <step>`): the LLM4MSR steps.

    hllm msr stats --data ../shared/data/ml-100k
    hllm msr probe --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml  # knowledge signal
    hllm msr validate --data ../shared/data/ml-100k --out runs/msr/validation
    hllm msr knowledge --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml \
        --out runs/msr/knowledge --feature-repo runs/features   # + a Feast repo serving them
    hllm msr train --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml --out runs/msr
    hllm msr train ... --backbone-only --out runs/star      # the baseline the gate compares to
    hllm msr evaluate --run runs/msr                          # score the saved run again
    hllm msr register --run runs/msr --validation runs/msr/validation
    hllm msr compare --data ../shared/data/ml-100k --backbones star,mmoe --out runs/msr.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hllm import strict_json
from hllm.cli_help import add_set_argument, attach_examples
from hllm.config import parse_set
from hllm.errors import HLLMError
from hllm.msr.config import load_msr_config

STEPS = ("stats", "validate", "knowledge", "probe", "train", "evaluate", "register", "compare",
         "explain")


def add_explain_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`hllm msr explain` and its older spelling `hllm explain` take the same arguments."""
    p.add_argument("--user", required=True, help="raw user id")
    p.add_argument("--run", required=True, help="run directory from `hllm msr train` (with LLM4MSR)")
    p.add_argument("--feature-repo", help="read the stored knowledge text from this Feast repo")
    p.add_argument("--no-generate", action="store_true",
                   help="do not run the LLM when no stored text exists")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="length of a summary generated now (default 64)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run_explain(args: argparse.Namespace) -> int:
    from hllm.msr.explain import explain

    result = explain(args.run, args.user, feature_repo=args.feature_repo,
                     generate=not args.no_generate, max_new_tokens=args.max_new_tokens)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.render())
    return 0


def run_probe(rows, cfg, args: argparse.Namespace) -> int:
    """Probe the (cached) knowledge vectors; print the table, write JSON with --out FILE."""
    from hllm.msr.data import encode
    from hllm.msr.knowledge import build_knowledge
    from hllm.msr.probes import probe_knowledge

    scen, users = build_knowledge(rows, encode(rows), cfg.knowledge, device=args.device)
    report = probe_knowledge(scen, users, rows, folds=args.folds, seed=cfg.train.seed)
    print(report.render())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(strict_json.dumps(report.to_dict()) + "\n")
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hllm msr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)

    def data_step(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", required=True, help="dataset directory (RecBole atomic, local or s3://)")
        p.add_argument("--config", default=None, help="YAML naming a `base` MSR preset")
        p.add_argument("--preset", default=None, help="an MSR preset (default cpu-default)")
        add_set_argument(p)
        p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        p.add_argument("--out", default=None, help="directory the step writes to")
        return p

    data_step("stats", "rows, users, items and positive rate per split and scenario")
    data_step("validate", "Great Expectations suites on the raw table and the CTR rows")
    p = data_step("knowledge", "scenario and user knowledge vectors from the frozen LLM (cached)")
    p.add_argument("--feature-repo", default=None,
                   help="push the vectors to this Feast repo (RUN or RUN/feature_repo); with "
                        "--out DIR a copy in DIR/feature_repo gets them instead")
    p = data_step("probe", "linear probes: what the knowledge vectors hold (vs random vectors)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over users (default 5)")
    p = data_step("train", "train one model and write a run directory")
    p.add_argument("--knowledge", default=None, help="vectors from `hllm msr knowledge --out DIR`")
    p.add_argument("--backbone", default=None,
                   help="star | mmoe | shared-bottom | ple (default: model.backbone)")
    p.add_argument("--backbone-only", action="store_true", help="no LLM4MSR meta networks")
    p = data_step("compare", "each backbone alone and with LLM4MSR on one split")
    p.add_argument("--backbones", default=None,
                   help="comma list of star, mmoe, shared-bottom, ple; e.g. star,mmoe")
    p = sub.add_parser("evaluate", help="score a saved run again; rewrites its evaluation files")
    p.add_argument("--run", required=True, help="run directory from `hllm msr train`")
    p.add_argument("--data", default=None, help="default: the dataset the run was trained on")
    p.add_argument("--out", default=None, help="default: the run directory")
    p = sub.add_parser("register", help="log a run to MLflow and register it as challenger")
    p.add_argument("--run", required=True, help="run directory from `hllm msr train`")
    p.add_argument("--name", default="llm4msr", help="registered model name")
    p.add_argument("--validation", help="validation report (directory or validation.json)")
    p.add_argument("--feature-repo", help="Feast repo whose view versions are tagged")
    p.add_argument("--pipeline-run-id", help="tagged on the version (lineage)")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    add_explain_arguments(sub.add_parser(
        "explain", help="a user's knowledge summary and which meta layer weighed most"))
    attach_examples(parser, EXAMPLES)
    return parser


# The last line of each step's --help; each runs as written from the repository root.
EXAMPLES = {
    "stats": "hllm msr stats --data ../shared/data/ml-100k",
    "validate": "hllm msr validate --data ../shared/data/ml-100k --out runs/msr/validation",
    "knowledge": "hllm msr knowledge --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml"
                 " --out runs/msr/knowledge",
    "probe": "hllm msr probe --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml",
    "train": "hllm msr train --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml"
             " --knowledge runs/msr/knowledge --out runs/msr/llm4msr",
    "compare": "hllm msr compare --data ../shared/data/ml-100k --backbones star,mmoe --out runs/msr.json",
    "evaluate": "hllm msr evaluate --run runs/msr/llm4msr",
    "register": "hllm msr register --run runs/msr/llm4msr --validation runs/msr/validation",
    "explain": "hllm msr explain --run runs/msr/llm4msr --user 1",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a bare `hllm msr` lists the steps instead of one "required" line
        build_parser().print_help(sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run_step(args)
    except HLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(result, int):
        return result
    text = strict_json.dumps(result)
    if getattr(args, "out", None) and args.step == "compare":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    for run in result.get("runs", []):
        print(_summary_line(run["model"], run["test"]))
    if args.step == "train":
        print(_summary_line(result["model"], result))
    elif not result.get("runs"):
        print(text)
    return 0


def _summary_line(model: str, t: dict) -> str:
    per = "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in t.items() if k.startswith("auc/"))
    return f"{model:<21} test AUC {t['auc']:.4f} logloss {t['logloss']:.4f} | {per}"


def run_step(args: argparse.Namespace) -> dict | int:
    if args.step == "explain":
        return run_explain(args)
    if args.step == "register":
        from hllm.msr.registry import register_msr

        reg = register_msr(args.run, args.name, validation=args.validation,
                           feature_repo=args.feature_repo, pipeline_run_id=args.pipeline_run_id,
                           tracking_uri=args.tracking_uri)
        v = reg.versions[0]
        return {"name": v.name, "version": v.version, "run_id": reg.run_id, "alias": "challenger"}
    if args.step == "evaluate":
        from hllm.msr.run import evaluate_run

        metrics = evaluate_run(args.run, args.out, args.data)
        print(_summary_line(metrics["model"], metrics))
        return 0
    cfg = load_msr_config(args.preset, args.config, parse_set(args.set))
    if args.step == "validate":
        from hllm.msr.validation import validate_msr

        report = validate_msr(args.data, args.out, cfg.data)
        print(report.summary())
        return 0 if report.success else 1
    from hllm.msr.data import encode, load_rows, scenario_stats

    rows = load_rows(args.data, cfg.data)
    if args.step == "stats":
        print(scenario_stats(rows).to_string(index=False))
        return 0
    if args.step == "knowledge" and args.out:
        from hllm.msr.features import knowledge_features

        return knowledge_features(args.data, cfg, args.out, device=args.device,
                                  feature_repo=args.feature_repo)
    if args.step == "knowledge":  # in place: push to the given repo, nothing else written
        from hllm.msr.knowledge import build_knowledge

        scen, users = build_knowledge(rows, encode(rows), cfg.knowledge, device=args.device)
        result = {"scenario": vars(scen.stats), "user": vars(users.stats)}
        if args.feature_repo:
            from hllm.features import push_knowledge

            result["feature_repo"] = push_knowledge(
                args.feature_repo, (scen.keys, scen.vectors.numpy()),
                (users.keys, users.vectors.numpy()), users.texts)
        return result
    if args.step == "probe":
        return run_probe(rows, cfg, args)
    if args.step == "train":
        import dataclasses

        from hllm.errors import ConfigError
        from hllm.msr.run import train_run

        if not args.out:
            raise ConfigError("hllm msr train: --out RUN_DIR is required")
        if args.backbone:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=args.backbone))
        return train_run(cfg, args.data, args.out, llm4msr=not args.backbone_only,
                         device=args.device, rows=rows, knowledge_dir=args.knowledge)
    from hllm.msr.train import compare

    backbones = tuple(args.backbones.split(",")) if args.backbones else None
    return compare(cfg, args.data, backbones=backbones, device=args.device, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
