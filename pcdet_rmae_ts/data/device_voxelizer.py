"""Voxelise a whole batch on the training device with spconv's PointToVoxel (VOXELIZE_ON_DEVICE).

At the user's grid, voxelising in the loader workers costs ~50-80 ms per frame of CPU time and
could not feed an H100 (4 workers: ~25 frames/s against 40-100 frames/s of training). With
``DATA_CONFIG.VOXELIZE_ON_DEVICE: True`` the workers only read, augment and crop, and this module
voxelises the collated batch in one spconv call: the samples are laid side by side along x (sample
``b`` shifted by ``b`` grid widths), so one hash table serves the batch, and the sample index is
recovered from the x cell. Same voxels, coordinates and MeanVFE inputs as per-sample voxelisation
(``MAX_NUMBER_OF_VOXELS`` caps each sample; on the GPU the choice of points inside a voxel that
holds more than ``MAX_POINTS_PER_VOXEL`` points, and the voxel order, may vary run to run).
"""
from __future__ import annotations

import importlib
from typing import Dict, Sequence

import torch

from ..compat import import_spconv


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
        voxels, coords, counts = self._generator(batch_size, points.device)(shifted)
        sample = torch.div(coords[:, 2], self.grid_size[0], rounding_mode="floor")
        coords = torch.stack([sample, coords[:, 0], coords[:, 1], coords[:, 2] - sample * self.grid_size[0]], 1)
        # PointToVoxel stores the shifted x; give MeanVFE the sample's own coordinates back
        num = counts.clamp(min=1)
        valid = torch.arange(voxels.shape[1], device=voxels.device)[None, :] < num[:, None]
        voxels[:, :, 0] -= (sample.to(voxels.dtype) * width)[:, None] * valid
        return {"voxels": voxels, "voxel_coords": coords.int(), "voxel_num_points": counts.int()}

