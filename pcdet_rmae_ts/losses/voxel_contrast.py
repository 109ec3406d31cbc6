"""Voxel-level contrastive loss of CMAE-3D (Zhang et al., 2024): at BEV sites present in
both views, the student's projected + predicted feature must pick the teacher's projected
feature of the same site among the other sampled sites of the batch (InfoNCE).

Takes tensors only: the student's and the teacher's BEV outputs, each with its projected rows
(``projected_bev``, made by the backbone's projectors); the loss owns its predictor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from ..heads import projection_head
from ..scatter import rank_within_group
from ..sparse_align import match_sites
from .common import info_nce_rows, per_scene_mean


@dataclass(frozen=True)
class VoxelContrastConfig:
    """``BACKBONE_3D.VOXEL_CONTRAST``; ``NEG_RADIUS`` in BEV cells (stride 8), 0 keeps every negative."""

    enabled: bool = False
    weight: float = 1.0
    num_samples: int = 256
    tau: float = 0.2
    neg_radius: float = 0.0


def sample_per_scene(batch: torch.Tensor, num_samples: int, batch_size: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(K,) long rows of ``batch`` (M,) kept: a uniform random subset of at most
    ``num_samples`` rows per scene, in the original row order."""
    rank = rank_within_group(batch, batch_size, generator)
    return torch.nonzero(rank < num_samples, as_tuple=True)[0]


def near_negatives(batch: torch.Tensor, yx: torch.Tensor, radius: float) -> torch.Tensor:
    """(K, K) bool: pairs of different rows of one scene whose sites are within ``radius`` cells
    (Euclidean); these near-duplicates are dropped as negatives ("negative mismatch")."""
    same = batch[:, None] == batch[None, :]
    near = torch.cdist(yx.float(), yx.float()) <= radius
    eye = torch.eye(batch.shape[0], dtype=torch.bool, device=batch.device)
    return same & near & ~eye


class VoxelContrastLoss(nn.Module):
    """Teacher-student loss ``voxel_contrast``.

    Inputs: ``student`` / ``teacher`` encoder output dicts whose ``encoded_spconv_tensor`` is the
    (M, C) BEV tensor and whose ``projected_bev`` is its (M, D) projected rows (teacher's: no gradient).

    Args:
        feature_dim: projector output dim (``FEATURE_DIM``); the predictor maps it to itself.
        num_samples: most shared sites sampled per scene.
        tau: InfoNCE temperature (> 0).
        neg_radius: negatives of the same scene within this many BEV cells are excluded (>= 0).
    """

    def __init__(self, feature_dim: int, num_samples: int = 256, tau: float = 0.2, neg_radius: float = 0.0):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"VOXEL_CONTRAST.NUM_SAMPLES must be >= 1, got {num_samples}")
        if not tau > 0:
            raise ValueError(f"VOXEL_CONTRAST.TAU must be > 0, got {tau}")
        if not neg_radius >= 0:
            raise ValueError(f"VOXEL_CONTRAST.NEG_RADIUS must be >= 0, got {neg_radius}")
        self.num_samples, self.tau, self.neg_radius = int(num_samples), float(tau), float(neg_radius)
        self.predictor = projection_head(int(feature_dim), int(feature_dim))

    def shared_sites(self, student: dict, teacher: dict, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rows (i_s, i_t) of the student / teacher BEV tensors at sampled sites of both views."""
        s_bev, t_bev = student["encoded_spconv_tensor"], teacher["encoded_spconv_tensor"]
        i_s, i_t = match_sites(s_bev.indices, t_bev.indices, t_bev.spatial_shape)
        if i_s.numel() < 2:
            raise RuntimeError(f"VOXEL_CONTRAST: {i_s.numel()} BEV site(s) are shared by the student and the "
                               f"teacher in this batch; InfoNCE needs at least 2 (a positive and a negative). "
                               f"Is the masking ratio near 1 or are the scenes empty?")
        keep = sample_per_scene(t_bev.indices[i_t, 0].long(), self.num_samples, batch_size)
        return i_s[keep], i_t[keep]

    uses_projection = True  # needs ``student['projected_bev']``

    def forward(self, student: dict, teacher: dict, batch_size: int, **unused) -> Tuple[torch.Tensor, dict]:
        i_s, i_t = self.shared_sites(student, teacher, batch_size)
        t_bev = teacher["encoded_spconv_tensor"]
        batch = t_bev.indices[i_t, 0].long()
        query = self.predictor(student["projected_bev"][i_s].float())
        keys = teacher["projected_bev"][i_t].detach().float()
        exclude = near_negatives(batch, t_bev.indices[i_t, 1:], self.neg_radius) if self.neg_radius > 0 else None
        positives = torch.arange(i_s.shape[0], device=query.device)
        rows, logits = info_nce_rows(query, keys, self.tau, positives, exclude)
        loss = per_scene_mean(rows, batch, batch_size)
        with torch.no_grad():
            parts = {"acc": (logits.argmax(1) == positives).float().mean(),
                     "num_sites": torch.tensor(float(i_s.shape[0])),
                     "pos_logit": logits.diagonal().mean() * self.tau}
        return loss, parts
