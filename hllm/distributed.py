"""torchrun / DDP / FSDP helpers that degrade to no-ops in a single process."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    if rank != 0:  # every rank would repeat rank 0's INFO lines; warnings still show
        logging.getLogger("hllm").setLevel(logging.WARNING)
    return Dist(rank, world, local)


def pick_device(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns this rank's slice of the summed grads.

    Works on every backend (gloo has no reduce_scatter): backward all-reduces the full
    gradient and keeps this rank's rows.
    """
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), tensor.size(0)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n: (ctx.rank + 1) * ctx.n]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------- FSDP (FSDP2, fully_shard)
# Imported where used: torch.distributed.checkpoint adds ~0.5 s to every `hllm` command.

def is_fsdp(module: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing was sharded
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def shard_model(model: torch.nn.Module, units: list[torch.nn.Module],
                param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = None,
                forward_methods: tuple[str, ...] = ()) -> torch.nn.Module:
    """FSDP2 full shard of `model` in place: each of `units` (children first), then the root.

    Parameters, gradients and optimizer states live sharded over the ranks; a unit's full
    parameters are all-gathered just before its forward (and again for backward) and
    freed after. `param_dtype`/`reduce_dtype` set the mixed-precision policy (None: the
    parameters' own fp32). `forward_methods` are root methods other than `forward` that
    read parameters (evaluation), wrapped with the same gather/free hooks.

    fully_shard refuses 0-d parameters, so each scalar parameter becomes a 1-element
    vector here; `full_state_dict` and `load_full_state_dict` convert back, and saved
    checkpoints keep the unsharded model's shapes.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    scalars = []
    for name, param in list(model.named_parameters()):
        if param.dim() == 0:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            setattr(owner, leaf, torch.nn.Parameter(param.detach().reshape(1).clone(),
                                                    requires_grad=param.requires_grad))
            scalars.append(name)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for unit in units:
        fully_shard(unit, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    model._hllm_scalar_params = tuple(scalars)  # type: ignore[attr-defined]
    for name in forward_methods:
        register_fsdp_forward_method(model, name)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU, on rank 0 (empty elsewhere). Collective: call on all ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    for name in getattr(model, "_hllm_scalar_params", ()):
        if name in state:
            state[name] = state[name].reshape(())
    return state


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]):
    """Load an unsharded state dict (every rank passes the same one) into a sharded model.

    Returns (missing keys, unexpected keys) like `nn.Module.load_state_dict(strict=False)`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = dict(state)
    for name in getattr(model, "_hllm_scalar_params", ()):
        if name in state:
            state[name] = state[name].reshape(1)
    result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True,
                                                                         strict=False))
    return result.missing_keys, result.unexpected_keys


def full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, unsharded, on rank 0. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                   state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
