"""Item-embedding throughput: onnxruntime vs PyTorch eager on CPU, same model, same batches.

    python bench/onnx_item_llm.py --data ../shared/data/ml-100k              # SmolLM2, ~4 min
    python bench/onnx_item_llm.py --data ../shared/data/ml-100k --run runs/latest/hllm

The Item LLM (cpu-default: pretrained SmolLM2-135M, mean pooling; or --preset, or the
run's own) is exported to ONNX (fp32 and weight-only int8). Items are sorted by token
length and cut into batches of --batch-size, right-padded per batch; PyTorch eager
(ItemLLM.forward on the padded layout, inference mode) and each ONNX session run the
same batches, interleaved batch by batch so warm-up and machine noise hit all alike,
with the same thread count. Reported: items/s per engine (total time over all rounds)
and the ONNX / eager ratio, also per round.

With --run RUN_DIR: fp16 and int8 max abs diff vs the fp32 graph over every item, and
test-split recall@10 / ndcg@10 when the HLLM's item table is replaced by ONNX embeddings
(standardisation and item projection applied on top, as HLLM.set_item_cache does).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hllm.cli_help import add_set_argument
from hllm.config import load_config, parse_set
from hllm.evaluate import metrics_from_ranks, user_ranks
from hllm.models.item_llm import ItemLLM
from hllm.onnx_export import (FILES, export_item_llm_model, length_batches, load_run_item_llm,
                              onnx_embed, session)
from hllm.train import build_model, load_split, load_weights


def throughput(model: ItemLLM, sessions: dict[str, object], tokens: list[list[int]],
               batch_size: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round for eager and each session, interleaved batch by batch."""
    batches = [[tokens[i] for i in b] for b in length_batches([len(t) for t in tokens], batch_size)]
    pad = model.tokenizer.pad_id
    seconds: dict[str, list[float]] = {"eager": [], **{k: [] for k in sessions}}
    for r in range(rounds + 1):  # round 0 warms every engine up and is not counted
        spent = dict.fromkeys(seconds, 0.0)
        for chunk in batches:
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(model.make_batch(chunk, packed=False))
            spent["eager"] += time.perf_counter() - t0
            for name, sess in sessions.items():
                t0 = time.perf_counter()
                onnx_embed(sess, chunk, batch_size=len(chunk), pad_id=pad)
                spent[name] += time.perf_counter() - t0
        if r:
            for k, v in spent.items():
                seconds[k].append(v)
        print(f"  round {r}{' (warm-up)' if not r else ''}: " + ", ".join(
            f"{k} {len(tokens) / v:.1f} items/s" for k, v in spent.items()), flush=True)
    return seconds


def recall_with_tables(run_dir: Path, data: str | None, tables: dict[str, np.ndarray | None],
                       device: torch.device) -> dict[str, dict[str, float]]:
    """Test metrics of the run's HLLM with each raw item table (None: PyTorch's own)."""
    import yaml

    from hllm.config import config_from_dict

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    run = saved.pop("run")
    cfg = config_from_dict(saved)
    split = load_split(data or run["dataset"], cfg)
    model = build_model(cfg, "hllm", split)
    load_weights(model, run_dir / "best" / "model.safetensors")
    model.eval()
    out = {}
    for name, raw in tables.items():
        table = (model.embed_all_items(device, progress=False) if raw is None
                 else torch.from_numpy(raw))
        if model.item_llm.frozen:
            model.set_item_cache(table)  # standardisation as at training time
        else:
            model.item_cache = table  # a trained Item LLM's vectors are used as they are
        ranks = user_ranks(model, split, "test", max_len=cfg.data.max_history, device=device,
                           batch_size=cfg.train.eval_batch_size, progress=False)
        out[name] = metrics_from_ranks(ranks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--preset", default="cpu-default")
    add_set_argument(parser)
    parser.add_argument("--run", help="HLLM run dir: export its Item LLM, report fp16/int8 "
                        "diffs and the test recall change with ONNX item tables")
    parser.add_argument("--items", type=int, default=512,
                        help="items timed (a seeded sample; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="0: every core (os.cpu_count)")
    parser.add_argument("--out", help="export directory (default: a temporary one)")
    args = parser.parse_args()

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    run_dir = Path(args.run) if args.run else None
    if run_dir is not None:
        cfg, model = load_run_item_llm(run_dir)
    else:
        cfg = load_config(args.preset, None, parse_set(args.set))
        model = ItemLLM(cfg.item_llm).eval()
    split = load_split(args.data, cfg)
    all_tokens = model.tokenize(split.item_text)  # index-aligned with item ids (0: padding)
    items = all_tokens[1:]
    if args.items and args.items < len(items):
        items = random.Random(0).sample(items, args.items)

    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="onnx-bench-")
    out = Path(args.out) if args.out else Path(tmp.name)  # type: ignore[union-attr]
    precisions = ["fp32", "fp16", "int8", "int8-mlp"] if run_dir else ["fp32", "int8", "int8-mlp"]
    t0 = time.perf_counter()
    manifest = export_item_llm_model(model, out, precisions)
    print(f"exported {cfg.item_llm.path or 'random'} ({manifest['model_type']}, pooling "
          f"{manifest['pooling']}, hidden {manifest['hidden_size']}) in "
          f"{time.perf_counter() - t0:.0f} s; export-time parity vs PyTorch: "
          + ", ".join(f"{k} {v.get('max_abs_diff', float('nan')):.2e}"
                      for k, v in manifest["parity_vs_pytorch"].items()))

    sessions = {p: session(out / FILES[p], device="cpu", threads=threads)
                for p in ("fp32", "int8", "int8-mlp")}
    lengths = [len(t) for t in items]
    print(f"timing {len(items)} items (mean {np.mean(lengths):.1f} tokens, max {max(lengths)}), "
          f"batch {args.batch_size}, {threads} threads, {args.rounds} rounds "
          f"(torch {torch.__version__}, onnxruntime {manifest['versions']['onnxruntime']})")
    seconds = throughput(model, {f"ort-{k}": v for k, v in sessions.items()}, items,
                         args.batch_size, args.rounds)
    total = {k: sum(v) for k, v in seconds.items()}
    n = len(items) * args.rounds
    print("| engine | items/s | vs eager | per-round ratios |\n|---|---|---|---|")
    for k, v in total.items():
        per_round = ", ".join(f"{e / s:.2f}" for e, s in zip(seconds["eager"], seconds[k]))
        print(f"| {k} | {n / v:.1f} | {total['eager'] / v:.2f}x | {per_round} |")

    if run_dir is None:
        return
    print(f"embedding all {len(all_tokens)} items with {', '.join(precisions)} graphs ...", flush=True)
    pad = model.tokenizer.pad_id
    tables = {}
    for p in precisions:
        sess = sessions.get(p) or session(out / FILES[p], device="auto", threads=threads)
        t0 = time.perf_counter()
        tables[p] = onnx_embed(sess, all_tokens, batch_size=args.batch_size, pad_id=pad)
        print(f"  {p} on {sess.get_providers()[0]}: {time.perf_counter() - t0:.0f} s", flush=True)
    for p in ("fp16", "int8", "int8-mlp"):
        print(f"{p} vs fp32 ONNX: max abs diff {np.abs(tables[p] - tables['fp32']).max():.4g} "
              f"(fp32 |x| max {np.abs(tables['fp32']).max():.4g})")
    metrics = recall_with_tables(run_dir, args.data, {"pytorch": None, **tables},
                                 torch.device("cpu"))
    base = metrics["pytorch"]
    print("| item table | recall@10 | change | ndcg@10 | change |\n|---|---|---|---|---|")
    for name, m in metrics.items():
        print(f"| {name} | {m['recall@10']:.4f} | {m['recall@10'] - base['recall@10']:+.4f} "
              f"| {m['ndcg@10']:.4f} | {m['ndcg@10'] - base['ndcg@10']:+.4f} |")


if __name__ == "__main__":
    main()
