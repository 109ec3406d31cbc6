"""PretrainModel: the pcdet-free container used by the pretraining engine.

Modules are named ``vfe`` and ``backbone_3d`` and a ``global_step`` buffer is kept,
so the state_dict keys are the ones OpenPCDet's detectors use and a checkpoint
loads with ``--pretrained_model`` into a VoxelNeXt detector.

The engine talks to it through a few methods only (it never reaches into ``backbone_3d``):
``forward`` -> ``(loss, tb_dict)``, ``after_optimizer_step(progress)``, ``extra_state()`` /
``load_extra_state(state)`` and ``masking_snapshot()``.
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ..config import resolve_loss_config
from ..losses import build_teacher_student_losses
from .backbone import LossWeights, RMAECMAEBackbonePhase1
from .vfe import MeanVFE

logger = logging.getLogger(__name__)


def configure_pretraining_losses(backbone: RMAECMAEBackbonePhase1, backbone_cfg: Mapping, loss_config: Mapping,
                                 loss_weights: Optional[LossWeights] = None) -> LossWeights:
    """Give a pretraining backbone its resolved loss weights, attach the enabled Phase 2 losses, and
    freeze the projection heads when no teacher-student loss trains them (Phase 1). Shared by the
    pcdet-free PretrainModel and the OpenPCDet detector. Returns the weights in force."""
    weights = loss_weights or LossWeights.from_resolved(loss_config)
    # The backbone decides from its weights whether the teacher runs every step; LOSS_CONFIG may sit
    # at the top level, outside BACKBONE_3D, so it is told the resolved ones.
    backbone.loss_weights = weights
    resolved = dict(loss_config)
    resolved["TEACHER_STUDENT_WEIGHT"] = weights.teacher_student
    for built in build_teacher_student_losses(backbone_cfg, resolved, backbone.loss_channels,
                                              backbone.teacher_cfg.feature_dim):
        backbone.add_teacher_student_loss(built.name, built.module, built.weight)
        logger.info("Teacher-student loss '%s' attached with weight %s", built.name, built.weight)
    if weights.teacher_student == 0:
        backbone.freeze_projectors()
    return weights


class PretrainModel(nn.Module):
    def __init__(self, model_cfg, num_point_features: int, grid_size, voxel_size, point_cloud_range,
                 loss_weights: Optional[LossWeights] = None, loss_config: Optional[Mapping] = None):
        """``loss_config``: the resolved LOSS_CONFIG (``resolve_loss_config``); by default the one of
        ``model_cfg`` (MODEL.LOSS_CONFIG, MODEL.BACKBONE_3D.LOSS_CONFIG). Its Phase 2 per-loss weights
        (MLFR_WEIGHT, ...) are read there; ``loss_weights`` decides TEACHER_STUDENT_WEIGHT."""
        super().__init__()
        self.model_cfg = model_cfg
        self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))
        vfe_name = model_cfg.get("VFE", {}).get("NAME", "MeanVFE")
        if vfe_name != "MeanVFE":
            raise ValueError(f"MODEL.VFE.NAME '{vfe_name}' is not supported by the pcdet-free pretraining "
                             f"engine; use MeanVFE (VoxelNeXt's VFE).")
        backbone_name = model_cfg.BACKBONE_3D.get("NAME", "RMAECMAEBackbonePhase1")
        if backbone_name != "RMAECMAEBackbonePhase1":
            raise ValueError(f"MODEL.BACKBONE_3D.NAME must be RMAECMAEBackbonePhase1 for pretraining, "
                             f"got '{backbone_name}'.")
        if not model_cfg.BACKBONE_3D.get("PRETRAINING", False):
            raise ValueError("MODEL.BACKBONE_3D.PRETRAINING is False: this config is a fine-tuning config. "
                             "Pretrain with PRETRAINING: True, fine-tune in OpenPCDet (tools/train.py).")
        self.vfe = MeanVFE(model_cfg.get("VFE"), num_point_features)
        self.backbone_3d = RMAECMAEBackbonePhase1(
            model_cfg.BACKBONE_3D, input_channels=num_point_features, grid_size=grid_size,
            voxel_size=voxel_size, point_cloud_range=point_cloud_range)
        self.loss_weights = configure_pretraining_losses(
            self.backbone_3d, model_cfg.BACKBONE_3D,
            loss_config if loss_config is not None else resolve_loss_config({"MODEL": model_cfg}), loss_weights)

    @classmethod
    def from_config(cls, cfg, dataset) -> "PretrainModel":
        """Build from a full config (MODEL + LOSS_CONFIG anywhere) and a dataset's grid attributes."""
        weights = resolve_loss_config(cfg)
        return cls(cfg.MODEL, dataset.point_feature_encoder.num_point_features, dataset.grid_size,
                   dataset.voxel_size, dataset.point_cloud_range,
                   LossWeights.from_resolved(weights), loss_config=weights)

    def update_global_step(self) -> None:
        self.global_step += 1

    # ------------------------------------------------------------------ engine contract
    def after_optimizer_step(self, progress: float) -> Dict[str, float]:
        """Once after every optimizer step: count it (``global_step`` += 1) and move the EMA teacher.

        ``progress`` = optimizer steps done / total steps of the run, in [0, 1] (the momentum schedule
        is a function of it). Returns scalars to log (``teacher_momentum`` when there is an EMA teacher)."""
        self.update_global_step()
        momentum = self.backbone_3d.update_teacher(progress=progress)
        return {} if momentum is None else {"teacher_momentum": momentum}

    def extra_state(self) -> dict:
        """What an exact resume needs beyond the state_dict: the masking generator (``masker_state``)."""
        masker = getattr(self.backbone_3d, "masker", None)
        return {} if masker is None else {"masker_state": {k: v.cpu() for k, v in masker.state_dict().items()}}

    def load_extra_state(self, state: Mapping) -> None:
        """Restore :meth:`extra_state` from a checkpoint dict (a missing entry is left as it is)."""
        masker = getattr(self.backbone_3d, "masker", None)
        if masker is not None and state.get("masker_state"):
            masker.load_state_dict(state["masker_state"])

    def masking_snapshot(self) -> Optional[dict]:
        """The last training forward's masking, for pictures: ``coords`` (N, 4) [b, z, y, x], ``mask``
        (MaskResult), ``voxel_size``, ``point_cloud_range``, ``near`` / ``far`` (metres); None before it."""
        ret = self.backbone_3d.forward_ret_dict
        if "mask" not in ret or "coords" not in ret:
            return None
        cfg = self.backbone_3d.masker.config
        return {"coords": ret["coords"], "mask": ret["mask"], "voxel_size": self.backbone_3d.voxel_size,
                "point_cloud_range": self.backbone_3d.point_cloud_range, "near": cfg.near, "far": cfg.far}

    def forward(self, batch_dict: dict):
        """Training: ``(loss, tb_dict)``; eval: the batch_dict with the encoder outputs."""
        if "global_step" not in batch_dict:  # the trainer passes it as a Python int (no device sync)
            batch_dict["global_step"] = int(self.global_step.item())
        batch_dict = self.backbone_3d(self.vfe(batch_dict))
        if not self.training:
            return batch_dict
        return self.backbone_3d.get_loss(self.loss_weights)
