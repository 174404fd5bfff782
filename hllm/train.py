"""One training loop for every model (HLLM, SASRec).

    hllm train --preset cpu-tiny --data ../shared/data/ml-100k --out runs/tiny
    torchrun --nproc-per-node 2 -m hllm.cli train --preset cpu-tiny --data ... --out ...

Features and the setting that turns each on:
  * AdamW, linear warmup then cosine decay ........ train.lr, train.warmup_ratio
  * bf16 autocast where the device supports it ..... train.precision (auto | bf16 | fp32)
  * gradient accumulation ......................... train.grad_accum
  * gradient checkpointing ........................ item_llm / user_llm.gradient_checkpointing
  * safetensors checkpoints with exact resume ..... train.checkpoint_every, --resume
  * early stopping on validation NDCG@10 .......... train.patience
  * DDP under torchrun (gloo on CPU, nccl on GPU) . launch with torchrun
  * FSDP2 full shard under torchrun ............... train.strategy=fsdp, train.fsdp_mixed_precision
  * fused AdamW on CUDA, torch.compile per layer ... train.fused_adamw, train.compile
  * SDPA / varlen flash attention (packed items) ... train.attn_implementation
  * progress bars (epoch, loss, seq/s) ............ on when stderr is a TTY

Determinism: the epoch's data order comes from (seed, epoch) and each step's
negatives from (seed, step), so a resumed run replays exactly what an uninterrupted
one would, and N DDP ranks with batch B see the same batches as one process with
batch N*B (rank r takes every N-th sequence; negatives are sliced and all-gathered).
The same holds under FSDP, which shards parameters, gradients and optimizer states over
the ranks instead of replicating them; checkpoints are always written unsharded (the
full state dict gathered to rank 0), so evaluation, export and resume read one format.
"""

from __future__ import annotations

import json
import pickle
import logging
import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from hllm import determinism
from hllm.atomic import recover_dir, swap_dir
from hllm.config import Config, config_from_dict
from hllm.data.readers import read_dataset
from hllm.data.split import SplitData, build_split
from hllm.determinism import deterministic_algorithms
from hllm.distributed import (Dist, all_reduce_sum, barrier, full_optimizer_state_dict,
                              full_state_dict, gather_with_grad, init_distributed, is_fsdp,
                              load_full_optimizer_state_dict, load_full_state_dict, pick_device,
                              shard_model)
from hllm.errors import ConfigError, DataError, SaveError, first_line
from hllm.feast_windows import feature_store_windows
from hllm.validation import require_valid
from hllm.item_cache import load_or_compute_item_cache, load_or_compute_prefix_states
from hllm.models.base import SequentialRecommender
from hllm.models.hllm import HLLM
from hllm.models.sasrec import SASRec
from hllm.progress import Progress
from hllm.precision import autocast_context, fsdp_dtypes
from hllm.run_evaluation import Evaluation, write_evidence, write_json

log = logging.getLogger(__name__)

MODELS = ("hllm", "sasrec")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint for exact resume."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in `epoch`
    global_step: int = 0
    best_ndcg10: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    epoch_loss_sum: float = 0.0  # over the optimizer steps of `epoch` done so far
    stopped_early: bool = False  # patience ran out: a resumed run does not train further
    done: bool = False  # this process should stop (max_steps or early stop); not restored
    history: list[dict[str, Any]] = field(default_factory=list)


def build_model(cfg: Config, model_name: str, split: SplitData) -> SequentialRecommender:
    if model_name == "hllm":
        return HLLM(cfg, split.item_text)
    if model_name == "sasrec":
        return SASRec(cfg.sasrec, split.num_items, cfg.data.max_history + 1,
                      cfg.train.logit_scale_init, cfg.train.logit_scale_max)
    raise ConfigError(f"unknown model {model_name!r} (known: {', '.join(MODELS)})")


def load_split(data: str, cfg: Config) -> SplitData:
    return build_split(read_dataset(data, cfg.data.format), cfg.data)


def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(total_steps * warmup_ratio))

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def saved_state_dict(model: SequentialRecommender, cfg: Config,
                     state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weights worth saving: the frozen part of a pretrained Item LLM is re-read from its
    path instead (all of it when frozen; all but the top k layers and the final norm with
    trainable=top-k, which saves ~500 MB per checkpoint for SmolLM2).

    `state`: an already gathered full state dict (FSDP); default `model.state_dict()`.
    """
    state = model.state_dict() if state is None else state
    if isinstance(model, HLLM) and cfg.item_llm.init == "pretrained" and cfg.item_llm.path:
        learned = {f"item_llm.backbone.{n}" for n, p in model.item_llm.backbone.named_parameters()
                   if p.requires_grad}
        state = {k: v for k, v in state.items()
                 if not k.startswith("item_llm.backbone.") or k in learned}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def model_on_device(cfg: Config, model_name: str, split: SplitData, device: torch.device,
                    dist: Dist, progress: bool, timings: dict[str, float]) -> SequentialRecommender:
    """The run's model built (seeded) on `device`, with what its Item LLM caches: the
    frozen Item LLM's item embeddings, or the hidden states below a top-k fine-tune."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, model_name, split).to(device)
    if isinstance(model, HLLM) and model.item_llm.frozen:
        t0 = time.perf_counter()
        load_or_compute_item_cache(model, cfg, device, dist, progress)
        timings["item_cache_s"] = time.perf_counter() - t0
    elif (isinstance(model, HLLM) and cfg.item_llm.trainable == "top-k"
          and cfg.item_llm.prefix_cache):
        t0 = time.perf_counter()
        load_or_compute_prefix_states(model, cfg, device, dist, progress)
        timings["item_cache_s"] = time.perf_counter() - t0
    return model


def load_weights(model: SequentialRecommender, path: Path) -> None:
    """Load unsharded safetensors weights (into a plain, DDP-wrapped or FSDP-sharded model)."""
    state = load_file(str(path))
    if is_fsdp(model):
        missing, unexpected = load_full_state_dict(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = "item_llm.backbone."
    really_missing = [k for k in missing if not k.startswith(allowed)]
    if really_missing or unexpected:
        raise ConfigError(f"{path}: weights do not match the model "
                          f"(missing {really_missing[:5]}, unexpected {unexpected[:5]})")


class Trainer:
    def __init__(self, cfg: Config, model_name: str, data: str, out: str | Path,
                 resume: bool = False, progress: bool | None = None, validate: bool = True,
                 feature_repo: str | Path | None = None):
        self.cfg, self.model_name, self.data = cfg, model_name, data
        self.validate = validate
        self.feature_repo = feature_repo
        self.out = Path(out)
        self.dist: Dist = init_distributed()
        self.device = pick_device(self.dist)
        # Refused here, before any data is read, when the setting is not auto | on | off.
        self.deterministic = determinism.wanted(cfg.train.deterministic, self.device)
        self.ran_deterministic: bool | None = None
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.progress = self.progress and self.dist.is_main
        self.resume = resume
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        checkpoint = self.out / "checkpoint"
        saved = checkpoint.is_dir() or checkpoint.with_name("checkpoint.old").is_dir()
        if saved and not self.resume:
            raise ConfigError(f"{self.out} already holds a checkpoint; pass --resume to continue "
                              "it, or choose another --out")
        if self.resume and not saved:
            # Never a silent restart from step 0: the operator asked to continue something.
            raise ConfigError(f"--resume: {self.out} holds no checkpoint/ (nor checkpoint.old/) "
                              "to continue; drop --resume to train from scratch")
        if self.resume and self.dist.is_main and recover_dir(checkpoint):
            log.warning("%s: restored from checkpoint.old (the last save was interrupted "
                        "between its two renames)", checkpoint)
        barrier()
        if self.validate:
            require_valid(self.data, cfg.data.min_user_interactions)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self._build_model()
        if self.dist.is_main:  # written once data and model are known to be good
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(
                {"run": {"model": self.model_name, "dataset": str(self.data)}, **cfg.to_dict()},
                sort_keys=False))
        self._parallelize()
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        params = decay + no_decay
        # The fused kernel needs every parameter on CUDA (DTensor shards included).
        fused = bool(cfg.train.fused_adamw and params and all(p.is_cuda for p in params))
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.train.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr,
            **({"fused": True} if fused else {}))
        self.steps_per_epoch = self._steps_per_epoch()
        total = self.steps_per_epoch * cfg.train.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total, cfg.train.warmup_ratio))
        self.state = TrainState()
        if self.resume:
            self._load_checkpoint(checkpoint)
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("%s: %d users, %d items, %d training windows; %.1fM params (%.2fM trainable); "
                 "%d steps/epoch on %s x%d", self.model_name, self.split.num_users,
                 self.split.num_items, len(self.windows), n_params / 1e6, n_train / 1e6,
                 self.steps_per_epoch, self.device, self.dist.world_size)

    def _parallelize(self) -> None:
        """Compile layers if asked, then wrap for data parallelism (DDP or FSDP) under torchrun."""
        cfg = self.cfg
        if cfg.train.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, "
                              f"got {cfg.train.strategy!r}")
        fsdp = cfg.train.strategy == "fsdp"
        units = self.model.fsdp_units() if fsdp else []  # refuses models FSDP cannot shard
        param_dtype, reduce_dtype = fsdp_dtypes(cfg, self.device) if fsdp else (None, None)
        if cfg.train.compile:
            # Layer by layer (module.compile keeps parameter names, so checkpoints do not
            # change); FSDP's gather/free hooks run between the compiled layers.
            layers = self.model.transformer_layers()
            for layer in layers:
                layer.compile()
            log.info("torch.compile: %d transformer layers", len(layers))
        self.fsdp = fsdp and self.dist.enabled
        if self.fsdp:
            shard_model(self.model, units, param_dtype, reduce_dtype,
                        forward_methods=self.model.fsdp_forward_methods)
            self.ddp = self.model
            log.info("FSDP full shard over %d ranks: %d units, params %s, reduce %s",
                     self.dist.world_size, len(units) + 1, param_dtype or torch.float32,
                     reduce_dtype or torch.float32)
        elif self.dist.enabled:
            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.ddp = self.model

    def _build_model(self) -> None:
        """Data, split and model (with the frozen Item LLM's cached embeddings)."""
        t0 = time.perf_counter()
        self.split = load_split(self.data, self.cfg)
        self.timings["load_data_s"] = time.perf_counter() - t0
        if self.feature_repo is None:
            self.windows = self.split.train_windows(self.cfg.data.max_history)
        else:
            t0 = time.perf_counter()
            self.windows = feature_store_windows(self.feature_repo, self.split, self.cfg.data,
                                                 self.cfg.data.max_history)
            self.timings["feature_store_windows_s"] = time.perf_counter() - t0
        self.model = model_on_device(self.cfg, self.model_name, self.split, self.device,
                                     self.dist, self.progress, self.timings)

    def _steps_per_epoch(self) -> int:
        per_rank = len(self.windows) // self.dist.world_size
        micro = math.ceil(per_rank / self.cfg.train.batch_size)
        return max(1, micro // self.cfg.train.grad_accum)

    # ------------------------------------------------------------ data
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches (window indices) for `epoch`, in a seeded order."""
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.windows), generator=g).tolist()
        w = self.dist.world_size
        perm = perm[: len(perm) - len(perm) % w][self.dist.rank::w]
        b = self.cfg.train.batch_size
        batches = [perm[i: i + b] for i in range(0, len(perm), b)]
        return batches[: self.steps_per_epoch * self.cfg.train.grad_accum]

    def collate(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item-id windows `idx` as a zero-padded (ids, mask) pair on the device."""
        seqs = [self.windows[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
        return ids.to(self.device), (ids > 0).to(self.device)

    def negatives(self, micro_step: int) -> torch.Tensor:
        """This rank's slice of the step's global negative pool (uniform over all items but
        the held-out cold ones: sampling them as negatives would teach the model to rank
        exactly the items the cold segment asks for at the bottom)."""
        n, w, r = self.cfg.train.num_negatives, self.dist.world_size, self.dist.rank
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7_919 + micro_step)
        if self.split.cold_items:
            allowed = self._negative_items()
            pool = allowed[torch.randint(0, len(allowed), (n - n % w,), generator=g)]
        else:
            pool = torch.randint(1, self.split.num_items + 1, (n - n % w,), generator=g)
        share = len(pool) // w
        return pool[r * share: (r + 1) * share].to(self.device)

    def _negative_items(self) -> torch.Tensor:
        if not hasattr(self, "_allowed_negatives"):
            keep = torch.ones(self.split.num_items + 1, dtype=torch.bool)
            keep[0] = False
            keep[list(self.split.cold_items)] = False
            self._allowed_negatives = keep.nonzero().squeeze(1)
        return self._allowed_negatives

    # ------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        t_start = time.perf_counter()
        with deterministic_algorithms(self.deterministic):
            self.ran_deterministic = torch.are_deterministic_algorithms_enabled()  # as torch ran it
            while not st.done and not st.stopped_early and st.epoch < cfg.train.epochs:
                self._train_epoch()
                if st.done:
                    break
                self._end_of_epoch()
            self.timings["train_s"] = (self.timings.get("train_s", 0.0)
                                       + time.perf_counter() - t_start)
            return self.finish()

    def _train_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        self.model.train()
        batches = self.epoch_batches(st.epoch)
        accum = cfg.train.grad_accum
        groups = [batches[i: i + accum] for i in range(0, len(batches), accum)]
        desc = f"epoch {st.epoch + 1}/{cfg.train.epochs}"
        bar = tqdm(total=len(groups), initial=st.step_in_epoch, disable=not self.progress,
                   desc=desc, unit="step", mininterval=1.0)
        # Off a terminal (pipelines, pods): a log line every 30 s instead of the bar.
        lines = (Progress(len(groups), desc, "step", bar=False, initial=st.step_in_epoch)
                 if self.dist.is_main and not self.progress else None)
        t0, seen = time.perf_counter(), 0
        for group in groups[st.step_in_epoch:]:
            loss, stats = self.optimizer_step(group, st.global_step)
            st.epoch_loss_sum += loss
            st.step_in_epoch += 1
            st.global_step += 1
            seen += sum(len(b) for b in group) * self.dist.world_size
            bar.set_postfix(loss=f"{loss:.4f}", seq_s=f"{seen / (time.perf_counter() - t0):.0f}",
                            lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
            if lines is not None:
                lines.update(1)
            if self.dist.is_main and st.global_step % cfg.train.log_every == 0:
                self._log_event({"step": st.global_step, "epoch": st.epoch, "loss": loss, **stats})
            if cfg.train.checkpoint_every and st.global_step % cfg.train.checkpoint_every == 0:
                self._save_checkpoint()
            if cfg.train.max_steps and st.global_step >= cfg.train.max_steps:
                st.done = True
                self._save_checkpoint()
                log.info("stopped at max_steps=%d (resume with --resume)", cfg.train.max_steps)
                break
        bar.close()
        if lines is not None:
            lines.close()

    def optimizer_step(self, group: list[list[int]], step: int) -> tuple[float, dict[str, float]]:
        """One optimizer step over the micro-batches of `group` (gradient accumulation);
        the step's loss, averaged over all ranks, and its statistics. Public with
        epoch_batches, collate and negatives: bench/train_step_mfu.py times steps one by
        one exactly as training runs them."""
        cfg = self.cfg
        collated = [self.collate(b) for b in group]
        # Normalise by the number of predicted positions over the whole step and all ranks,
        # so the gradient equals that of one big batch, whatever the split into micro-batches.
        count = sum(int((m[:, 1:] & m[:, :-1]).sum()) for _, m in collated)
        total = float(all_reduce_sum(torch.tensor(float(count))).item())
        self.model.clamp_logit_scale()
        loss_total, stats = 0.0, {}
        for i, (seqs, mask) in enumerate(collated):
            last = i == len(collated) - 1
            if self.fsdp:  # reduce-scatter gradients only after the last micro-batch
                self.model.set_requires_gradient_sync(last)
                sync = nullcontext()
            else:
                sync = nullcontext() if (last or not self.dist.enabled) else self.ddp.no_sync()
            with sync, autocast_context(cfg, self.device):
                loss_sum, _, stats = self.ddp(seqs, mask, self.negatives(step * len(collated) + i),
                                              gather_with_grad, cfg.train.nce_threshold)
                # DDP (and FSDP's reduce-scatter) average gradients over ranks; scale by world
                # size to get the global sum.
                loss = loss_sum * self.dist.world_size / max(total, 1.0)
            loss.backward()
            loss_total += float(loss_sum.detach()) / max(total, 1.0)
        if cfg.train.max_grad_norm:
            # Under FSDP the gradients are DTensor shards: clip_grad_norm_ reduces the squared
            # norms over the ranks, so every rank clips by the global norm.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        global_loss = float(all_reduce_sum(torch.tensor(loss_total)).item())
        return global_loss, stats

    def _end_of_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        metrics = self.evaluate("valid")
        epoch_loss = st.epoch_loss_sum / max(1, st.step_in_epoch)
        record = {"epoch": st.epoch + 1, "train_loss": epoch_loss,
                  **{f"valid_{k}": v for k, v in metrics.items()}}
        st.history.append(record)
        if self.dist.is_main:
            log.info("epoch %d: loss %.4f  valid R@10 %.4f N@10 %.4f", st.epoch + 1,
                     epoch_loss, metrics["recall@10"], metrics["ndcg@10"])
            self._log_event(record)
        if metrics["ndcg@10"] > st.best_ndcg10:
            st.best_ndcg10, st.best_epoch, st.bad_epochs = metrics["ndcg@10"], st.epoch + 1, 0
            self._save_weights(self.out / "best")
        else:
            st.bad_epochs += 1
            if st.bad_epochs >= cfg.train.patience:
                log.info("early stop: no validation NDCG@10 gain for %d epochs", st.bad_epochs)
                st.stopped_early = True
        st.epoch += 1
        st.step_in_epoch = 0
        st.epoch_loss_sum = 0.0
        self._save_checkpoint()

    def evaluation(self) -> Evaluation:
        """The model as it is now, scored the way `hllm evaluate` scores a saved run."""
        return Evaluation(self.model, self.split, self.cfg, self.device, self.dist,
                          progress=self.progress, fsdp=getattr(self, "fsdp", False))

    def evaluate(self, stage: str) -> dict[str, float]:
        return self.evaluation().metrics(stage)

    def finish(self) -> dict[str, Any]:
        """Reload the best weights, score validation and test, write metrics.json."""
        best = self.out / "best" / "model.safetensors"
        barrier()
        if best.exists():
            load_weights(self.model, best)
        t0 = time.perf_counter()
        scores = self.evaluation().score()
        self.timings["evaluate_s"] = time.perf_counter() - t0
        result = scores.result(model=self.model_name, preset=self.cfg.preset,
                               best_epoch=self.state.best_epoch, epochs_run=self.state.epoch,
                               world_size=self.dist.world_size,
                               deterministic=self.ran_deterministic, timings=self.timings,
                               history=self.state.history)
        if self.dist.is_main:
            write_evidence(self.out, result, scores)
        return result

    # ------------------------------------------------------------ checkpoints
    def _log_event(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _save_weights(self, directory: Path) -> None:
        self._write_atomically(directory, with_trainer_state=False)

    def _save_checkpoint(self) -> None:
        """model.safetensors + optimizer/scheduler/RNG (trainer.pt) + state.json, atomically."""
        self._write_atomically(self.out / "checkpoint", with_trainer_state=True)
        barrier()

    def _write_atomically(self, directory: Path, with_trainer_state: bool) -> None:
        """Write into DIR.tmp, then swap it in: a crash never leaves a half-written DIR."""
        fsdp = getattr(self, "fsdp", False)
        if fsdp:  # collectives: every rank sends its shards, rank 0 receives them on CPU
            weights = full_state_dict(self.model)
            optimizer = ({"optimizer_by_name": full_optimizer_state_dict(self.model, self.optimizer)}
                         if with_trainer_state else {})
        if not self.dist.is_main:
            return
        if not fsdp:
            weights = self.model.state_dict()
            optimizer = {"optimizer": self.optimizer.state_dict()} if with_trainer_state else {}
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            save_file(saved_state_dict(self.model, self.cfg, weights), str(tmp / "model.safetensors"))
            if with_trainer_state:
                torch.save({**optimizer,
                            "scheduler": self.scheduler.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "cuda_rng": (torch.cuda.get_rng_state_all()
                                         if torch.cuda.is_available() else [])},
                           tmp / "trainer.pt")
                write_json(tmp / "state.json", self.state.__dict__)
        except Exception as exc:  # e.g. disk full: the previous DIR stays, no half copy beside it
            shutil.rmtree(tmp, ignore_errors=True)
            raise SaveError(f"{directory}: not saved ({first_line(exc)}); the previous "
                            f"{directory.name}/ is unchanged") from exc
        swap_dir(tmp, directory)

    def _load_checkpoint(self, directory: Path) -> None:
        try:  # weights_only: tensors and plain containers, never arbitrary pickled objects
            extra = torch.load(directory / "trainer.pt", map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ConfigError(f"{directory / 'trainer.pt'}: refused, it holds objects other than "
                              "tensors and plain values (loading it could run code); resume "
                              "only from checkpoints hllm train wrote") from exc
        sharded = "optimizer_by_name" in extra
        if sharded != self.fsdp:
            # The optimizer state is keyed by parameter name under FSDP and by position
            # otherwise; the weights themselves are the same unsharded file either way.
            kinds = ("an FSDP run (train.strategy=fsdp under torchrun)",
                     "a single-process or DDP run")
            raise ConfigError(f"{directory}: the checkpoint was written by {kinds[not sharded]}, "
                              f"but this run is {kinds[not self.fsdp]}; resume it the way it "
                              "was started")
        load_weights(self.model, directory / "model.safetensors")
        if self.fsdp:
            load_full_optimizer_state_dict(self.model, self.optimizer, extra["optimizer_by_name"])
        else:
            self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if torch.cuda.is_available() and extra["cuda_rng"]:
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        self.state = TrainState(**json.loads((directory / "state.json").read_text()))
        self.state.done = False
        log.info("resumed from %s at epoch %d, step %d", directory, self.state.epoch,
                 self.state.global_step)


def train(cfg: Config, model_name: str, data: str, out: str | Path, resume: bool = False,
          progress: bool | None = None, validate: bool = True,
          feature_repo: str | Path | None = None) -> dict[str, Any]:
    """Validate `data` (the checks of `hllm validate`), train, evaluate; returns metrics.json.

    validate=False only where the same data was validated just before (the pipeline's
    validate step, whose outcome gates the training branch). `feature_repo`: read the
    training windows from that Feast repo by point-in-time retrieval
    (hllm.feast_windows) instead of cutting them in memory; the same windows either way.
    """
    trainer = Trainer(cfg, model_name, data, out, resume=resume, progress=progress,
                      validate=validate, feature_repo=feature_repo)
    trainer.setup()
    return trainer.train()


def evaluate_run(run_dir: str | Path, data: str | None = None,
                 progress: bool | None = None) -> dict[str, Any]:
    """Rebuild a run's model from its config.yaml and best weights, and score it again.

    metrics.json keeps what training recorded (epochs, history, timings) and gets the new
    scores; data on another split is refused, so the numbers never describe other data
    under the trained run's name (and its lineage tags).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: no config.yaml; pass a run directory written by `hllm train`")
    best = run_dir / "best" / "model.safetensors"
    if not best.is_file():
        raise ConfigError(f"{run_dir}: no best/model.safetensors; the run has not finished an epoch")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    run = saved.pop("run")
    cfg = config_from_dict(saved)
    dist = init_distributed()
    device = pick_device(dist)
    progress = (sys.stderr.isatty() if progress is None else progress) and dist.is_main
    split = load_split(data or run["dataset"], cfg)
    metrics_path = run_dir / "metrics.json"
    previous = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    recorded, split_hash = previous.get("split_sha256"), split.fingerprint()
    if recorded and split_hash != recorded:
        raise DataError(f"{data or run['dataset']}: its split (split_sha256 {split_hash[:12]}) "
                        f"is not the one {run_dir} was trained and evaluated on "
                        f"({recorded[:12]}); nothing rewritten. Train a run on this data instead")
    timings = previous.get("timings", {})
    model = model_on_device(cfg, run["model"], split, device, dist, progress, {})
    load_weights(model, best)
    t0 = time.perf_counter()
    scores = Evaluation(model, split, cfg, device, dist, progress=progress).score()
    timings["evaluate_s"] = time.perf_counter() - t0
    result = scores.result(model=run["model"], preset=cfg.preset,
                           best_epoch=previous.get("best_epoch", -1),
                           epochs_run=previous.get("epochs_run", 0), world_size=dist.world_size,
                           deterministic=previous.get("deterministic"), timings=timings,
                           history=previous.get("history", []))
    if dist.is_main:
        write_evidence(run_dir, result, scores)
    return result
