"""Item LLM training throughput, packed vs padded batches, and full-ranking eval time.

    make bench                      # SmolLM2-135M on ml-100k item texts (CPU: ~3 min)
    python bench/item_batches.py --data ../shared/data/ml-100k --preset cpu-tiny

Both layouts run the same model on the same items in the same order, forward and
backward, alternating so that warm-up and machine noise hit both alike; the ratio
is measured in this one run. Evaluation: every user's test target ranked against all
items, for HLLM (cached item embeddings) and SASRec.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from hllm.cli_help import add_set_argument
from hllm.config import load_config, parse_set
from hllm.evaluate import user_ranks
from hllm.item_cache import load_or_compute_item_cache
from hllm.distributed import Dist
from hllm.models.hllm import HLLM
from hllm.models.item_llm import ItemLLM
from hllm.train import build_model, load_split


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(model: ItemLLM, tokens: list[list[int]], batch_items: int, steps: int,
                     device: torch.device = torch.device("cpu")) -> dict:
    """Items/s of forward + backward for packed and padded layouts, same items."""
    model.train()
    times: dict[bool, list[float]] = {True: [], False: []}
    padded_tokens = 0
    real_tokens = 0
    for step in range(steps + 1):  # step 0 warms up both paths
        chunk = tokens[(step * batch_items) % len(tokens):][:batch_items]
        for packed in (True, False):
            batch = model.make_batch(chunk, packed=packed).to(device)
            _sync(device)
            t0 = time.perf_counter()
            model(batch).pow(2).mean().backward()
            _sync(device)
            model.zero_grad(set_to_none=True)
            if step:
                times[packed].append(time.perf_counter() - t0)
                if not packed:
                    padded_tokens += batch.input_ids.numel()
                    real_tokens += batch.num_tokens
    items = steps * batch_items
    packed_s, padded_s = sum(times[True]), sum(times[False])
    return {"packed_items_s": items / packed_s, "padded_items_s": items / padded_s,
            "ratio": padded_s / packed_s, "padding_share": 1 - real_tokens / padded_tokens,
            "packed_step_median_s": statistics.median(times[True]),
            "padded_step_median_s": statistics.median(times[False])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/ml-100k")
    parser.add_argument("--preset", default="cpu-default")
    parser.add_argument("--batch-items", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    add_set_argument(parser)
    args = parser.parse_args()

    cfg = load_config(args.preset, None, parse_set(args.set))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = load_split(args.data, cfg)
    torch.manual_seed(0)
    item_cfg = dataclasses.replace(cfg.item_llm, trainable="full")
    item_llm = ItemLLM(item_cfg).to(device)
    tokens = item_llm.tokenize(split.item_text[1:])
    lengths = [len(t) for t in tokens]
    print(f"item LLM: {item_cfg.path or 'random ' + str(item_cfg.arch.get('hidden_size'))}, "
          f"{len(tokens)} items, tokens/item min {min(lengths)} median "
          f"{statistics.median(lengths)} max {max(lengths)}")
    r = train_throughput(item_llm, tokens, args.batch_items, args.steps, device)
    print(f"train fwd+bwd on {device}, {args.batch_items} items/batch, {args.steps} batches each:")
    print(f"  packed  {r['packed_items_s']:8.1f} items/s  (median step {r['packed_step_median_s']:.2f} s)")
    print(f"  padded  {r['padded_items_s']:8.1f} items/s  (median step {r['padded_step_median_s']:.2f} s, "
          f"{100 * r['padding_share']:.0f}% of its tokens are padding)")
    print(f"  packed / padded throughput ratio: {r['ratio']:.2f}x")
    del item_llm

    print(f"full-ranking evaluation on {device}, all users, test split:")
    for name in ("hllm", "sasrec"):
        torch.manual_seed(0)
        model = build_model(cfg, name, split).to(device)
        if isinstance(model, HLLM) and model.item_llm.frozen:
            t0 = time.perf_counter()
            load_or_compute_item_cache(model, cfg, device, Dist(), progress=False)
            print(f"  hllm item-embedding cache ready in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        user_ranks(model, split, "test", max_len=cfg.data.max_history, device=device,
                   batch_size=cfg.train.eval_batch_size, progress=False)
        _sync(device)
        seconds = time.perf_counter() - t0
        print(f"  {name:7s} {split.num_users} users x {split.num_items} items: {seconds:.2f} s "
              f"({split.num_users / seconds:.0f} users/s)")


if __name__ == "__main__":
    main()
