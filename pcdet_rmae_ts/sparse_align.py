"""Sparse-site bookkeeping by linear keys (vectorised): exact alignment between two sparse
tensors at the same stride, and coalescing of rows that share a site."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def site_keys(indices: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """(N,) int64 linear key of (N, 1 + D) [b, ...] indices in a grid of ``spatial_shape``."""
    key = indices[:, 0].long()
    for dim, size in enumerate(spatial_shape):
        key = key * int(size) + indices[:, dim + 1].long()
    return key


def coalesce_sites(indices: torch.Tensor, features: torch.Tensor,
                   spatial_shape: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum the feature rows that share a site.

    indices: (N, 1 + D) [b, ...]; features: (N, C). Returns (U,) int64 sorted site keys and
    (U, C) summed features. x_conv4 stacks conv4/conv5/conv6 rows at stride-8 coordinates,
    so one site can hold several rows; summing is what the BEV collapse does with them too.
    """
    keys = site_keys(indices, spatial_shape)
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    summed = features.new_zeros((unique.shape[0], features.shape[1])).index_add_(0, inverse, features)
    return unique, summed


def keys_to_indices(keys: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`site_keys`: (U,) int64 keys -> (U, 1 + D) int32 [b, ...] indices."""
    columns = []
    rest = keys
    for size in reversed([int(s) for s in spatial_shape]):
        columns.append(torch.remainder(rest, size))
        rest = torch.div(rest, size, rounding_mode="floor")
    columns.append(rest)
    return torch.stack(columns[::-1], 1).int()


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
    rows = torch.nonzero(found, as_tuple=True)[0]  # the one host sync: how many sites match
    return rows, order[pos[rows]]
