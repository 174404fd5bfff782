"""`python -m hllm.msr <stats|knowledge|compare>`: the MSR steps without touching hllm/cli.py.

    python -m hllm.msr stats --data ../shared/data/ml-100k
    python -m hllm.msr knowledge --data ../shared/data/ml-100k --config configs/msr/cpu-default.yaml \
        --feature-repo runs/features    # vectors also served from Feast
    python -m hllm.msr compare --data ../shared/data/ml-100k --backbones star,mmoe --out runs/msr.json

Also reachable as `hllm msr <step> ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hllm.config import parse_set
from hllm.errors import HLLMError
from hllm.msr.config import load_msr_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hllm.msr", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("stats", "knowledge", "compare"))
    parser.add_argument("--data", required=True, help="dataset directory (RecBole atomic, local or s3://)")
    parser.add_argument("--config", default=None, help="YAML naming a `base` MSR preset")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--backbones", default=None, help="comma list, e.g. star,mmoe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--feature-repo", default=None,
                        help="knowledge: also push the vectors to this Feast repo (RUN or RUN/feature_repo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_msr_config(args.preset, args.config, parse_set(args.set))
        from hllm.msr.data import encode, load_rows, scenario_stats

        rows = load_rows(args.data, cfg.data)
        if args.step == "stats":
            print(scenario_stats(rows).to_string(index=False))
            return 0
        if args.step == "knowledge":
            from hllm.msr.knowledge import build_knowledge

            enc = encode(rows)
            scen, users = build_knowledge(rows, enc, cfg.knowledge, device=args.device)
            result = {"scenario": vars(scen.stats), "user": vars(users.stats)}
            if args.feature_repo:
                from hllm.features import push_knowledge

                result["feature_repo"] = push_knowledge(
                    args.feature_repo, (scen.keys, scen.vectors.numpy()),
                    (users.keys, users.vectors.numpy()), users.texts)
        else:
            from hllm.msr.train import compare

            backbones = tuple(args.backbones.split(",")) if args.backbones else None
            result = compare(cfg, args.data, backbones=backbones, device=args.device, rows=rows)
    except HLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    for run in result.get("runs", []):
        t = run["test"]
        per = "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in t.items() if k.startswith("auc/"))
        print(f"{run['model']:<14} test AUC {t['auc']:.4f} logloss {t['logloss']:.4f} | {per}")
    if not args.out and not result.get("runs"):
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
