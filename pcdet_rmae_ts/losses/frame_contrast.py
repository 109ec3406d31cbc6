"""Frame-level contrastive loss of CMAE-3D (Zhang et al., 2024): the student's pooled,
projected and predicted BEV embedding of a frame must pick the teacher's pooled embedding
of the same frame among the other frames of the batch (and of every rank under DDP)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import projection_head
from .common import gather_rows_across_ranks, info_nce_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameContrastConfig:
    """``BACKBONE_3D.FRAME_CONTRAST``."""

    enabled: bool = False
    weight: float = 1.0
    tau: float = 0.2
    allow_single: bool = False


def mean_pool(features: torch.Tensor, batch: torch.Tensor, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, C) mean of (N, C) rows per sample and (B,) row counts."""
    counts = torch.zeros(batch_size, device=features.device).index_add_(
        0, batch, torch.ones_like(batch, dtype=torch.float32))
    sums = features.new_zeros((batch_size, features.shape[1])).index_add_(0, batch, features)
    return sums / counts.clamp(min=1.0)[:, None].to(features.dtype), counts


class FrameContrastLoss(nn.Module):
    """Teacher-student loss ``frame_contrast``.

    Embeddings: student = predictor(mean over the frame's BEV sites of the student's ``projected_bev``,
    its projector's per-site output); teacher = mean of the teacher's ``projected_bev``. Frames with no
    student or no teacher site are left out. Needs >= 2 frames over all ranks: otherwise a
    RuntimeError, or, with ``allow_single``, a zero loss (still connected to the graph) and a log line.
    """

    def __init__(self, feature_dim: int, tau: float = 0.2, allow_single: bool = False):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"FRAME_CONTRAST.TAU must be > 0, got {tau}")
        self.tau, self.allow_single = float(tau), bool(allow_single)
        self.predictor = projection_head(int(feature_dim), int(feature_dim))
        self._skips = 0

    uses_projection = True  # needs ``student['projected_bev']``

    def embeddings(self, student: dict, teacher: dict, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(F, D) student queries and (F, D) teacher keys of the F frames present in both views."""
        s_bev, t_bev = student["encoded_spconv_tensor"], teacher["encoded_spconv_tensor"]
        s_pool, s_count = mean_pool(student["projected_bev"].float(), s_bev.indices[:, 0].long(), batch_size)
        t_pool, t_count = mean_pool(teacher["projected_bev"].detach().float(), t_bev.indices[:, 0].long(),
                                    batch_size)
        present = torch.nonzero((s_count > 0) & (t_count > 0), as_tuple=True)[0]  # one sync, not one per view
        return self.predictor(s_pool.index_select(0, present)), t_pool.index_select(0, present)

    def forward(self, student: dict, teacher: dict, batch_size: int, **unused) -> Tuple[torch.Tensor, dict]:
        query, local_keys = self.embeddings(student, teacher, batch_size)
        keys, offset = gather_rows_across_ranks(local_keys)
        if keys.shape[0] < 2:
            return self._single(query, keys.shape[0])
        positives = offset + torch.arange(query.shape[0], device=query.device)
        rows, logits = info_nce_rows(query, keys, self.tau, positives)
        with torch.no_grad():
            parts = {"acc": (logits.argmax(1) == positives).float().mean(),
                     "num_frames": torch.tensor(float(keys.shape[0])),
                     "pos_cosine": F.cosine_similarity(query, keys[positives], dim=1).mean()}
        return rows.mean(), parts

    def _single(self, query: torch.Tensor, frames: int) -> Tuple[torch.Tensor, dict]:
        message = (f"FRAME_CONTRAST: {frames} frame(s) with sites in both views over all processes; InfoNCE "
                   f"needs >= 2 (use a batch size >= 2, or set FRAME_CONTRAST.ALLOW_SINGLE: True to skip)")
        if not self.allow_single:
            raise RuntimeError(message)
        self._skips += 1
        log = logger.warning if self._skips == 1 else logger.debug
        log("%s; skipping this step's frame loss (skip #%d, later skips are logged at debug level).",
            message, self._skips)
        return query.sum() * 0.0, {"skipped": torch.tensor(1.0)}
