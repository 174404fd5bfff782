"""Which activation on LLM4MSR's meta residual: chosen on validation, tested once.

    python bench/msr_meta_activation.py --data ../shared/data/ml-100k \
        --config configs/msr/cpu-default.yaml [--seeds 42,1,2,3] [--backbone star]

A ReLU meta layer (the paper's) can train dead: hW + b < 0 for every row, so it adds
exactly 0 and gets no gradient. For each activation (relu, tanh, identity) and seed this
trains backbone + LLM4MSR on the same split and knowledge vectors, and the backbone alone
once per seed. The activation with the best mean validation AUC is the choice; only for
it, and only then, is the test split's AUC against the backbone alone reported (paired
over seeds, with a paired t-test). Also printed per activation: how many meta layers came
out dead (mean residual norm exactly 0 on the validation rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ml1m_msr import paired  # noqa: E402

from hllm.cli_help import add_set_argument  # noqa: E402
from hllm.config import parse_set  # noqa: E402
from hllm.msr.config import load_msr_config  # noqa: E402
from hllm.msr.data import encode, load_rows, require_auc_cells  # noqa: E402
from hllm.msr.knowledge import build_knowledge  # noqa: E402
from hllm.msr.meta import ACTIVATIONS  # noqa: E402
from hllm.msr.train import build_model, train_msr  # noqa: E402
from hllm.msr.evaluate import evaluate_msr  # noqa: E402


def dead_layers(model, enc, batch_size: int = 4096) -> int:
    """Meta layers whose residual is exactly zero on every validation row."""
    rows = enc.tensors["valid"]
    norms: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = rows.batch(torch.arange(s, min(s + batch_size, len(rows))))
            trace: dict[str, torch.Tensor] = {}
            model.refine(model.backbone.representation(batch), batch, trace)
            for name, delta in trace.items():
                norms[name] = norms.get(name, 0.0) + float(delta.abs().sum())
    return sum(v == 0.0 for v in norms.values())


def fit(cfg, enc, knowledge=None) -> tuple[dict, object]:
    model = build_model(cfg, enc, *(knowledge or (None, None)))
    train_msr(model, enc, cfg.train, progress=False)
    return (evaluate_msr(model, enc.tensors["valid"], enc.scenarios, "cpu", cfg.train.eval_batch_size),
            model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    p.add_argument("--config", default=str(ROOT / "configs" / "msr" / "cpu-default.yaml"))
    p.add_argument("--preset", default=None, help="an MSR preset instead of --config (cpu-tiny: wiring)")
    p.add_argument("--seeds", default="42,1,2,3", help="comma list; each seed trains every variant")
    p.add_argument("--backbone", default=None, help="default: the config's model.backbone")
    add_set_argument(p)
    args = p.parse_args(argv)
    cfg = load_msr_config(args.preset, None if args.preset else args.config, parse_set(args.set))
    if args.backbone:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=args.backbone))
    rows = load_rows(args.data, cfg.data)
    require_auc_cells(rows)
    enc = encode(rows)
    scen, users = build_knowledge(rows, enc, cfg.knowledge)
    knowledge = (scen.vectors, users.vectors)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    valid: dict[str, list[float]] = {a: [] for a in ACTIVATIONS}
    dead: dict[str, list[int]] = {a: [] for a in ACTIVATIONS}
    models: dict[tuple[str, int], object] = {}
    for seed in seeds:
        for activation in ACTIVATIONS:
            c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                    model=dataclasses.replace(cfg.model, meta_activation=activation))
            v, model = fit(c, enc, knowledge)
            valid[activation].append(v["auc"])
            dead[activation].append(dead_layers(model, enc))
            models[(activation, seed)] = model
            print(f"seed {seed} {activation:8} valid AUC {v['auc']:.4f} dead meta layers "
                  f"{dead[activation][-1]}", flush=True)
    layers = cfg.model.meta_user_layers + cfg.model.meta_scenario_layers
    print(f"\n{cfg.model.backbone} + LLM4MSR on {args.data}, {len(seeds)} seeds, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'activation':10} {'valid AUC mean':>14} {'sd':>7} {'dead layers':>12}")
    for a in ACTIVATIONS:
        print(f"{a:10} {statistics.fmean(valid[a]):14.4f} {statistics.pstdev(valid[a]):7.4f} "
              f"{sum(dead[a]):5d} of {layers * len(seeds)}")
    chosen = max(ACTIVATIONS, key=lambda a: statistics.fmean(valid[a]))
    print(f"chosen on validation: {chosen}")
    # The test split, read once: the chosen activation against the backbone alone.
    alone, plus = [], []
    for seed in seeds:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        backbone = build_model(c, enc)
        train_msr(backbone, enc, c.train, progress=False)
        test = lambda m: evaluate_msr(m, enc.tensors["test"], enc.scenarios, "cpu",  # noqa: E731
                                      c.train.eval_batch_size)
        alone.append(test(backbone)["auc"])
        plus.append(test(models[(chosen, seed)])["auc"])
    print(f"test AUC: {cfg.model.backbone} alone {statistics.fmean(alone):.4f}, + LLM4MSR "
          f"({chosen}) {statistics.fmean(plus):.4f}, diff {paired(alone, plus)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
