"""`hllm pipeline compile | run --local | submit`: the Kubeflow pipeline from the shell.

    hllm pipeline compile --out hllm-training.yaml
    hllm pipeline compile --pipeline llm4msr            # llm4msr-training.yaml
    hllm pipeline run --local --data ../shared/data/ml-100k --preset cpu-default
    hllm pipeline submit --host https://kfp.example.com --data s3://bucket/ml-100k

`add_pipeline_parser` is registered as the `pipeline` entry point of the `hllm.commands`
group (pyproject.toml), which hllm/cli.py loads: the library never imports kfp or this.
"""

from __future__ import annotations

import argparse
import json

from pipelines.catalog import DEFAULT, PIPELINES, choices_help, get_pipeline


def cmd_compile(args: argparse.Namespace) -> int:
    spec = get_pipeline(args.pipeline)
    print(f"wrote {spec.compile(args.out or spec.package)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.local_run import run_from_args

    if not args.local:
        raise SystemExit("hllm pipeline run: only --local is supported here; "
                         "use `hllm pipeline submit` for a cluster")
    return run_from_args(args)


def cmd_submit(args: argparse.Namespace) -> int:
    """Compile (unless --package is given) and create a run on a KFP API server."""
    import kfp

    spec = get_pipeline(args.pipeline)
    package = args.package or spec.compile(spec.package)
    params = {"data": args.data, "preset": args.preset or spec.cluster_preset,
              "ab_config": args.ab_config or f"configs/ab/{spec.ab_config.name}",
              "registered_name": args.registered_name or spec.registered_name,
              "tracking_uri": args.tracking_uri, **json.loads(args.params or "{}")}
    client = kfp.Client(host=args.host, namespace=args.namespace)
    run = client.create_run_from_pipeline_package(
        package, arguments=params, experiment_name=args.experiment, run_name=args.run_name,
        enable_caching=not args.no_cache)
    print(f"submitted run {run.run_id} to {args.host}")
    return 0


def add_pipeline_parser(subparsers) -> argparse.ArgumentParser:
    """Add `pipeline {compile,run,submit}` to an argparse subparsers object."""
    from hllm.cli_help import attach_examples
    from pipelines.local_run import add_run_args

    parser = subparsers.add_parser("pipeline", help="compile, run locally or submit the pipeline")
    sub = parser.add_subparsers(dest="pipeline_command", required=True)

    p = sub.add_parser("compile", help="write the pipeline's IR YAML")
    p.add_argument("--pipeline", default=DEFAULT, choices=tuple(PIPELINES), help=choices_help())
    p.add_argument("--out", default=None, help="default: <pipeline>-training.yaml")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run the whole pipeline on this machine (kfp.local)")
    p.add_argument("--local", action="store_true", required=True,
                   help="run with kfp.local on this machine (required: `submit` targets a cluster)")
    add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="create a run on a Kubeflow Pipelines server")
    p.add_argument("--host", required=True, help="KFP API endpoint")
    p.add_argument("--namespace", default=None, help="Kubeflow namespace (default: the client's)")
    p.add_argument("--package", help="a compiled IR YAML (default: compile now)")
    p.add_argument("--data", required=True, help="dataset URI as the pods see it (s3://...)")
    p.add_argument("--pipeline", default=DEFAULT, choices=tuple(PIPELINES), help=choices_help())
    p.add_argument("--preset", default=None, help="default: " + ", ".join(
        f"{spec.cluster_preset} ({spec.name})" for spec in PIPELINES.values()))
    p.add_argument("--ab-config", default=None,
                   help="path inside the image (default: configs/ab/<pipeline>-rollout.yaml)")
    p.add_argument("--registered-name", default=None, help="default: " + " / ".join(
        spec.registered_name for spec in PIPELINES.values()))
    p.add_argument("--tracking-uri", required=True, help="MLflow as the pods reach it")
    p.add_argument("--params", help='more pipeline parameters as JSON, e.g. \'{"max_history": 50}\'')
    p.add_argument("--experiment", default="hllm", help="KFP experiment the run is filed under")
    p.add_argument("--run-name", default=None, help="default: KFP names the run")
    p.add_argument("--no-cache", action="store_true", help="run every step again on the cluster")
    p.set_defaults(func=cmd_submit)
    attach_examples(parser, {
        "compile": "hllm pipeline compile --out hllm-training.yaml",
        "run": "hllm pipeline run --local --data ../shared/data/ml-100k --preset cpu-default",
        "submit": "hllm pipeline submit --host https://kfp.example.com --data s3://datasets/ml-100k"
                  " --preset hllm-1b --tracking-uri http://mlflow.mlflow:5000",
    })
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (python -m pipelines.cli ...), same commands as `hllm pipeline`."""
    parser = argparse.ArgumentParser(prog="hllm")
    add_pipeline_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
