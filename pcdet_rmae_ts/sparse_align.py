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


def lookup_keys(query: torch.Tensor, sorted_reference: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For (Q,) keys in a sorted (R,) key array: (Q,) bool found and (Q,) long position (valid where found)."""
    if sorted_reference.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool), torch.zeros_like(query, dtype=torch.long)
    pos = torch.searchsorted(sorted_reference, query).clamp(max=sorted_reference.numel() - 1)
    return sorted_reference[pos] == query, pos


def match_sites(query: torch.Tensor, reference: torch.Tensor,
                spatial_shape: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(iq, ir)`` with ``query[iq] == reference[ir]`` (same [b, ...] site).

    Each query row is matched to at most one reference row; sites present in only one
    tensor are left out. Sorting + binary search: O((N + M) log M), no loops.
    """
    sorted_keys, order = torch.sort(site_keys(reference, spatial_shape))
    found, pos = lookup_keys(site_keys(query, spatial_shape), sorted_keys)
    return torch.nonzero(found, as_tuple=True)[0], order[pos[found]]
