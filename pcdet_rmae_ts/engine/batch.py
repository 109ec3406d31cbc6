"""Move a collated numpy batch to the device as tensors (OpenPCDet's load_data_to_gpu, device-agnostic)."""
from __future__ import annotations

import numpy as np
import torch

KEEP_AS_IS = ("frame_id", "metadata", "calib", "batch_size")
# The pretraining model reads voxels only: unless they are voxelised on the device, the raw points
# of a batch (~44 MB for 8 dense frames) stay on the host.
HOST_ONLY = ("points",)
INTEGER_KEYS = ("voxel_coords", "voxel_num_points")


def batch_to_device(batch: dict, device: torch.device, keep_on_host: tuple = HOST_ONLY) -> dict:
    out = {}
    for key, value in batch.items():
        if key in KEEP_AS_IS or key in keep_on_host or not isinstance(value, (np.ndarray, torch.Tensor)):
            out[key] = value
            continue
        tensor = torch.as_tensor(value)
        if key in INTEGER_KEYS:
            tensor = tensor.to(torch.int32)
        elif tensor.is_floating_point():
            tensor = tensor.float()
        out[key] = tensor.to(device, non_blocking=True)
    return out


def model_batch(batch: dict, device: torch.device, voxelizer=None) -> dict:
    """The collated batch on ``device`` as the model reads it: with a ``BatchVoxelizer``
    (``DATA_CONFIG.VOXELIZE_ON_DEVICE``) the points go to the device and are voxelised there."""
    if voxelizer is None:
        return batch_to_device(batch, device)
    out = batch_to_device(batch, device, keep_on_host=())
    out.update(voxelizer(out["points"], out["batch_size"]))
    return out
