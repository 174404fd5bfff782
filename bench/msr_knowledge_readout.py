"""Which knowledge for LLM4MSR: readout and LLM, chosen on validation, tested once.

    python bench/msr_knowledge_readout.py --data ../shared/data/ml-100k \
        --config configs/msr/cpu-default.yaml [--variants smollm2-last,smollm2-answer,gemma-last]

The knowledge vectors are all the meta networks get. This tries what the paper does and
the preset does not: the vector taken after the LLM writes its answer (pooling=answer,
the paper's ChatGLM2 route) and a larger LLM (Gemma 3 270M, `make gemma`), beside the
preset (SmolLM2-135M, the prompt's last token). Per variant it prints the knowledge cost
(prompt and answer tokens, seconds, tokens/s; a cached variant costs nothing and says
so), the linear probes of `hllm msr probe` with their random control, and the validation
AUC of backbone + LLM4MSR over the seeds. The variant with the best mean validation AUC
is the choice; only for it, and only then, is the test split read: its test AUC against
the backbone alone, paired over seeds with a t-test.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ml1m_msr import paired  # noqa: E402
from msr_meta_activation import fit  # noqa: E402

from hllm import strict_json  # noqa: E402
from hllm.atomic import write_text  # noqa: E402
from hllm.cli_help import add_set_argument  # noqa: E402
from hllm.config import parse_set  # noqa: E402
from hllm.msr.config import load_msr_config  # noqa: E402
from hllm.msr.data import encode, load_rows, require_auc_cells  # noqa: E402
from hllm.msr.evaluate import evaluate_msr  # noqa: E402
from hllm.msr.knowledge import build_knowledge  # noqa: E402
from hllm.msr.probes import probe_knowledge  # noqa: E402

# name -> knowledge.* overrides on top of the config
VARIANTS = {
    "smollm2-last": {},
    "smollm2-answer": {"pooling": "answer"},
    "gemma-last": {"path": "gemma3-270m"},
    "gemma-answer": {"path": "gemma3-270m", "pooling": "answer"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--config", default=str(ROOT / "configs" / "msr" / "cpu-default.yaml"))
    p.add_argument("--preset", default=None, help="an MSR preset instead of --config (cpu-tiny: wiring)")
    p.add_argument("--variants", default="smollm2-last,smollm2-answer,gemma-last",
                   help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="42,1,2,3", help="comma list; each seed trains every variant")
    p.add_argument("--out", default=None, help="write every figure to this JSON file")
    add_set_argument(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    cfg = load_msr_config(args.preset, None if args.preset else args.config, parse_set(args.set))
    rows = load_rows(args.data, cfg.data)
    require_auc_cells(rows)
    enc = encode(rows)
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {"data": args.data, "backbone": cfg.model.backbone, "seeds": seeds, "variants": {}}
    models: dict[tuple[str, int], object] = {}
    for name in args.variants.split(","):
        kcfg = dataclasses.replace(cfg.knowledge, **VARIANTS[name])
        t0 = time.perf_counter()
        scen, users = build_knowledge(rows, enc, kcfg)
        s = users.stats
        cost = {"seconds": round(time.perf_counter() - t0, 1), "cache_hit": s.cache_hit,
                "prompts": s.prompts + scen.stats.prompts,
                "prompt_tokens": s.prompt_tokens + scen.stats.prompt_tokens,
                "answer_tokens": s.answer_tokens + scen.stats.answer_tokens}
        cost["tokens_per_s"] = (round((cost["prompt_tokens"] + cost["answer_tokens"]) / cost["seconds"])
                                if not s.cache_hit else None)
        probes = probe_knowledge(scen, users, rows, seed=cfg.train.seed)
        print(f"\n== {name}: knowledge {cost}\n{probes.render()}", flush=True)
        valid = []
        for seed in seeds:
            c = dataclasses.replace(cfg, knowledge=kcfg, train=dataclasses.replace(cfg.train, seed=seed))
            v, models[(name, seed)] = fit(c, enc, (scen.vectors, users.vectors))
            valid.append(v["auc"])
            print(f"{name} seed {seed} valid AUC {v['auc']:.4f}", flush=True)
        report["variants"][name] = {
            **probes.to_dict(), "knowledge": cost,
            "valid_auc": valid, "texts_sample": dict(list((users.texts or {}).items())[:3])}
    valid_alone = []
    alone_models = []
    for seed in seeds:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        v, model = fit(c, enc)
        valid_alone.append(v["auc"])
        alone_models.append(model)
    report["valid_auc_alone"] = valid_alone
    print(f"\n{cfg.model.backbone} on {args.data}, validation AUC over seeds {seeds}:")
    print(f"{'variant':16} {'mean':>7} {'sd':>7}  (backbone alone {statistics.fmean(valid_alone):.4f})")
    for name, got in report["variants"].items():
        sd = statistics.stdev(got["valid_auc"]) if len(seeds) > 1 else 0.0
        print(f"{name:16} {statistics.fmean(got['valid_auc']):7.4f} {sd:7.4f}")
    chosen = max(report["variants"], key=lambda n: statistics.fmean(report["variants"][n]["valid_auc"]))
    # The test split, read once: the chosen variant against the backbone alone.
    test = lambda m: evaluate_msr(m, enc.tensors["test"], enc.scenarios, "cpu",  # noqa: E731
                                  cfg.train.eval_batch_size)["auc"]
    alone = [test(m) for m in alone_models]
    plus = [test(models[(chosen, seed)]) for seed in seeds]
    report.update(chosen=chosen, test_auc_alone=alone, test_auc_chosen=plus)
    print(f"chosen on validation: {chosen}\ntest AUC: {cfg.model.backbone} alone "
          f"{statistics.fmean(alone):.4f}, + LLM4MSR ({chosen}) {statistics.fmean(plus):.4f}, "
          f"diff {paired(alone, plus)}")
    if args.out:
        write_text(Path(args.out), strict_json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
