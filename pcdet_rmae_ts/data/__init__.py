"""Pretraining data pipeline: point-cloud readers, point-only augmentation, voxelisation,
an unlabeled dataset with OpenPCDet's batch layout, and a synthetic construction-site LiDAR set.

Importing this package pulls in numpy and torch, never spconv (voxelisation imports it lazily).
"""
from __future__ import annotations

from .dataset import PretrainDataset
from .loader import build_dataloader
from .readers import BadSampleError, read_points

__all__ = ["BadSampleError", "PretrainDataset", "build_dataloader", "read_points"]
