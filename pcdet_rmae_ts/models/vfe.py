"""MeanVFE: voxel feature = mean of its points (parameter-free, as OpenPCDet's MeanVFE)."""
from __future__ import annotations

import torch
from torch import nn


class MeanVFE(nn.Module):
    def __init__(self, model_cfg=None, num_point_features: int = 4, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_point_features = num_point_features

    def get_output_feature_dim(self) -> int:
        return self.num_point_features

    def forward(self, batch_dict: dict) -> dict:
        """Reads ``voxels`` (V, P, C) and ``voxel_num_points`` (V,); writes ``voxel_features`` (V, C)."""
        voxels, counts = batch_dict["voxels"], batch_dict["voxel_num_points"]
        summed = voxels[:, :, :].sum(dim=1)
        normalizer = torch.clamp_min(counts.view(-1, 1).to(voxels.dtype), 1.0)
        batch_dict["voxel_features"] = (summed / normalizer).contiguous()
        return batch_dict
