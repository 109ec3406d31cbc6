"""Coarse occupancy reconstruction: targets, decoder and loss.

The student predicts, for every cell of a coarse grid (stride ``s`` voxels in x, y
and z), whether the **complete** scene has a voxel there, including cells inside
masked sectors that it never saw. Empty cells are real negatives. The decoder
works on a dense bird's-eye view with z folded into channels, so its memory is
bounded by (grid / s^3) x a few channels, whatever the number of points.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import dataclass_from_section
from .scatter import device_constant

# Stride 8 decodes from the encoder's 2D BEV output (so conv_out/shared_conv, which the
# detection head uses, are pretrained too); stride 4 from the 3D x_conv3 sites.
SOURCE_BY_STRIDE = {8: "encoded_spconv_tensor", 4: "x_conv3"}


def _optional_float(value) -> Optional[float]:
    return None if value is None else float(value)


@dataclass(frozen=True)
class OccupancyConfig:
    """Decoder and loss hyper-parameters (``OCCUPANCY_DECODER`` section; YAML keys are the field
    names in capitals)."""

    stride: int = 8
    reduced_channels: int = 16
    hidden_channels: int = 64
    dilations: tuple = field(default=(1, 2, 4, 1), metadata={"convert": lambda v: tuple(int(d) for d in v)})
    pos_weight: Optional[float] = field(default=None, metadata={"convert": _optional_float})
    focal_gamma: float = 0.0
    restrict_to_range: bool = True

    def __post_init__(self):
        if self.stride not in SOURCE_BY_STRIDE:
            raise ValueError(f"OCCUPANCY_DECODER.STRIDE must be one of {sorted(SOURCE_BY_STRIDE)}, "
                             f"got {self.stride}")
        if self.pos_weight is not None and self.pos_weight <= 0:
            raise ValueError(f"OCCUPANCY_DECODER.POS_WEIGHT must be > 0 or null, got {self.pos_weight}")
        if self.focal_gamma < 0:
            raise ValueError(f"OCCUPANCY_DECODER.FOCAL_GAMMA must be >= 0, got {self.focal_gamma}")


def occupancy_config_from_cfg(section) -> OccupancyConfig:
    """``MODEL.BACKBONE_3D.OCCUPANCY_DECODER`` (None: every default); unknown keys are a ConfigError."""
    return dataclass_from_section(OccupancyConfig, section, key_path="MODEL.BACKBONE_3D.OCCUPANCY_DECODER")


def coarse_shape(sparse_shape: Sequence[int], stride: int) -> Tuple[int, int, int]:
    """[Z, Y, X] of the coarse grid; equals the spatial shape of the encoder's stride-s stage."""
    return tuple(-(-int(n) // stride) for n in sparse_shape)


def occupancy_targets(coords: torch.Tensor, batch_size: int, sparse_shape: Sequence[int],
                      stride: int) -> torch.Tensor:
    """(B, Z', Y', X') float {0, 1}: cell occupied iff a voxel of (N, 4) [b, z, y, x] coords falls in it."""
    shape = coarse_shape(sparse_shape, stride)
    cells = coords.long()
    flat = ((cells[:, 0] * shape[0] + cells[:, 1] // stride) * shape[1] + cells[:, 2] // stride) * shape[2] \
        + cells[:, 3] // stride
    target = torch.zeros(batch_size * shape[0] * shape[1] * shape[2], device=coords.device)
    target.index_fill_(0, flat, 1.0)  # `target[flat] = 1.0` would copy the value to the GPU: a host sync
    return target.view(batch_size, *shape)


def cell_centres(n: int, stride: int, voxel: float, origin: float,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """(n,) float32 metric centres of the coarse cells along one axis (``voxel`` size, range start ``origin``)."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * stride * voxel + origin


def cells_in_range(shape: Sequence[int], stride: int, voxel_size: Sequence[float],
                   point_cloud_range: Sequence[float], device: torch.device) -> torch.Tensor:
    """(Z', Y', X') bool: cells whose centre lies inside the point-cloud range (the coarse grid
    overhangs the range where a dimension is not a multiple of the stride, and in z by one layer)."""
    axes = []
    for dim, n in enumerate(reversed(shape)):  # x, y, z
        centre = cell_centres(n, stride, voxel_size[dim], point_cloud_range[dim], device)
        axes.append(centre < point_cloud_range[dim + 3])
    ax_x, ax_y, ax_z = axes
    return ax_z[:, None, None] & ax_y[None, :, None] & ax_x[None, None, :]


def masked_sector_cells(mask, batch_size: int, shape_yx: Sequence[int], stride: int,
                        voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> torch.Tensor:
    """(B, Y', X') bool: coarse BEV cells whose metric centre lies in one of the sample's selected
    sectors (``mask`` is a ``masking.MaskResult``); the masked region of the occupancy metrics."""
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    device = mask.sector_offset.device
    ys = cell_centres(ny, stride, voxel_size[1], point_cloud_range[1], device)
    xs = cell_centres(nx, stride, voxel_size[0], point_cloud_range[0], device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    xy = torch.stack([grid_x.flatten(), grid_y.flatten()], 1).repeat(batch_size, 1)
    batch = torch.arange(batch_size, device=device).repeat_interleave(ny * nx)
    return mask.in_masked_sector(xy, batch).view(batch_size, ny, nx)


class OccupancyDecoder(nn.Module):
    """Dense BEV decoder: sparse stride-s features -> (B, Z', Y', X') occupancy logits.

    The sparse features (2D BEV sites, or 3D sites whose z is folded into channels) are
    reduced to ``reduced_channels`` per site and densified; dilated 2D convs spread
    context into empty (masked) cells; the last conv predicts one logit per z cell.
    """

    def __init__(self, in_channels: int, num_z: int, source_z: int = 1, reduced_channels: int = 16,
                 hidden_channels: int = 64, dilations: Sequence[int] = (1, 2, 4, 1)):
        super().__init__()
        self.num_z = num_z
        self.reduce = nn.Sequential(nn.Linear(in_channels, reduced_channels, bias=False),
                                    nn.LayerNorm(reduced_channels), nn.ReLU())
        layers = []
        channels = reduced_channels * source_z
        for dilation in dilations:
            layers += [nn.Conv2d(channels, hidden_channels, 3, padding=dilation, dilation=dilation, bias=False),
                       nn.BatchNorm2d(hidden_channels), nn.ReLU()]
            channels = hidden_channels
        layers.append(nn.Conv2d(channels, num_z, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, sparse_tensor, batch_size: int) -> torch.Tensor:
        indices = sparse_tensor.indices.long()
        if indices.shape[1] == 3:  # 2D BEV tensor [b, y, x]: a single z layer
            indices = torch.cat([indices[:, :1], torch.zeros_like(indices[:, :1]), indices[:, 1:]], 1)
            z, (y, x) = 1, sparse_tensor.spatial_shape
        else:
            z, y, x = sparse_tensor.spatial_shape
        features = self.reduce(sparse_tensor.features)
        channels = features.shape[1]
        dense = features.new_zeros(batch_size * z * y * x, channels)
        flat = ((indices[:, 0] * z + indices[:, 1]) * y + indices[:, 2]) * x + indices[:, 3]
        dense.index_add_(0, flat, features)  # x_conv4 may list a site twice (conv4/5/6 rows)
        dense = dense.view(batch_size, z, y, x, channels).permute(0, 4, 1, 2, 3).reshape(
            batch_size, channels * z, y, x)
        return self.head(dense)


def per_sample_mean(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) mean of each sample's ``values`` over its ``region`` cells (0 for a sample without any)."""
    weight = region.expand_as(values).float()
    return (values * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1.0)


def occupancy_loss(logits: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None,
                   pos_weight: Optional[float] = None, focal_gamma: float = 0.0) -> torch.Tensor:
    """BCE-with-logits averaged over each sample's valid cells, then over the batch."""
    weight = None if pos_weight is None else device_constant((float(pos_weight),), logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    if focal_gamma > 0:
        p_true = torch.where(target > 0.5, torch.sigmoid(logits), 1 - torch.sigmoid(logits))
        loss = loss * (1 - p_true).pow(focal_gamma)
    if valid is None:
        return loss.flatten(1).mean(1).mean()
    return per_sample_mean(loss, valid).mean()


@torch.no_grad()
def occupancy_metrics(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                      prefix: str = "occ") -> Dict[str, torch.Tensor]:
    """Accuracy, precision, recall and positive ratio over the cells where ``region`` is True
    (masked sums rather than boolean indexing, so no host sync on the training step)."""
    weight = region.expand_as(target).float()
    pred = (logits > 0).float()
    truth = (target > 0.5).float()
    tp = (pred * truth * weight).sum()
    count = weight.sum().clamp(min=1.0)
    return {
        f"{prefix}_acc": ((pred == truth).float() * weight).sum() / count,
        f"{prefix}_precision": tp / (pred * weight).sum().clamp(min=1.0),
        f"{prefix}_recall": tp / (truth * weight).sum().clamp(min=1.0),
        f"{prefix}_pos_ratio": (truth * weight).sum() / count,
    }
