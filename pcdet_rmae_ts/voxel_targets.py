"""VoxelNeXt's training targets for one head, for all boxes at once (a leaf module): OpenPCDet's
``VoxelNeXtHead.assign_target_of_single_head`` without its per-box Python loop and host syncs.

Same values as the stock loop, meant bit for bit (same float32 operations per element, argmin's
first-minimum rule, order-free max of the Gaussians, the stock rounding of the Gaussian's divisor):
tests/test_voxel_targets.py checks it on the CPU, tests/test_integration_pcdet.py on CUDA, where some
heatmap values still differ from the stock loop's by up to 1.2e-7 (cause open; benchmarks/README.md).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

BOX_CHUNK = 64  # boxes per batched distance block: 64 x 31k BEV voxels x 2 coordinates ~ 16 MB in float32


def _gaussian_scale(radius: torch.Tensor, gaussian_ratio: float, device: torch.device) -> torch.Tensor:
    """Per box, what multiplies (CUDA) or divides (CPU) ``-d`` in exp(-d / (2 sigma^2)), sigma = (2 r ratio + 1) / 6.

    The stock code computes ``2 * sigma * sigma`` in Python (double) and divides a tensor by it as a scalar:
    a float32 division on the CPU, a multiplication by the float32 reciprocal on CUDA (PyTorch's kernel for
    a CPU-scalar divisor). So the divisor is computed on the host in double (a CUDA double division by 6
    would also become a reciprocal multiplication) and applied the way the stock device applies it."""
    sigma = (2 * (radius.cpu().double() * gaussian_ratio) + 1) / 6
    divisor = (2 * sigma * sigma).float()
    return torch.reciprocal(divisor).to(device) if device.type == "cuda" else divisor


def _gaussian(distances: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """exp(-d / (2 sigma^2)) per column (box) of ``distances``, with ``scale`` from :func:`_gaussian_scale`."""
    if distances.is_cuda:
        return torch.exp(-distances * scale)
    return torch.exp(-distances / scale)


def assign_single_head(gt_boxes: torch.Tensor, radius: torch.Tensor, num_classes: int, num_voxels: int,
                       spatial_indices: torch.Tensor, spatial_shape: Sequence[int],
                       point_cloud_range: torch.Tensor, voxel_size: torch.Tensor, feature_map_stride: int,
                       num_max_objs: int = 500, gaussian_type: Sequence[str] = ("nearst", "gt_center"),
                       gaussian_ratio: float = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmap ``(num_classes, num_voxels)``, regression targets ``(num_max_objs, C)``, voxel index and
    mask ``(num_max_objs,)`` of one sample's boxes for one head, as VoxelNeXtHead defines them.

    ``gt_boxes`` (N, 8+) holds x, y, z, dx, dy, dz, heading[, extras], head-local class id (1-based)
    last; ``radius`` (N,) the clamped integer Gaussian radius per box; ``spatial_indices`` (V, 2) the
    sample's BEV voxel coordinates (x, y) at the head's stride. Only the first ``num_max_objs`` boxes
    count; a box with a non-positive size or a centre cell outside ``[0, spatial_shape]`` gets no target.
    """
    heatmap = gt_boxes.new_zeros(num_classes, num_voxels)
    ret_boxes = gt_boxes.new_zeros((num_max_objs, gt_boxes.shape[-1]))
    inds = gt_boxes.new_zeros(num_max_objs).long()
    mask = gt_boxes.new_zeros(num_max_objs).long()
    boxes = gt_boxes[:num_max_objs]
    if boxes.shape[0] == 0:
        return heatmap, ret_boxes, inds, mask

    x, y, z = boxes[:, 0], boxes[:, 1], boxes[:, 2]
    coord_x = torch.clamp((x - point_cloud_range[0]) / voxel_size[0] / feature_map_stride,
                          min=0, max=spatial_shape[1] - 0.5)
    coord_y = torch.clamp((y - point_cloud_range[1]) / voxel_size[1] / feature_map_stride,
                          min=0, max=spatial_shape[0] - 0.5)
    center = torch.stack((coord_x, coord_y), dim=-1)
    center_int = center.int()
    dx = boxes[:, 3] / voxel_size[0] / feature_map_stride
    dy = boxes[:, 4] / voxel_size[1] / feature_map_stride
    valid = ((dx > 0) & (dy > 0) & (center_int[:, 0] >= 0) & (center_int[:, 0] <= spatial_shape[1])
             & (center_int[:, 1] >= 0) & (center_int[:, 1] <= spatial_shape[0]))
    keep = valid.nonzero()[:, 0]  # host sync: how many boxes get targets
    if keep.numel() == 0:
        return heatmap, ret_boxes, inds, mask

    class_id = (boxes[keep, -1] - 1).long()
    scale = _gaussian_scale(radius[:num_max_objs][keep], gaussian_ratio, gt_boxes.device)  # host copy of radii
    nearest = torch.empty_like(keep)
    for start in range(0, keep.numel(), BOX_CHUNK):  # chunks of boxes, not single boxes
        part = slice(start, start + BOX_CHUNK)
        to_center = ((spatial_indices[:, None, :] - center[keep[part]][None]) ** 2).sum(-1)  # (V, chunk)
        nearest[part] = to_center.argmin(dim=0)
        gaussians = []
        if "gt_center" in gaussian_type:
            gaussians.append(_gaussian(to_center, scale[part]))
        if "nearst" in gaussian_type:
            to_nearest = ((spatial_indices[:, None, :] - spatial_indices[nearest[part]][None]) ** 2).sum(-1)
            gaussians.append(_gaussian(to_nearest, scale[part]))
        rows = class_id[part][:, None].expand(-1, heatmap.shape[1])
        for gaussian in gaussians:  # per class, the maximum over its boxes (the stock in-place max)
            heatmap.scatter_reduce_(0, rows, gaussian.t(), "amax", include_self=True)

    inds[keep] = nearest
    mask[keep] = 1
    ret_boxes[keep, 0:2] = center[keep] - spatial_indices[nearest][:, :2]
    ret_boxes[keep, 2] = z[keep]
    ret_boxes[keep, 3:6] = boxes[keep, 3:6].log()
    ret_boxes[keep, 6] = torch.cos(boxes[keep, 6])
    ret_boxes[keep, 7] = torch.sin(boxes[keep, 6])
    if boxes.shape[1] > 8:
        ret_boxes[keep, 8:] = boxes[keep, 7:-1]
    return heatmap, ret_boxes, inds, mask


__all__ = ["assign_single_head", "BOX_CHUNK"]
