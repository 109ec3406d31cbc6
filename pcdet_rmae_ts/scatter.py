"""Scatter and grouping helpers on the device, without host syncs: shared constants, per-bin sums
and random ranks within groups (used by masking, occupancy and the contrastive losses)."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch


@functools.lru_cache(maxsize=None)
def device_constant(values: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    """float32 tensor of ``values`` on ``device``, made once and shared (do not modify it):
    ``torch.tensor(list)`` onto a GPU is a blocking copy, a host sync on every call."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def bin_sum(index: torch.Tensor, size: int, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(size,) sum of ``weights`` (float32, (N,); counts when None) per bin of (N,) long ``index``;
    (size, K) for (N, K) weights.

    A scatter_add of ~1M rows into a few bins (samples, bands) serialises on the atomics of
    those few addresses; spreading each bin over 256 lanes, then summing the lanes, removes the
    contention without a host sync (torch.bincount syncs). Timings: benchmarks/README.md."""
    lanes = 256
    values = torch.ones_like(index, dtype=torch.float32) if weights is None else weights.float()
    lane = torch.arange(index.shape[0], device=index.device) % lanes
    out = values.new_zeros((size * lanes,) + tuple(values.shape[1:]))
    out.index_add_(0, index * lanes + lane, values)
    return out.view((size, lanes) + tuple(values.shape[1:])).sum(1)


def rank_within_group(group: torch.Tensor, num_groups: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) long random rank of each element among the elements of its group (0-based)."""
    n = group.shape[0]
    perm = torch.randperm(n, device=group.device, generator=generator)
    order = perm[torch.argsort(group[perm], stable=True)]
    counts = bin_sum(group, num_groups).long()
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.empty_like(group)
    ranks[order] = torch.arange(n, device=group.device) - starts[group[order]]
    return ranks


__all__ = ["device_constant", "bin_sum", "rank_within_group"]
