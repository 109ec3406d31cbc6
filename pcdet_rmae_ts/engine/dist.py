"""torch.distributed helpers for torchrun (``--launcher pytorch``)."""
from __future__ import annotations

import inspect
import os
from typing import Tuple

import torch
import torch.distributed as dist


def init_dist_pytorch(backend: str = "nccl", tcp_port: int | None = None) -> Tuple[int, int, int]:
    """Initialise the process group from torchrun's environment; returns (world_size, rank, local_rank).

    LOCAL_RANK comes from the environment (torch >= 2.0 launchers pass no ``--local_rank``)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("--launcher pytorch needs torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). "
                           "Start with: torchrun --nproc_per_node=N tools/train_rmae_cmae_phase1.py ... "
                           "or scripts/dist_pretrain.sh N ...")
    if tcp_port is not None and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(tcp_port)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist.get_world_size(), dist.get_rank(), local_rank


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def wrap_ddp(model: torch.nn.Module, device: torch.device, local_rank: int, **options) -> torch.nn.Module:
    """DistributedDataParallel without the per-forward buffer broadcast.

    The BN running statistics (hundreds of small buffers, student and EMA teacher) are not used by
    train-mode forwards, so they need not be broadcast before every forward; the trainer gives every
    rank rank 0's buffers at each epoch end instead (``Trainer._sync_buffers``), before checkpoints
    are written (the broadcast's measured cost: benchmarks/README.md). ``options``: more
    DistributedDataParallel keywords (the DDP benchmark tries some)."""
    ddp = torch.nn.parallel.DistributedDataParallel
    # torch >= 2.13 renames the switch (and still syncs buffers once at construction, which is fine here)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[local_rank] if device.type == "cuda" else None, **{**no_sync, **options})
