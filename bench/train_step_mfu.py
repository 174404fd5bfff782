"""HLLM training-step throughput and model FLOPs utilisation (MFU) of the real training loop.

    python bench/train_step_mfu.py                         # hllm-1b shapes (TinyLlama-1.1B x2), 1 GPU
    python bench/train_step_mfu.py --compile               # + torch.compile per transformer layer
    torchrun --nproc-per-node 8 bench/train_step_mfu.py --fsdp        # FSDP full shard, 8 GPUs
    python bench/train_step_mfu.py --tiny                  # cpu-tiny shapes on CPU (checks the script)
    python bench/train_step_mfu.py --derive-memory --ranks 1,2,4,8,16   # per-rank memory formula
    python bench/train_step_mfu.py --calibrate-cpu         # formula vs measured CPU tensor peaks

Both towers get random weights of the preset's shapes and a byte tokenizer, on a
synthetic dataset whose items have about --item-len tokens of text. Steps go through
`hllm.train.Trainer` exactly as `hllm train` runs them: packed item batches, bf16
autocast on CUDA, SDPA attention (varlen flash attention when flash-attn is installed),
fused AdamW on CUDA, activation checkpointing as the preset sets it, InfoNCE with
negatives all-gathered across ranks, FSDP under torchrun with --fsdp.

MFU = model FLOPs per second / (peak bf16 FLOP/s x ranks), with model FLOPs per step
    6 * N_item * item_tokens + 6 * N_user * user_tokens                 (matmul weights)
  + 12 * layers * hidden * sum(len^2) over every item and every user sequence  (attention)
N counts non-embedding parameters (an embedding lookup does no matmul); tokens are the
real tokens of the distinct items each rank encodes (padding excluded) and the real
positions of the user sequences; recomputation under activation checkpointing and the
InfoNCE logits are not counted (the usual MFU convention). Peak: H100 SXM and H200
989 TFLOP/s, A100 312 TFLOP/s (dense bf16); --peak-tflops overrides.

--calibrate-cpu (part of --derive-memory when no GPU is present, ~1 min on 2 cores)
measures the peak bytes of live CPU tensors in one training step of three small HLLM
configs (bf16 weights, hllm-1b's settings), compares each with the memory formula at the
same shapes and prints the hllm-1b/7b table scaled by the worst measured/formula ratio.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hllm.cli_help import add_set_argument
from hllm.config import Config, load_config, parse_set
from hllm.memory_model import MemoryInputs, derive_memory, memory_inputs
from hllm.train import Trainer

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
WORDS = ("the", "a", "story", "of", "love", "war", "science", "history", "mystery", "garden",
         "ocean", "city", "night", "river", "king", "machine", "music", "journey", "secret",
         "edition", "volume", "guide", "classic", "modern", "illustrated", "novel")


# ---------------------------------------------------------------- synthetic data

def write_dataset(directory: Path, num_users: int, num_items: int, seq_len: int,
                  item_len: int, seed: int = 0) -> Path:
    """RecBole files: users with `seq_len` interactions, items with ~`item_len` bytes of text."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, num_users + 1):
        t = 1_000_000_000 + u * 100_000
        for i in rng.sample(range(1, num_items + 1), k=min(seq_len, num_items)):
            t += rng.randint(1, 100)
            lines.append(f"{u}\t{i}\t4\t{t}")
    (directory / "bench.inter").write_text("\n".join(lines) + "\n")
    lines = ["item_id:token\ttitle:token_seq"]
    for i in range(1, num_items + 1):
        target = rng.randint(max(1, item_len // 2), max(1, 3 * item_len // 2))
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < target:
            words.append(rng.choice(WORDS))
        lines.append(f"{i}\t{' '.join(words)[:target]}")
    (directory / "bench.item").write_text("\n".join(lines) + "\n")
    return directory


def bench_config(args: argparse.Namespace) -> Config:
    preset = "cpu-tiny" if args.tiny else args.preset
    overrides = {
        "data.k_core": 0, "data.max_history": args.max_history,
        # Random weights of the preset's shapes; bytes as tokens (ids < 260 fit any vocab).
        "item_llm.path": None, "item_llm.init": "random", "item_llm.tokenizer": "bytes",
        "item_llm.prompt": "", "user_llm.path": None, "user_llm.init": "random",
        "train.batch_size": args.batch_size, "train.num_negatives": args.num_negatives,
        "train.epochs": 1, "train.compile": args.compile,
        "train.strategy": "fsdp" if args.fsdp else "ddp",
    }
    if args.tiny:
        overrides["item_llm.max_text_len"] = 48
    overrides.update(parse_set(args.set))
    return load_config(preset, None, overrides)


# ---------------------------------------------------------------- FLOPs

def _non_embedding_params(module: torch.nn.Module) -> int:
    embeds = {id(p) for m in module.modules() if isinstance(m, torch.nn.Embedding)
              for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in embeds)


@dataclass
class StepWork:
    item_tokens: int = 0
    user_tokens: int = 0
    flops: float = 0.0


def step_work(trainer: Trainer, group: list[list[int]], step: int) -> StepWork:
    """Model FLOPs of one optimizer step on this rank (see the module docstring)."""
    model = trainer.model
    item_cfg = model.item_llm.backbone.config
    user_cfg = model.user_llm.backbone.config
    n_item = _non_embedding_params(model.item_llm) + _non_embedding_params(model.item_proj)
    n_user = _non_embedding_params(model.user_llm)
    slot = 1 if model.item_llm.item_token is not None else 0
    work = StepWork()
    attn = 0.0
    for i, idx in enumerate(group):
        seqs, mask = trainer.collate(idx)
        negatives = trainer.negatives(step * len(group) + i)
        unique = torch.unique(torch.cat([seqs.flatten(), negatives])).tolist()
        lengths = [len(model.item_tokens[u]) + slot for u in unique]
        work.item_tokens += sum(lengths)
        attn += 12 * item_cfg.num_hidden_layers * item_cfg.hidden_size * sum(n * n for n in lengths)
        users = mask[:, :-1].sum(1).tolist()
        work.user_tokens += sum(users)
        attn += 12 * user_cfg.num_hidden_layers * user_cfg.hidden_size * sum(n * n for n in users)
    work.flops = 6 * n_item * work.item_tokens + 6 * n_user * work.user_tokens + attn
    return work


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if device.type != "cuda":
        return None, "CPU (no peak known; pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value, f"{name}: {value / 1e12:.0f} TFLOP/s bf16 dense"
    return None, f"{name} (unknown peak; pass --peak-tflops)"


# ---------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather(value):
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


def run_steps(cfg: Config, args: argparse.Namespace, workdir: Path, steps: int, warmup: int,
              item_len: int, label: str, quiet: bool = False) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world
    users = per_step * (steps + warmup) + world
    num_items = max(args.num_items, cfg.data.max_history + 10)
    data = write_dataset(workdir / f"data-{label}", users, num_items,
                         cfg.data.max_history + 3, item_len)
    trainer = Trainer(cfg, "hllm", str(data), workdir / f"run-{label}", progress=False)
    t0 = time.perf_counter()
    trainer.setup()
    build_s = time.perf_counter() - t0
    device, rank = trainer.device, trainer.dist.rank
    batches = trainer.epoch_batches(0)
    accum = cfg.train.grad_accum
    groups = [batches[i: i + accum] for i in range(0, len(batches), accum)][: steps + warmup]
    if len(groups) < steps + warmup:
        raise SystemExit(f"only {len(groups)} steps of data for {steps + warmup}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, works, losses = [], [], []
    trainer.model.train()
    for step, group in enumerate(groups):
        work = step_work(trainer, group, step)
        _sync(device)
        t = time.perf_counter()
        loss, _ = trainer.optimizer_step(group, step)
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t)
            works.append(work)
        losses.append(loss)
    mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    mine = {"rank": rank, "step_s": statistics.median(times), "mean_step_s": statistics.mean(times),
            "item_tokens": sum(w.item_tokens for w in works) / len(works),
            "user_tokens": sum(w.user_tokens for w in works) / len(works),
            "flops": sum(w.flops for w in works) / len(works), "mem": mem}
    ranks = _gather(mine)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    result = {"ranks": ranks, "device": device, "world": world, "build_s": build_s,
              "params": n_params, "losses": losses, "fsdp": trainer.fsdp,
              "fused": bool(trainer.optimizer.defaults.get("fused")),
              "attn": (trainer.model.item_llm.backbone.config._attn_implementation,
                       trainer.model.user_llm.backbone.config._attn_implementation)}
    return result


def report(result: dict, cfg: Config, args: argparse.Namespace) -> None:
    ranks, world, device = result["ranks"], result["world"], result["device"]
    step_s = max(r["step_s"] for r in ranks)  # the slowest rank sets the pace
    item_tokens = sum(r["item_tokens"] for r in ranks)
    user_tokens = sum(r["user_tokens"] for r in ranks)
    flops = sum(r["flops"] for r in ranks)
    peak, peak_label = peak_flops(device, args.peak_tflops)
    it, ut = cfg.item_llm.arch, cfg.user_llm.arch
    print(f"preset {cfg.preset} shapes: Item LLM {it.get('num_hidden_layers')}x{it.get('hidden_size')}, "
          f"User LLM {ut.get('num_hidden_layers')}x{ut.get('hidden_size')}; "
          f"{result['params'] / 1e6:.1f}M params; device {device} x{world}")
    print(f"settings: batch {cfg.train.batch_size}/rank, history {cfg.data.max_history}, "
          f"negatives {cfg.train.num_negatives} (global), packed items={cfg.item_llm.packed} "
          f"(pack_len {cfg.item_llm.pack_len}), precision {cfg.train.precision}, "
          f"attention item/user {result['attn'][0]}/{result['attn'][1]}, fused AdamW "
          f"{result['fused']}, compile {cfg.train.compile}, FSDP {result['fsdp']}, activation "
          f"checkpointing item/user {cfg.item_llm.gradient_checkpointing}/"
          f"{cfg.user_llm.gradient_checkpointing}")
    print(f"model build + wrap: {result['build_s']:.1f} s; losses: "
          + " ".join(f"{x:.3f}" for x in result["losses"]))
    print(f"step time (median of {args.steps}, after {args.warmup} warm-up): {step_s * 1e3:.1f} ms")
    print(f"tokens/step (all ranks): {item_tokens:.0f} item + {user_tokens:.0f} user; "
          f"tokens/s: {(item_tokens + user_tokens) / step_s:,.0f} "
          f"({item_tokens / step_s:,.0f} item, {user_tokens / step_s:,.0f} user)")
    achieved = flops / step_s
    mfu = f"{100 * achieved / (peak * world):.1f}%" if peak else "n/a"
    print(f"model FLOPs/step {flops:.3e}; achieved {achieved / 1e12:.3f} TFLOP/s; "
          f"MFU {mfu} (peak: {peak_label})")
    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (CPU process)"
    print(f"{kind} per rank: " + ", ".join(f"rank {r['rank']}: {r['mem'] / 2**30:.2f} GiB"
                                           for r in ranks))


# ---------------------------------------------------------------- memory derivation

def print_derivation(configs: list[Config], ranks: list[int], item_len: int | None) -> None:
    print("DERIVED (formula, not measured): per-rank peak GPU memory, FSDP full shard + bf16 "
          "params + activation checkpointing on every decoder layer")
    print("  states      = (16 B x trainable params + 4 B x frozen params) / N"
          "   [fp32 master 4 + fp32 grad 4 + Adam m,v 8; sharded]")
    print("  gathered    = 2 B x (2 x layer params) + 2 B x largest tower unit + 6 B x layer params"
          "   [bf16 current + prefetched layer, embeddings unit; bf16 grad + fp32 reduce copy]")
    print("  checkpoints = 2 B x (L_item x T_item x d_item + L_user x T_user x d_user)"
          "   [each layer's bf16 input, kept for recomputation]")
    print("  layer       = max over towers of T x (26 d + 8 i) B + T_item x pack_len B"
          "   [one layer recomputed: bf16 saved tensors + boundary grads; packed-row mask]")
    print("  T_item = (batch x (history + 1) + negatives / N) x item_len  (distinct items, an upper "
          "bound), T_user = batch x history")
    for cfg in configs:
        m0 = memory_inputs(cfg, 1, item_len=item_len)
        print(f"\n  {cfg.preset}: trainable {m0.p_trainable / 1e9:.3f}B, frozen {m0.p_frozen / 1e6:.1f}M, "
              f"layer {m0.p_layer / 1e6:.1f}M, tower unit {m0.p_unit / 1e6:.1f}M params; "
              f"item L={m0.item_layers} d={m0.item_hidden} i={m0.item_inter}; "
              f"user L={m0.user_layers} d={m0.user_hidden} i={m0.user_inter}; batch {m0.batch}/rank, "
              f"history {m0.history}, negatives {m0.negatives}, item_len {m0.item_len}, "
              f"pack_len {m0.pack_len}")
        print("  | N | T_item/rank | states GiB | gathered GiB | checkpoints GiB | layer GiB | "
              "total GiB |")
        print("  |---|---|---|---|---|---|---|")
        for n in ranks:
            d = derive_memory(memory_inputs(cfg, n, item_len=item_len))
            print(f"  | {n} | {d['tokens_item']:,.0f} | {d['states'] / 2**30:.1f} | "
                  f"{d['gathered'] / 2**30:.1f} | {d['checkpoints'] / 2**30:.1f} | "
                  f"{d['layer'] / 2**30:.1f} | {d['total'] / 2**30:.1f} |")


def _yaml_value(value) -> str:
    """A --set value that parses back to `value` (json.dumps writes 1e-05, a YAML string)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def calibrate(args: argparse.Namespace, workdir: Path) -> None:
    """On a GPU: measure a 2+2-layer model of the hllm-1b widths and compare with the formula."""
    two_layers = {**load_config("hllm-1b").item_llm.arch, "num_hidden_layers": 2}
    arch = _yaml_value(two_layers)
    small = argparse.Namespace(**{**vars(args), "tiny": False, "preset": "hllm-1b",
                                  "batch_size": 2, "num_negatives": 64, "max_history": 20,
                                  "set": [f"item_llm.arch={arch}", f"user_llm.arch={arch}",
                                          *args.set]})
    cfg = bench_config(small)
    item_len = 64
    result = run_steps(cfg, small, workdir, steps=3, warmup=1, item_len=item_len, label="calibrate")
    # The synthetic texts average item_len bytes: the formula gets the mean, not the maximum.
    m = memory_inputs(cfg, result["world"], fsdp=result["fsdp"], item_len=item_len,
                      label="calibration")
    derived = derive_memory(m)["total"]
    measured = max(r["mem"] for r in result["ranks"])
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"\nCALIBRATION (measured on {torch.cuda.get_device_name(result['device'])} x"
              f"{result['world']}, FSDP {result['fsdp']}): 2+2 layers of the hllm-1b widths, "
              f"batch 2, history 20, negatives 64, items ~{item_len} tokens: "
              f"max_memory_allocated {measured / 2**30:.2f} GiB vs derived {derived / 2**30:.2f} GiB "
              f"(measured/derived {measured / derived:.2f})")


# ---------------------------------------------------------------- CPU calibration

# Small HLLM configurations measured on CPU (L layers per tower, width d, MLP width i,
# mean item text length in tokens); head size 64 and TinyLlama's 8:1 query:KV heads.
CPU_CALIBRATION = ((2, 256, 704, 64), (2, 512, 1408, 64), (4, 256, 704, 128))


def _live_tensor_bytes() -> int:
    """Bytes of every CPU tensor storage reachable from Python (each storage counted once)."""
    import gc

    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        # issubclass(type(...)): isinstance would read __class__ of deprecated objects.
        if not issubclass(type(obj), torch.Tensor) or obj.device.type != "cpu" or obj.is_meta:
            continue
        storage = obj.untyped_storage()
        if storage.nbytes():
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


def _profiled_peak(fn) -> tuple[int, int]:
    """Run fn under torch.profiler(profile_memory=True); (peak, final) bytes allocated net of
    frees, relative to the start. Frees of blocks allocated before the start are not reported
    by the profiler, so both are upper bounds."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
    running = peak = 0
    for _, size in sorted(allocs):
        running += size
        peak = max(peak, running)
    return peak, running


def cpu_formula(m: MemoryInputs, t_item: float, t_user: float) -> dict[str, float]:
    """derive_memory at N=1 with the parameter terms for what the CPU run holds, at the
    token counts of the measured step (not the formula's upper bounds on them).

    The formula's activation terms (checkpoints, layer) already assume bf16 compute copies
    of the weights and are kept as they are. Its states term assumes fp32 master weights,
    fp32 gradients and fp32 Adam states, and its gathered term FSDP's unsharded bf16 copies;
    the single CPU process instead trains the bf16 weights in place (bf16 parameters,
    gradients and Adam m, v: 8 B per trainable and 2 B per frozen parameter) and gathers
    nothing.
    """
    d = derive_memory(m, t_item, t_user)
    d["states"] = 8 * m.p_trainable + 2 * m.p_frozen
    d["gathered"] = 0.0
    d["total"] = d["states"] + d["gathered"] + d["checkpoints"] + d["layer"]
    return d


def measure_cpu_peak(args: argparse.Namespace, workdir: Path, layers: int, hidden: int,
                     inter: int, item_len: int) -> dict:
    """Peak bytes of live CPU tensors during one training step of a small HLLM config.

    Both towers get hllm-1b's settings (vocabulary, activation checkpointing, packed
    items, sdpa) at the given depth and width; batch 4, history 20, 64 negatives. After
    Trainer.setup every parameter is cast to bf16 (what FSDP's bf16 param_dtype computes
    with) and the step runs under bf16 autocast, as on CUDA. One unmeasured step allocates
    the Adam states; the second step (forward, backward, clipping, AdamW, zero_grad) is
    measured: live tensor bytes before it + the profiler's peak of net allocations in it.
    """
    heads = hidden // 64
    arch = {**load_config("hllm-1b").item_llm.arch, "num_hidden_layers": layers,
            "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 8)}
    spec = _yaml_value(arch)
    small = argparse.Namespace(**{**vars(args), "tiny": False, "preset": "hllm-1b",
                                  "batch_size": 4, "num_negatives": 64, "max_history": 20,
                                  "compile": False, "fsdp": False,
                                  "set": [f"item_llm.arch={spec}", f"user_llm.arch={spec}",
                                          "train.precision=bf16", *args.set]})
    cfg = bench_config(small)
    label = f"cpu-{layers}x{hidden}-{item_len}"
    data = write_dataset(workdir / f"data-{label}", 3 * cfg.train.batch_size + 1, 4000,
                         cfg.data.max_history + 3, item_len)
    trainer = Trainer(cfg, "hllm", str(data), workdir / f"run-{label}", progress=False)
    if trainer.device.type != "cpu" or trainer.dist.enabled:
        raise SystemExit("--calibrate-cpu runs in one CPU process: not under torchrun, and with "
                         "no visible GPU (CUDA_VISIBLE_DEVICES=)")
    t0 = time.perf_counter()
    trainer.setup()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.data = p.data.to(torch.bfloat16)
    trainer.model.train()
    groups = [[b] for b in trainer.epoch_batches(0)[:2]]
    trainer.optimizer_step(groups[0], 0)  # allocates the AdamW states
    baseline = _live_tensor_bytes()
    t1 = time.perf_counter()
    extra, leftover = _profiled_peak(lambda: trainer.optimizer_step(groups[1], 1))
    step_s = time.perf_counter() - t1
    work = step_work(trainer, groups[1], 1)  # the step's real item and user token counts
    seqs, _ = trainer.collate(groups[1][0])
    distinct = len(torch.unique(torch.cat([seqs.flatten(), trainer.negatives(1)])))
    m = memory_inputs(cfg, 1, fsdp=True, item_len=item_len, label=label)
    return {"label": label, "inputs": m, "baseline": baseline, "extra": extra,
            "leftover": leftover, "measured": baseline + extra,
            "formula": cpu_formula(m, work.item_tokens, work.user_tokens),
            "nominal": derive_memory(m), "distinct_items": distinct,
            "item_tokens": work.item_tokens, "user_tokens": work.user_tokens,
            "step_s": step_s, "total_s": time.perf_counter() - t0}


def calibrate_cpu(args: argparse.Namespace, workdir: Path, ranks: list[int]) -> None:
    """Measure CPU_CALIBRATION, compare with the formula, print the presets' table scaled."""
    gib, mib = 2**30, 2**20
    print("\nCPU CALIBRATION (measured): peak bytes of live CPU tensors in one training step "
          "(forward + backward + clipping + AdamW) of small HLLM configs in 1 process with "
          "hllm-1b's settings (activation checkpointing on both towers, packed items, sdpa, "
          "vocabulary 32000), bf16 parameters under bf16 autocast, batch 4, history 20, "
          "negatives 64, 4000 items; measured = live tensors before the step + "
          "torch.profiler(profile_memory=True) peak of net allocations during it")
    print("  formula at N=1 and the step's real token counts; dtype adjustment: states = "
          "8 B x trainable + 2 B x frozen params (bf16 weights, grads and Adam m, v trained in "
          "place, instead of 16 B / 4 B), gathered = 0 (no FSDP copies); checkpoints and layer "
          "as in the formula (it already assumes bf16 activations)")
    print("  | L x d, i, item_len | distinct items; item + user tokens | measured MiB "
          "(before + in step) | formula MiB = states + gathered + checkpoints + layer | "
          "measured/formula | s |")
    print("  |---|---|---|---|---|---|")
    ratios = []
    for layers, hidden, inter, item_len in CPU_CALIBRATION:
        r = measure_cpu_peak(args, workdir, layers, hidden, inter, item_len)
        f, nominal = r["formula"], r["nominal"]
        ratios.append(r["measured"] / f["total"])
        print(f"  | {layers} x {hidden}, {inter}, {item_len + 1} | {r['distinct_items']}; "
              f"{r['item_tokens']:,} + {r['user_tokens']:,} (bound {nominal['tokens_item']:,.0f} + "
              f"{nominal['tokens_user']:,.0f}) | {r['measured'] / mib:.0f} "
              f"({r['baseline'] / mib:.0f} + {r['extra'] / mib:.0f}) | {f['total'] / mib:.0f} = "
              f"{f['states'] / mib:.0f} + {f['gathered'] / mib:.0f} + {f['checkpoints'] / mib:.0f}"
              f" + {f['layer'] / mib:.0f} | {ratios[-1]:.3f} | {r['total_s']:.0f} |", flush=True)
    worst = max(ratios)
    scale = max(worst, 1.0)
    print(f"  worst measured/formula: {worst:.3f}; the table below is the formula (hllm-1b/7b "
          f"settings, token upper bounds) x {scale:.3f}"
          + ("" if worst >= 1 else " (never scaled below the formula)"))
    print("\nCALIBRATED per-rank peak GPU memory, GiB (derived: formula calibrated on measured CPU "
          "tensor peaks of smaller configurations; not measured on a GPU (allocator "
          "fragmentation, CUDA workspaces and NCCL buffers not included)); FSDP full shard, "
          "bf16 params, activation checkpointing, item_len 257, 512 negatives")
    print("  | preset (batch/rank) | " + " | ".join(f"N={n}" for n in ranks) + " |")
    print("  |---|" + "---|" * len(ranks))
    for preset in ("hllm-1b", "hllm-7b"):
        cfg = load_config(preset)
        m0 = memory_inputs(cfg, 1)
        cells = [derive_memory(memory_inputs(cfg, n))["total"] * scale / gib for n in ranks]
        print(f"  | {preset} ({m0.p_trainable / 1e9:.2f}B trainable, batch {m0.batch}) | "
              + " | ".join(f"{c:.1f}" for c in cells) + " |")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="cpu-tiny shapes, a few steps (runs on CPU)")
    p.add_argument("--preset", default="hllm-1b", choices=["hllm-1b", "hllm-7b"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 5 with --tiny)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per rank per step (default 4; 8 with --tiny)")
    p.add_argument("--num-negatives", type=int, default=None, help="global pool (default 256; 32 with --tiny)")
    p.add_argument("--max-history", type=int, default=None, help="default 50 (20 with --tiny)")
    p.add_argument("--item-len", type=int, default=None,
                   help="mean item text length in tokens (default 128; 24 with --tiny)")
    p.add_argument("--num-items", type=int, default=None, help="default 4000 (200 with --tiny)")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer layer")
    p.add_argument("--fsdp", action="store_true", help="train.strategy=fsdp (under torchrun)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s per device")
    add_set_argument(p)
    p.add_argument("--derive-memory", action="store_true",
                   help="print the per-rank memory formula for hllm-1b and hllm-7b and calibrate "
                        "it (max_memory_allocated on a GPU; --calibrate-cpu without one)")
    p.add_argument("--calibrate-cpu", action="store_true",
                   help="measure the peak live CPU tensor bytes of small configs, compare with the "
                        "memory formula and print the hllm-1b/7b table scaled by the worst ratio "
                        "(part of --derive-memory when no GPU is present)")
    p.add_argument("--ranks", default="1,2,4,8,16", help="N values for --derive-memory")
    args = p.parse_args(argv)
    tiny = args.tiny
    for name, big, small in (("steps", 10, 5), ("batch_size", 4, 8), ("num_negatives", 256, 32),
                             ("max_history", 50, 20), ("item_len", 128, 24),
                             ("num_items", 4000, 200)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else big)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HLLM_CACHE", tempfile.mkdtemp(prefix="hllm-bench-cache-"))
    with tempfile.TemporaryDirectory(prefix="hllm-mfu-") as tmp:
        workdir = Path(tmp)
        ranks = [int(x) for x in args.ranks.split(",")]
        if args.derive_memory:
            if int(os.environ.get("RANK", "0")) == 0:
                print_derivation([load_config("hllm-1b"), load_config("hllm-7b")], ranks, None)
            if torch.cuda.is_available():
                calibrate(args, workdir)
            else:
                print("\n(no GPU: no torch.cuda.max_memory_allocated calibration; run this on a GPU "
                      "to compare the formula with it at a small config)")
        if args.calibrate_cpu or (args.derive_memory and not torch.cuda.is_available()):
            calibrate_cpu(args, workdir, ranks)
        if args.derive_memory or args.calibrate_cpu:
            return
        cfg = bench_config(args)
        result = run_steps(cfg, args, workdir, args.steps, args.warmup, args.item_len, "bench")
        if not dist.is_initialized() or dist.get_rank() == 0:
            report(result, cfg, args)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
