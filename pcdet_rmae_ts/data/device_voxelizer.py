"""Voxelise a whole batch on the training device with spconv's PointToVoxel (VOXELIZE_ON_DEVICE).

With ``DATA_CONFIG.VOXELIZE_ON_DEVICE: True`` the loader workers only read, augment and crop, and
this module voxelises the collated batch in one spconv call (why: voxelising in the workers costs
CPU time that could not feed the GPU; figures in ``benchmarks/README.md``). The samples are laid
side by side along x (sample ``b`` shifted by ``b`` grid widths), so one hash table serves the
batch, and the sample index is recovered from the x cell. Same voxels, coordinates and MeanVFE
inputs as per-sample voxelisation: ``MAX_NUMBER_OF_VOXELS`` caps **each sample** at its first
voxels in point order, as spconv does per sample on the CPU (on the GPU the choice of points
inside a voxel that holds more than ``MAX_POINTS_PER_VOXEL`` points, and the voxel order, may
vary run to run).
"""
from __future__ import annotations

import importlib
from typing import Dict, Sequence

import torch

from ..compat import import_spconv
from ..scatter import bin_sum, device_constant


class BatchVoxelizer:
    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], grid_size: Sequence[int],
                 num_point_features: int, max_points_per_voxel: int, max_voxels_per_sample: int):
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.grid_size = [int(g) for g in grid_size]
        self.num_point_features = int(num_point_features)
        self.max_points = int(max_points_per_voxel)
        self.max_voxels = int(max_voxels_per_sample)
        self._generators: Dict[tuple, object] = {}

    @classmethod
    def from_dataset(cls, dataset) -> "BatchVoxelizer":
        processor = dataset.data_processor
        return cls(processor.voxel_size, dataset.point_cloud_range, dataset.grid_size,
                   dataset.point_feature_encoder.num_point_features, processor.voxel_params["max_points"],
                   processor.voxel_params["max_voxels"])

    def _generator(self, batch_size: int, device: torch.device):
        key = (batch_size, str(device))
        if key not in self._generators:
            import_spconv()
            utils = importlib.import_module("spconv.pytorch.utils")
            r = self.point_cloud_range
            width = self.grid_size[0] * self.voxel_size[0]
            self._generators[key] = utils.PointToVoxel(
                vsize_xyz=self.voxel_size, coors_range_xyz=[r[0], r[1], r[2], r[0] + batch_size * width, r[4], r[5]],
                num_point_features=self.num_point_features, max_num_voxels=batch_size * self.max_voxels,
                max_num_points_per_voxel=self.max_points, device=device)
        return self._generators[key]

    def _first_voxels_per_sample(self, shifted: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N,) bool over the side-by-side points (N, C): True for the points of the first
        ``max_voxels`` voxels of their sample, in order of each voxel's first point (what per-sample
        PointToVoxel keeps). Cells computed as spconv does: floor((p - range_min) / voxel_size), float32."""
        r = self.point_cloud_range
        size = device_constant(tuple(self.voxel_size), shifted.device)
        low = device_constant(tuple(r[:3]), shifted.device)
        cell = torch.floor((shifted[:, :3] - low) / size).long()
        gx, gy, gz = batch_size * self.grid_size[0], self.grid_size[1], self.grid_size[2]
        limit = device_constant((float(gx), float(gy), float(gz)), shifted.device)
        inside = ((cell >= 0) & (cell < limit)).all(1)
        key = torch.where(inside, (cell[:, 2] * gy + cell[:, 1]) * gx + cell[:, 0], torch.full_like(cell[:, 0], -1))
        unique, inverse = torch.unique(key, return_inverse=True)
        first = torch.full_like(unique, key.shape[0]).scatter_reduce_(
            0, inverse, torch.arange(key.shape[0], device=key.device), "amin")
        # outside points share key -1: a group of their own (batch_size), never counted against a sample
        voxel_sample = torch.where(unique < 0, torch.full_like(unique, batch_size),
                                   torch.div(torch.remainder(unique, gx), self.grid_size[0], rounding_mode="floor"))
        order = torch.argsort(voxel_sample * (key.shape[0] + 1) + first)
        rank = torch.empty_like(first)
        rank[order] = rank_in_order(voxel_sample[order], batch_size + 1)
        return inside & (rank < self.max_voxels)[inverse]

    def __call__(self, points: torch.Tensor, batch_size: int) -> Dict[str, torch.Tensor]:
        """points (ΣN, 1 + C) [b, x, y, z, ...] on the device -> ``voxels`` (V, P, C),
        ``voxel_num_points`` (V,) int32, ``voxel_coords`` (V, 4) int32 [b, z, y, x]."""
        r = self.point_cloud_range
        width = self.grid_size[0] * self.voxel_size[0]
        batch = points[:, 0].long()
        feats = points[:, 1:].contiguous()
        # points on the upper x bound belong to no cell (grid upper bounds are exclusive); without
        # this they would land in the next sample's first column
        feats = feats[feats[:, 0] < r[0] + width]
        batch = batch[points[:, 1] < r[0] + width]
        shifted = feats.clone()
        shifted[:, 0] += batch.to(feats.dtype) * width
        generator = self._generator(batch_size, points.device)
        voxels, coords, counts = generator(shifted)
        if coords.shape[0] >= batch_size * self.max_voxels:
            # the batch-wide cap was reached, so a sample may have been cut short by an earlier one:
            # voxelise again from each sample's own first voxels (rare: costs a unique over the points)
            voxels, coords, counts = generator(shifted[self._first_voxels_per_sample(shifted, batch_size)])
        sample = torch.div(coords[:, 2], self.grid_size[0], rounding_mode="floor")
        # each sample keeps its first MAX_NUMBER_OF_VOXELS voxels (PointToVoxel lists voxels in order of
        # their first point, as per-sample voxelisation keeps them); exact also for a boundary point
        keep = rank_in_order(sample, batch_size) < self.max_voxels
        voxels, coords, counts, sample = voxels[keep], coords[keep], counts[keep], sample[keep]
        coords = torch.stack([sample, coords[:, 0], coords[:, 1], coords[:, 2] - sample * self.grid_size[0]], 1)
        # PointToVoxel stores the shifted x; give MeanVFE the sample's own coordinates back
        num = counts.clamp(min=1)
        valid = torch.arange(voxels.shape[1], device=voxels.device)[None, :] < num[:, None]
        voxels[:, :, 0] -= (sample.to(voxels.dtype) * width)[:, None] * valid
        return {"voxels": voxels, "voxel_coords": coords.int(), "voxel_num_points": counts.int()}


def rank_in_order(sample: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) long: how many earlier rows of (N,) ``sample`` have the same value (rows grouped by value
    or not; the rank follows row order within each value)."""
    sample = sample.long()
    order = torch.argsort(sample, stable=True)
    counts = bin_sum(sample, batch_size).long()
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(sample)
    rank[order] = torch.arange(sample.shape[0], device=sample.device) - starts[sample[order]]
    return rank
