"""Exact site alignment between two sparse tensors at the same stride (vectorised)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def site_keys(indices: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """(N,) int64 linear key of (N, 1 + D) [b, ...] indices in a grid of ``spatial_shape``."""
    key = indices[:, 0].long()
    for dim, size in enumerate(spatial_shape):
        key = key * int(size) + indices[:, dim + 1].long()
    return key


def match_sites(query: torch.Tensor, reference: torch.Tensor,
                spatial_shape: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(iq, ir)`` with ``query[iq] == reference[ir]`` (same [b, ...] site).

    Each query row is matched to at most one reference row; sites present in only one
    tensor are left out. Sorting + binary search: O((N + M) log M), no loops.
    """
    ref_keys = site_keys(reference, spatial_shape)
    sorted_keys, order = torch.sort(ref_keys)
    q_keys = site_keys(query, spatial_shape)
    pos = torch.searchsorted(sorted_keys, q_keys).clamp(max=max(sorted_keys.numel() - 1, 0))
    if sorted_keys.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=query.device)
        return empty, empty
    hit = sorted_keys[pos] == q_keys
    return torch.nonzero(hit, as_tuple=True)[0], order[pos[hit]]
