"""VoxelNeXt-compatible sparse encoder.

A drop-in for OpenPCDet's ``VoxelResBackBone8xVoxelNeXt`` (Chen et al., "VoxelNeXt:
Fully Sparse VoxelNet for 3D Object Detection and Tracking", CVPR 2023): the same
submodule names, parameter shapes and forward semantics, so checkpoints load both
ways and ``VoxelNeXtHead`` can consume its output. Written from the interface
description in ``docs/openpcdet-contract.md`` (section 3.1).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from ..compat import apply_spconv_cpu_fixes, import_spconv
from ..sparse_align import coalesce_sites, keys_to_indices

spconv = import_spconv()
apply_spconv_cpu_fixes()

MULTI_SCALE_STRIDES = {"x_conv1": 1, "x_conv2": 2, "x_conv3": 4, "x_conv4": 8}
ENCODER_MODULES = ("conv_input", "conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv_out", "shared_conv")


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two biased submanifold 3x3x3 convs (VoxelNeXt's block)."""

    def __init__(self, channels: int, indice_key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=True, indice_key=indice_key)
        self.bn1 = _norm(channels)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=True, indice_key=indice_key)
        self.bn2 = _norm(channels)

    def forward(self, x):
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.relu(self.bn2(out.features) + x.features))
        return out


def _down_stage(c_in: int, c_out: int, kernel: int, stage: int) -> spconv.SparseSequential:
    """Strided conv (stride 2, no bias) + BN + ReLU, then two residual blocks."""
    down = spconv.SparseSequential(
        spconv.SparseConv3d(c_in, c_out, kernel, stride=2, padding=kernel // 2, bias=False,
                            indice_key=f"spconv{stage}"),
        _norm(c_out),
        nn.ReLU(),
    )
    return spconv.SparseSequential(
        down,
        SparseBasicBlock(c_out, indice_key=f"res{stage}"),
        SparseBasicBlock(c_out, indice_key=f"res{stage}"),
    )


def collapse_to_bev(x) -> "spconv.SparseConvTensor":
    """Drop z and sum the features of rows that land on the same (b, y, x) cell (rows sorted by
    (b, y, x), as VoxelNeXt's ``torch.unique(dim=0)`` does)."""
    shape = list(x.spatial_shape[1:])
    bev_indices = torch.cat((x.indices[:, :1], x.indices[:, 2:]), 1)  # [b, y, x]; a list index would copy to the GPU
    keys, features = coalesce_sites(bev_indices, x.features, shape)
    return spconv.SparseConvTensor(features, keys_to_indices(keys, shape), shape, x.batch_size)


class VoxelNeXtEncoder(nn.Module):
    """Sparse 3D encoder with VoxelNeXt's submodules and outputs.

    Args:
        input_channels: voxel feature channels C.
        grid_size: (3,) voxel grid in x, y, z order.
        channels: c0..c4 (``CHANNELS``); c3 must equal c4.
        out_channel: channels of the 2D BEV output (``OUT_CHANNEL``).
        kernel_sizes: kernels of the strided convs of conv2..conv5 (conv6 reuses the last).
    """

    def __init__(self, input_channels: int, grid_size: Sequence[int],
                 channels: Sequence[int] = (16, 32, 64, 128, 128), out_channel: int = 128,
                 kernel_sizes: Sequence[int] = (3, 3, 3, 3)):
        super().__init__()
        channels = [int(c) for c in channels]
        kernel_sizes = [int(k) for k in kernel_sizes]
        self.init_kwargs = dict(input_channels=int(input_channels), grid_size=[int(g) for g in grid_size],
                                channels=channels, out_channel=int(out_channel), kernel_sizes=kernel_sizes)
        if len(channels) != 5 or channels[3] != channels[4]:
            raise ValueError(f"CHANNELS must have 5 entries with c3 == c4 (conv4/5/6 are concatenated), "
                             f"got {channels}")
        if len(kernel_sizes) != 4 or any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"SPCONV_KERNEL_SIZES must be 4 odd kernels, got {kernel_sizes}")
        self.sparse_shape = [int(grid_size[2]) + 1, int(grid_size[1]), int(grid_size[0])]
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, channels[0], 3, padding=1, bias=False, indice_key="subm1"),
            _norm(channels[0]),
            nn.ReLU(),
        )
        self.conv1 = spconv.SparseSequential(
            SparseBasicBlock(channels[0], indice_key="res1"),
            SparseBasicBlock(channels[0], indice_key="res1"),
        )
        self.conv2 = _down_stage(channels[0], channels[1], kernel_sizes[0], 2)
        self.conv3 = _down_stage(channels[1], channels[2], kernel_sizes[1], 3)
        self.conv4 = _down_stage(channels[2], channels[3], kernel_sizes[2], 4)
        self.conv5 = _down_stage(channels[3], channels[4], kernel_sizes[3], 5)
        self.conv6 = _down_stage(channels[4], channels[4], kernel_sizes[3], 6)
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv2d(channels[3], out_channel, 3, stride=1, padding=1, bias=False,
                                indice_key="spconv_down2"),
            _norm(out_channel),
            nn.ReLU(),
        )
        self.shared_conv = spconv.SparseSequential(
            spconv.SubMConv2d(out_channel, out_channel, 3, stride=1, padding=1, bias=True),
            nn.BatchNorm1d(out_channel),
            nn.ReLU(True),
        )
        self.num_point_features = out_channel
        self.backbone_channels = {"x_conv1": channels[0], "x_conv2": channels[1],
                                  "x_conv3": channels[2], "x_conv4": channels[3]}

    def forward(self, batch_dict: dict) -> dict:
        """OpenPCDet interface: reads ``voxel_features``, ``voxel_coords``, ``batch_size``."""
        batch_dict.update(self.encode(batch_dict["voxel_features"], batch_dict["voxel_coords"],
                                      int(batch_dict["batch_size"])))
        return batch_dict

    def encode(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor,
               batch_size: int) -> Dict[str, object]:
        """Encode (N, C) features at (N, 4) [b, z, y, x] coords.

        Returns the VoxelNeXt batch_dict entries: ``encoded_spconv_tensor`` (2D, stride 8),
        ``encoded_spconv_tensor_stride``, ``multi_scale_3d_features`` (x_conv1..x_conv4, 3D;
        x_conv4 holds conv4, conv5 and conv6 rows at stride-8 coordinates) and
        ``multi_scale_3d_strides``.
        """
        x = spconv.SparseConvTensor(voxel_features, voxel_coords.int(), self.sparse_shape, batch_size)
        x_conv1 = self.conv1(self.conv_input(x))
        x_conv2 = self.conv2(x_conv1)
        x_conv3 = self.conv3(x_conv2)
        x_conv4 = self.conv4(x_conv3)
        x_conv5 = self.conv5(x_conv4)
        x_conv6 = self.conv6(x_conv5)
        x_conv4 = self._merge_deep_stages(x_conv4, x_conv5, x_conv6)
        out = self.shared_conv(self.conv_out(collapse_to_bev(x_conv4)))
        return {
            "encoded_spconv_tensor": out,
            "encoded_spconv_tensor_stride": 8,
            "multi_scale_3d_features": {"x_conv1": x_conv1, "x_conv2": x_conv2,
                                        "x_conv3": x_conv3, "x_conv4": x_conv4},
            "multi_scale_3d_strides": dict(MULTI_SCALE_STRIDES),
        }

    @staticmethod
    def _merge_deep_stages(x_conv4, x_conv5, x_conv6):
        """Bring conv5/conv6 sites to stride-8 coordinates and stack them under conv4's rows."""
        def scaled(indices, factor):  # [b, z, y, x] -> [b, f z, f y, f x], without a host-to-device copy
            return torch.cat((indices[:, :1], indices[:, 1:] * factor), 1)

        indices = torch.cat([x_conv4.indices, scaled(x_conv5.indices, 2), scaled(x_conv6.indices, 4)])
        merged = x_conv4.replace_feature(torch.cat([x_conv4.features, x_conv5.features, x_conv6.features]))
        merged.indices = indices
        return merged

