"""`hllm <step>`: every pipeline step runs from the shell, without Kubeflow.

    hllm train --preset cpu-default --data ../shared/data/ml-100k --out runs/hllm
    hllm train --preset cpu-default --data ../shared/data/ml-100k --out runs/sasrec --model sasrec
    hllm evaluate --run runs/hllm
    hllm compare runs/hllm runs/sasrec
    hllm validate --data ../shared/data/ml-100k --out runs/validation
    hllm msr train --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml --out runs/msr
    hllm explain --run runs/msr --user 1
    hllm pipeline run --local [--pipeline llm4msr]

`hllm --help` lists every step (features, register, export-onnx, gate, rollback, ab,
recommend, serve, msr, explain, pipeline).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from hllm.cli_help import add_set_argument, attach_examples
from hllm.errors import ConfigError, HLLMError

log = logging.getLogger("hllm")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset: cpu-tiny, cpu-default, cpu-finetune, hllm-1b, hllm-7b")
    p.add_argument("--config", help="YAML file overriding a preset (its `base:` names the preset)")
    add_set_argument(p)


def cmd_train(args: argparse.Namespace) -> int:
    from hllm.config import load_config, parse_set
    from hllm.train import train

    cfg = load_config(args.preset, args.config, parse_set(args.set))
    tracking_uri = _tracking_uri(args)
    result = train(cfg, args.model, args.data, args.out, resume=args.resume,
                   feature_repo=args.feature_repo)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {Path(args.out) / 'metrics.json'}  {_headline(result)}")
        if tracking_uri:
            from hllm.tracking import log_run

            run_id = log_run(args.out, tracking_uri, args.experiment)
            print(f"logged to MLflow {tracking_uri}: run {run_id} ({Path(args.out) / 'mlflow.json'})")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str | None:
    """The MLflow URI for this train run (checked up front, so a dead server fails fast)."""
    from hllm.tracking import check_server, resolve_uri

    uri = resolve_uri(args.tracking_uri)
    if uri and int(os.environ.get("RANK", "0")) == 0:
        check_server(uri)
    return uri


def cmd_register(args: argparse.Namespace) -> int:
    from hllm.registry import register

    result = register(args.run, name=args.name, onnx_name=args.onnx_name,
                      onnx=False if args.no_onnx else None, onnx_dir=args.onnx_dir,
                      pipeline_run_id=args.pipeline_run_id, validation=args.validation,
                      feature_repo=args.feature_repo, tracking_uri=args.tracking_uri,
                      exact_max_items=args.exact_max_items, user_tower=args.user_tower)
    for version in result.versions:
        print(f"registered {version.name} version {version.version} (alias challenger)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hllm.train import evaluate_run

    result = evaluate_run(args.run, args.data)
    print(f"wrote {Path(args.run) / 'metrics.json'}  {_headline(result)}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from hllm.onnx_export import MANIFEST, export_item_llm

    out = export_item_llm(args.run, args.out, args.precision)
    manifest = json.loads((out / MANIFEST).read_text())
    checks = ", ".join(f"{k} max|diff| {v['max_abs_diff']:.2e}" for k, v in
                       manifest["parity_vs_pytorch"].items() if "max_abs_diff" in v)
    print(f"wrote {', '.join(manifest['files'].values())} to {out}  ({checks})")
    return 0


def _share(text: str) -> float:
    """A share as 0.9 or 90%; a bare 90 is refused rather than read as 9000%."""
    percent = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%")) / (100 if percent else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a share such as 0.9 or 90%, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a share in (0, 1] such as 0.9, or a percentage such "
                                         f"as 90%, got {text!r}")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    from hllm.validation import ValidationConfig, validate_dataset

    cfg = ValidationConfig(min_user_interactions=args.min_user_interactions,
                           text_coverage=args.text_coverage,
                           scenarios=tuple(s for s in args.scenarios.split(",") if s))
    report = validate_dataset(args.data, args.out, cfg)
    print(report.summary(), file=sys.stdout if report.success else sys.stderr)
    print(f"wrote {Path(args.out) / 'validation.json'} and {Path(args.out) / 'validation.html'}")
    return 0 if report.success else 1


def cmd_features_build(args: argparse.Namespace) -> int:
    from hllm.config import load_config, parse_set
    from hllm.features import build_features, build_for_training

    cfg = (load_config(args.preset, args.config, parse_set(args.set))
           if args.preset or args.config or args.set else None)
    if cfg is not None and args.embed_preset is None:
        # The pipeline's feature step: histories cut from the run's data settings, windows
        # of data.max_history + 1 (hllm.feast_windows), item_embedding from its frozen Item LLM.
        result = build_for_training(args.data, args.run, cfg, max_history=args.max_history or 0)
    else:
        window = cfg.data.max_history + 1 if cfg is not None else 50
        result = build_features(args.data, args.run, max_history=args.max_history or window,
                                embed_preset=args.embed_preset,
                                data_config=cfg.data if cfg is not None else None)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    print(f"wrote {result.repo} (applied, materialized to SQLite) in {result.seconds:.1f} s: {counts}")
    return 0


def cmd_features_add_items(args: argparse.Namespace) -> int:
    from hllm.features import add_items

    result = add_items(args.items, args.run, embed_preset=args.embed_preset, model_run=args.model_run)
    print(f"pushed {len(result.item_ids)} item(s) ({result.embedding_dim}-d embeddings) online and "
          f"offline in {result.seconds:.1f} s: {', '.join(result.item_ids[:10])}"
          + (" ..." if len(result.item_ids) > 10 else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    rows = []
    for run in args.runs:
        path = Path(run) / "metrics.json"
        if not path.exists():
            raise HLLMError(f"{path}: no metrics.json (train or evaluate the run first)")
        rows.append((run, json.loads(path.read_text())))
    print(markdown_table(rows))
    print(bootstrap_lines(rows))
    return 0


def cmd_msr(args: argparse.Namespace) -> int:
    from hllm.msr.__main__ import main as msr_main

    if args.step is None:  # `hllm msr -h` lists the steps; a bare `hllm msr` too, on stderr
        return msr_main(["--help"] if args.help else [])
    return msr_main([args.step, *(["--help"] if args.help else []), *args.rest])


def cmd_explain(args: argparse.Namespace) -> int:
    from hllm.msr.__main__ import run_explain

    return run_explain(args)


def cmd_gate(args: argparse.Namespace) -> int:
    from hllm.gate import gate

    result = gate(args.challenger, args.ab_config, baseline=args.baseline,
                  tracking_uri=args.tracking_uri, out=args.out)
    for check in result.checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    outcome = {"promoted": f" is now champion (previous: {result.champion or 'none'})",
               "approved": f" passed; champion stays at version {result.champion}"}
    print(f"{result.decision}: {result.model} version {result.challenger}"
          + outcome.get(result.decision, " (nothing moved)"))
    print(f"next: {result.next_step}")
    return 0 if result.passed or args.refusal_ok else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from hllm.gate import rollback

    current, previous = rollback(args.ab_config, tracking_uri=args.tracking_uri)
    print(f"champion: version {current} -> version {previous}")
    return 0


def cmd_ab_validate(args: argparse.Namespace) -> int:
    from hllm.experiment import check_layer, config_warnings, load_ab_config, load_layer_peers

    cfg = load_ab_config(args.config)
    if args.others:
        check_layer(cfg, load_layer_peers(args.others, exclude=args.config))
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid ({cfg.name}: control {cfg.control}, treatment {cfg.treatment}, "
          f"layer {cfg.layer.name}, {cfg.start}..{cfg.end})")
    return 0


def cmd_ab_promote(args: argparse.Namespace) -> int:
    from hllm.promotion import promote_treatment

    done = promote_treatment(args.ab_config, tracking_uri=args.tracking_uri,
                             without_readout=args.without_readout)
    print(f"champion: {done.model} version {done.previous} -> version {done.version}, the "
          f"treatment of {done.experiment} (version {done.previous} keeps @previous-champion)")
    return 0


def cmd_ab_holdback(args: argparse.Namespace) -> int:
    from hllm.online.replay import hold_back

    counts = hold_back(args.data, args.out)
    print(f"{args.out}: history/ ({counts['history']} interactions; build the server's online "
          f"store from it) and traffic.csv ({counts['traffic']} held-back interactions, one per "
          "user)")
    return 0


def cmd_ab_replay(args: argparse.Namespace) -> int:
    from hllm.online.replay import replay

    result = replay(args.url, args.traffic, args.model, clients=args.clients, k=args.k,
                    limit=args.limit, allow_remote=args.allow_remote)
    print(json.dumps(result.summary(), indent=2))
    failed = sum(n for status, n in result.statuses.items() if status != 200)
    return 1 if failed else 0


def cmd_ab_readout(args: argparse.Namespace) -> int:
    from hllm.online.readout import render_text, run_readout

    result, run_id = run_readout(args.ab_config, args.exposure_log, html_out=args.html,
                                 tracking_uri=args.tracking_uri, ks=tuple(args.k),
                                 min_users=args.min_users)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render_text(result), end="")
    if args.html:
        print(f"page: {args.html}", file=sys.stderr)
    print(f"MLflow run: {run_id}" if run_id else
          "MLflow: not logged (no --tracking-uri or MLFLOW_TRACKING_URI)", file=sys.stderr)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from hllm.serving import recommend

    rec = recommend(args.user, args.ab_config, k=args.k, feature_repo=args.feature_repo,
                    data=args.data, ramp_percent=args.ramp_percent)
    print(json.dumps({"user": rec.user, "arm": rec.assignment.arm, "served": rec.assignment.serve,
                      "bucket": rec.assignment.bucket, "model": rec.model_uri,
                      "history_length": len(rec.history),
                      "items": [{"item_id": i, "score": round(s, 6)}
                                for i, s in zip(rec.item_ids, rec.scores)],
                      "ms": round(1000 * rec.seconds, 1)}, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hllm.online.server import ServeOptions, serve

    options = ServeOptions(host=args.host, port=args.port, poll_seconds=args.poll_seconds,
                           workers=args.workers, grace_seconds=args.grace_seconds,
                           ramp_percent=args.ramp_percent, kserve_route=args.kserve_route,
                           processes=args.processes)
    return serve(args.ab_config, args.exposure_log, feature_repo=args.feature_repo,
                 data=args.data, options=options)


def bootstrap_lines(rows: list[tuple[str, dict]], metric: str = "ndcg@10") -> str:
    """Paired bootstrap (95%) of the first run minus each other run, on the same split,
    overall and within each segment (test_segments.npz) of the first run."""
    import numpy as np

    from hllm.segments import load_masks, segment_bootstrap

    first, first_m = rows[0]
    lines = []
    for run, m in rows[1:]:
        if m.get("split_sha256") != first_m.get("split_sha256"):
            lines.append(f"{first} vs {run}: different splits, no paired comparison")
            continue
        try:
            a = np.load(Path(first) / "test_ranks.npy")
            b = np.load(Path(run) / "test_ranks.npy")
        except OSError:
            continue
        seg_file = Path(first) / "test_segments.npz"
        masks = load_masks(seg_file) if seg_file.is_file() else {}
        lines.append(f"{first} - {run}: {metric}, 95% paired bootstrap over users")
        for name, r in segment_bootstrap(a, b, masks, metric).items():
            if r is None:
                lines.append(f"  {name:<9} no users")
                continue
            users = f" ({r['users']} users)" if "users" in r else ""
            lines.append(f"  {name:<9} {r['diff']:+.4f} ({r['low']:+.4f} .. {r['high']:+.4f}){users}")
    return "\n".join(lines)


def markdown_table(rows: list[tuple[str, dict]]) -> str:
    keys = ["recall@10", "ndcg@10", "recall@50", "ndcg@50", "recall@200", "ndcg@200", "mrr"]
    lines = ["| run | model | " + " | ".join(keys) + " | run s |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for run, m in rows:
        t = m.get("timings", {})
        seconds = sum(v for k, v in t.items() if k.endswith("_s"))
        lines.append(f"| {run} | {m.get('model')} | " + " | ".join(f"{m[k]:.4f}" for k in keys)
                     + f" | {seconds:.0f} |")
    segments = [name for name in ("warm", "long_tail", "cold")
                if any(name in (m.get("segments") or {}) for _, m in rows)]
    if segments:
        lines += ["", "| run | " + " | ".join(f"{s} users | {s} R@10 | {s} N@10" for s in segments)
                  + " |", "|---|" + "---|" * (3 * len(segments))]
        for run, m in rows:
            cells = []
            for s in segments:
                seg = (m.get("segments") or {}).get(s) or {}
                cells += [str(seg.get("users", "")), *(_num(seg.get(k)) for k in ("recall@10", "ndcg@10"))]
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _headline(m: dict) -> str:
    return (f"test R@10={m['recall@10']:.4f} N@10={m['ndcg@10']:.4f} "
            f"R@200={m['recall@200']:.4f} N@200={m['ndcg@200']:.4f}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hllm-platform")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


COMMAND_GROUP = "hllm.commands"


def add_registered_commands(sub) -> None:
    """Commands that installed packages register under the `hllm.commands` entry-point group
    (the pipelines add `hllm pipeline`): the library depends on none of them, and kfp loads
    only when a pipeline command runs.

    A command whose module cannot be imported (say, an image holding the library only)
    stays listed and fails with the reason when run; every other command still works.
    """
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:
            reason = (f"`hllm {entry.name}` is unavailable here: {exc} (registered by "
                      f"{entry.value}; install the package that provides it)")
            p = sub.add_parser(entry.name, help=f"(unavailable: {exc})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_unavailable(reason))
            continue
        register(sub)


def _unavailable(reason: str):
    def run(args: argparse.Namespace) -> int:
        raise ConfigError(reason)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hllm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"hllm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_registered_commands(sub)

    p = sub.add_parser("validate", help="check the data with Great Expectations; exit 1 on failure")
    p.add_argument("--data", required=True, help="dataset directory, file, or s3:// prefix")
    p.add_argument("--out", required=True, help="directory for validation.json and validation.html")
    p.add_argument("--min-user-interactions", type=int, default=3,
                   help="fewest interactions a user may have (default 3: leave-one-out needs 3)")
    p.add_argument("--text-coverage", type=_share, default=0.9,
                   help="minimum share of items with a non-empty value in each text field: "
                        "0.9 or 90%% (default 0.9)")
    p.add_argument("--scenarios", default="", help="comma-separated declared scenario names")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("features", help="Feast feature tables (see feature_repo/)")
    fsub = p.add_subparsers(dest="features_command", required=True)
    p = fsub.add_parser("build", help="write sources, feast apply, materialize to the online store")
    p.add_argument("--data", required=True, help="dataset directory, file, or s3:// prefix")
    p.add_argument("--run", required=True, help="run directory; the repo goes to RUN/feature_repo")
    p.add_argument("--max-history", type=int, default=None,
                   help="items kept per user history row (default 50; with a run config, its "
                        "data.max_history + 1, the training window)")
    _add_config_args(p)  # a run config: histories cut from its data settings, for training
    p.add_argument("--embed-preset", help="fill item_embedding with this preset's frozen Item LLM "
                   "(e.g. cpu-default; default with a run config: the run's own Item LLM when "
                   "it is frozen); embeddings are cached, so this is fast after training")
    p.set_defaults(func=cmd_features_build)
    p = fsub.add_parser("add-items", help="embed new items and push them (servable at once)")
    p.add_argument("items", help="item table: .item (RecBole), .csv or .parquet with item_id + text")
    p.add_argument("--run", required=True, help="run directory holding feature_repo/")
    p.add_argument("--embed-preset", help="Item LLM preset (default: the one the repo was built with)")
    p.add_argument("--model-run", help="use the Item LLM of this trained HLLM run instead")
    p.set_defaults(func=cmd_features_add_items)

    p = sub.add_parser("train", help="train HLLM or SASRec and evaluate it on the test split")
    _add_config_args(p)
    p.add_argument("--data", required=True, help="dataset directory, file, or s3:// prefix")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--model", default="hllm", choices=["hllm", "sasrec"],
                   help="hllm (default) or the SASRec ID baseline")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--feature-repo", help="read the training windows from this Feast repo (RUN or "
                   "RUN/feature_repo, built by `hllm features build` with this run's config)")
    p.add_argument("--tracking-uri", help="log the finished run to this MLflow server "
                   "(default: $MLFLOW_TRACKING_URI; unset = no tracking)")
    p.add_argument("--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME or hllm)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("register", help="register a run's model in MLflow (alias challenger)")
    p.add_argument("--run", required=True, help="run directory written by `hllm train`")
    p.add_argument("--name", default="hllm", help="registered model name of the recommender")
    p.add_argument("--onnx-name", default="hllm-item-llm", help="registered name of the ONNX Item LLM")
    p.add_argument("--no-onnx", action="store_true", help="register the recommender only")
    p.add_argument("--onnx-dir", help="exported ONNX directory (default: RUN/onnx, exported if missing)")
    p.add_argument("--pipeline-run-id", help="pipeline run id for lineage (default: $KFP_RUN_ID)")
    p.add_argument("--validation", help="validation.json to record (default: RUN/validation.json)")
    p.add_argument("--feature-repo", help="Feast repo whose feature views to record")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI or RUN/mlflow.json)")
    p.add_argument("--exact-max-items", type=int, default=100_000, metavar="N",
                   help="score every item up to N items (default 100000); a larger catalog "
                        "ships an HNSW index and is served from it (0: always the index)")
    p.add_argument("--user-tower", choices=("onnx", "eager"), default="onnx",
                   help="onnx (default): ship the user tower as an ONNX graph, checked against "
                        "PyTorch, that `hllm serve` runs; eager: serve it through PyTorch")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("evaluate", help="re-score a run's best weights (full ranking)")
    p.add_argument("--run", required=True, help="run directory written by `hllm train`")
    p.add_argument("--data", help="dataset (default: the one the run was trained on)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export-onnx", help="export a run's Item LLM (text -> item vector) to ONNX")
    p.add_argument("--run", required=True, help="run directory written by `hllm train --model hllm`")
    p.add_argument("--out", help="output directory (default: RUN/onnx)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8", "int8-mlp"],
                   help="graphs to write; fp32 is always written (fp16: CUDA EP, int8: CPU)")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("compare", help="print a Markdown table of runs' test metrics")
    p.add_argument("runs", nargs="+", help="run directories; the first is compared with each other")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("gate", help="promote a challenger to champion if it beat it offline "
                                    "(approve it only, with gate.promote: after_experiment)")
    p.add_argument("--challenger", required=True, help="model version (or alias) to judge")
    p.add_argument("--ab-config", required=True, help="A/B experiment YAML (configs/ab/)")
    p.add_argument("--baseline", help="ID baseline: run directory or models:/NAME@ALIAS")
    p.add_argument("--out", help="directory for gate.json and rollout_plan.md")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--refusal-ok", action="store_true",
                   help="exit 0 when refused (the decision is still logged; for pipelines)")
    p.set_defaults(func=cmd_gate)

    from hllm.msr.__main__ import STEPS as MSR_STEPS, add_explain_arguments

    p = sub.add_parser("msr", help=f"LLM4MSR multi-scenario CTR: {' | '.join(MSR_STEPS)}",
                       add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="list the steps, or one step's options")
    p.add_argument("step", nargs="?", choices=MSR_STEPS, help="the MSR step to run")
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="--data PATH [--config YAML] [--out DIR] ... (hllm msr STEP --help)")
    p.set_defaults(func=cmd_msr)

    p = add_explain_arguments(sub.add_parser(
        "explain", help="LLM4MSR: same as `hllm msr explain` (the older spelling)"))
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("rollback", help="point champion back at the previous champion")
    p.add_argument("--ab-config", required=True, help="A/B experiment YAML naming the model")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("ab", help="A/B experiment configs")
    asub = p.add_subparsers(dest="ab_command", required=True)
    p = asub.add_parser("validate", help="check one config (and its layer against others)")
    p.add_argument("config", help="the A/B experiment YAML to check")
    p.add_argument("--others", help="directory of the other experiments' configs (layer check)")
    p.set_defaults(func=cmd_ab_validate)
    p = asub.add_parser("holdback", help="split a dataset into served history and each "
                                         "user's newest interaction (replay traffic)")
    p.add_argument("--data", required=True, help="dataset to split")
    p.add_argument("--out", required=True, help="directory for history/ and traffic.csv")
    p.set_defaults(func=cmd_ab_holdback)
    p = asub.add_parser("replay", help="send held-back interactions to a running `hllm serve` "
                                       "as requests and click feedback")
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="the server (default http://127.0.0.1:8080; only this machine unless "
                        "--allow-remote)")
    p.add_argument("--traffic", required=True, help="traffic.csv from `hllm ab holdback`")
    p.add_argument("--model", required=True, help="the A/B config's model name (the endpoint)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("-k", type=int, default=10, help="items per request (default 10)")
    p.add_argument("--limit", type=int, help="replay only the first N rows")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a server that is not on this machine")
    p.set_defaults(func=cmd_ab_replay)
    p = asub.add_parser("readout", help="per-arm outcomes, sample-ratio test, guardrails and a "
                                        "recommendation from the exposure log")
    p.add_argument("--ab-config", required=True, help="the experiment's A/B YAML")
    p.add_argument("--exposure-log", required=True, help="directory or s3:// prefix `hllm "
                                                          "serve` wrote")
    p.add_argument("--html", help="also write the readout page here")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-k", type=int, nargs="+", default=[10], help="hit@k cut-offs (default 10)")
    p.add_argument("--min-users", type=int, default=100,
                   help="hold while an arm has fewer users (default 100)")
    p.add_argument("--tracking-uri", help="log the readout as an MLflow run here (default: "
                                          "$MLFLOW_TRACKING_URI; none: not logged)")
    p.set_defaults(func=cmd_ab_readout)
    p = asub.add_parser("promote", help="after the experiment: move champion to the treatment "
                                        "the gate approved (gate.promote: after_experiment)")
    p.add_argument("--ab-config", required=True, help="the experiment's A/B YAML (its treatment "
                                                      "arm is promoted)")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--without-readout", action="store_true",
                   help="promote although no readout in MLflow says to end the experiment "
                        "(read out elsewhere); the promotion tag records it")
    p.set_defaults(func=cmd_ab_promote)

    p = sub.add_parser("recommend", help="top-k items for one user, routed by the A/B config")
    p.add_argument("--user", required=True, help="raw user id")
    p.add_argument("--ab-config", required=True, help="A/B experiment YAML (arms, split, ramp)")
    p.add_argument("--feature-repo", help="read the history from this Feast repo's online store")
    p.add_argument("--data", help="or from this dataset")
    p.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--ramp-percent", type=float, help="current ramp stage's treatment share")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("serve", help="the experiment's model server (KServe, Open Inference "
                                     "Protocol): both arms, hot swaps, an exposure log")
    p.add_argument("--ab-config", required=True, help="A/B experiment YAML (arms, split, ramp)")
    p.add_argument("--exposure-log", required=True,
                   help="directory or s3:// prefix the exposure and feedback log is appended to")
    p.add_argument("--feature-repo", help="read histories from this Feast repo's online store")
    p.add_argument("--data", help="or from this dataset (ranking only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                   "a cluster pod passes 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="re-read the arms' registry aliases this often; 0: only on "
                        "POST /v1/admin/refresh (default 30)")
    p.add_argument("--workers", type=int, default=2, help="scoring threads (default 2)")
    p.add_argument("--processes", type=int, default=1,
                   help="server processes sharing the port, each with its own models (one "
                        "per core; default 1; in a cluster, prefer replicas)")
    p.add_argument("--kserve-route", action="store_true",
                   help="answer inference through KServe's generic route (pydantic body, "
                        "jsonable_encoder; slower) instead of the model's own: to compare")
    p.add_argument("--grace-seconds", type=int, default=30,
                   help="on SIGTERM, wait this long for requests in flight (default 30)")
    p.add_argument("--ramp-percent", type=float, help="current ramp stage's treatment share")
    p.set_defaults(func=cmd_serve)
    attach_examples(parser, EXAMPLES)
    return parser


# The last line of each command's --help; every one runs as written from the repository root
# (`pipeline ...` examples sit with their parser in pipelines/cli.py, `msr ...` in hllm/msr).
EXAMPLES = {
    "validate": "hllm validate --data ../shared/data/ml-100k --out runs/validation",
    "features build": "hllm features build --data ../shared/data/ml-100k --run runs/features",
    "features add-items": "hllm features add-items new_items.csv --run runs/features",
    "train": "hllm train --preset cpu-default --data ../shared/data/ml-100k --out runs/hllm",
    "register": "hllm register --run runs/hllm --feature-repo runs/features",
    "evaluate": "hllm evaluate --run runs/hllm",
    "export-onnx": "hllm export-onnx --run runs/hllm --precision fp32 int8",
    "compare": "hllm compare runs/hllm runs/sasrec",
    "gate": "hllm gate --challenger challenger --ab-config configs/ab/hllm-rollout.yaml "
            "--baseline runs/sasrec",
    "explain": "hllm explain --run runs/msr/llm4msr --user 1",
    "rollback": "hllm rollback --ab-config configs/ab/hllm-rollout.yaml",
    "ab validate": "hllm ab validate configs/ab/hllm-rollout.yaml --others configs/ab/",
    "ab holdback": "hllm ab holdback --data ../shared/data/ml-100k --out runs/replay",
    "ab replay": "hllm ab replay --traffic runs/replay/traffic.csv --model hllm",
    "ab readout": "hllm ab readout --ab-config configs/ab/hllm-rollout.yaml "
                  "--exposure-log runs/exposures --html runs/readout.html",
    "ab promote": "hllm ab promote --ab-config configs/ab/hllm-rollout.yaml",
    "recommend": "hllm recommend --user 196 --ab-config configs/ab/hllm-rollout.yaml "
                 "--feature-repo runs/features",
    "serve": "hllm serve --ab-config configs/ab/hllm-rollout.yaml --feature-repo runs/features "
             "--exposure-log runs/exposures",
}


# No space left, over quota, or over the file-size limit.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet = ("httpx", "urllib3", "botocore", "transformers", "great_expectations", "feast")
    for handler in logging.getLogger().handlers:  # some libraries set their own levels
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(quiet))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at run time
    try:
        return args.func(args)
    except HLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        # Writes go to a staged copy swapped in whole, so what was there before stands.
        print(f"error: {exc.filename or 'a file'}: {exc.strerror or exc}; nothing was "
              "replaced (free space, or write elsewhere, then run the command again)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
