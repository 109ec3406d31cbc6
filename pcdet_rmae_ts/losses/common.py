"""Shared pieces of the Phase 2 teacher-student losses: scale lookup, per-scene averaging,
InfoNCE rows and a DDP row gather (site bookkeeping lives in ``sparse_align``)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

SCALE_NAMES = ("x_conv1", "x_conv2", "x_conv3", "x_conv4", "bev")


def scale_tensor(outputs: dict, scale: str):
    """The sparse tensor of ``scale`` in an encoder output dict ('bev' = ``encoded_spconv_tensor``)."""
    if scale == "bev":
        return outputs["encoded_spconv_tensor"]
    return outputs["multi_scale_3d_features"][scale]


def per_scene_mean(values: torch.Tensor, batch: torch.Tensor, batch_size: int,
                   weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted mean of (M,) ``values`` within each scene, then the plain mean over the
    scenes that have any weight (so a dense scene does not outweigh a sparse one)."""
    weights = torch.ones_like(values) if weights is None else weights
    num = values.new_zeros(batch_size).index_add_(0, batch, weights * values)
    den = values.new_zeros(batch_size).index_add_(0, batch, weights)
    weighted = den > 0
    valid = weighted.to(values.dtype)  # a 0/1 weight, not a boolean index: no host sync, forward or backward
    scene = num / torch.where(weighted, den, torch.ones_like(den))
    return (scene * valid).sum() / valid.sum()


def info_nce_rows(query: torch.Tensor, keys: torch.Tensor, tau: float, positives: torch.Tensor,
                  exclude: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE per query row with cosine similarity / ``tau``.

    query: (M, D); keys: (K, D); positives: (M,) long column of each row's positive;
    exclude: optional (M, K) bool of negatives to drop (never the positive).
    Returns (M,) losses and the (M, K) logits.
    """
    logits = F.normalize(query, dim=1) @ F.normalize(keys, dim=1).t() / tau
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, positives, reduction="none"), logits


def gather_rows_across_ranks(rows: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All-gather (n_rank, D) rows of every process (sizes may differ; no gradient).

    Returns the (sum n, D) rows in rank order and this rank's offset into them. Without an
    initialised process group (or with one process) it returns ``rows`` and 0.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = rows.new_zeros((max(sizes), rows.shape[1]))
    padded[:rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    parts = [g[:n] for g, n in zip(gathered, sizes)]
    return torch.cat(parts), sum(sizes[:rank])
