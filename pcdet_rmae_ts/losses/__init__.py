"""Phase 2 teacher-student losses (CMAE-3D): multi-scale latent feature reconstruction,
voxel- and frame-level contrastive learning, and the builder that makes them from the config.

Losses take tensors (encoder output dicts) and own their heads; they never see the backbone.
The builder returns modules and weights; the model attaches them (``models/pretrain_model.py``).

Config (all off by default)::

    MODEL.BACKBONE_3D:
        MLFR:           {ENABLED, WEIGHT, SCALES, TARGET_NORM, LOSS_TYPE, MASKED_SITE_WEIGHT, DECODER_KERNEL}
        VOXEL_CONTRAST: {ENABLED, WEIGHT, NUM_SAMPLES, TAU, NEG_RADIUS}
        FRAME_CONTRAST: {ENABLED, WEIGHT, TAU, ALLOW_SINGLE}
    LOSS_CONFIG: {TEACHER_STUDENT_WEIGHT, MLFR_WEIGHT, VOXEL_CONTRAST_WEIGHT, FRAME_CONTRAST_WEIGHT}

Weight of a loss: ``LOSS_CONFIG.<NAME>_WEIGHT`` if set (resolved like the other loss weights),
else the section's ``WEIGHT``, else 1.0; a warning is logged when both are set and differ.
The backbone multiplies it by ``TEACHER_STUDENT_WEIGHT``. Losses are built only when
``TEACHER_STUDENT_WEIGHT > 0``, so a Phase 1 config builds and trains exactly as before.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Mapping, NamedTuple, Optional

from torch import nn

from ..config import dataclass_from_section
from .frame_contrast import FrameContrastConfig, FrameContrastLoss
from .mlfr import MLFRConfig, MLFRLoss
from .voxel_contrast import VoxelContrastConfig, VoxelContrastLoss

logger = logging.getLogger(__name__)

# config section -> (loss name in the backbone / tb_dict, config class, LOSS_CONFIG weight key)
PHASE2_SECTIONS = {
    "MLFR": ("mlfr", MLFRConfig, "MLFR_WEIGHT"),
    "VOXEL_CONTRAST": ("voxel_contrast", VoxelContrastConfig, "VOXEL_CONTRAST_WEIGHT"),
    "FRAME_CONTRAST": ("frame_contrast", FrameContrastConfig, "FRAME_CONTRAST_WEIGHT"),
}


def parse_section(section: str, values: Optional[Mapping], loss_cfg: Mapping):
    """Validated config dataclass of one Phase 2 section (unknown key -> error naming the nearest)."""
    _, cls, weight_key = PHASE2_SECTIONS[section]
    values = dict(values or {})
    cfg = dataclass_from_section(cls, values, key_path=f"MODEL.BACKBONE_3D.{section}")
    weight = _resolve_weight(section, values.get("WEIGHT"), loss_cfg.get(weight_key), cfg.weight)
    if weight < 0:
        raise ValueError(f"{section} weight must be >= 0, got {weight}")
    return dataclasses.replace(cfg, weight=weight)


def _resolve_weight(section: str, section_weight, loss_cfg_weight, default: float) -> float:
    if loss_cfg_weight is None:
        return float(default if section_weight is None else section_weight)
    if section_weight is not None and float(section_weight) != float(loss_cfg_weight):
        logger.warning("%s weight: MODEL.BACKBONE_3D.%s.WEIGHT is %s and LOSS_CONFIG.%s is %s; using %s "
                       "(LOSS_CONFIG wins)", section, section, section_weight, PHASE2_SECTIONS[section][2],
                       loss_cfg_weight, loss_cfg_weight)
    return float(loss_cfg_weight)


def phase2_configs(model_cfg: Mapping, loss_cfg: Mapping) -> Dict[str, object]:
    """Parsed configs of the Phase 2 sections present in ``model_cfg`` (BACKBONE_3D), by section."""
    configs = {s: parse_section(s, model_cfg.get(s), loss_cfg) for s in PHASE2_SECTIONS}
    for section, cfg in configs.items():
        weight_key = PHASE2_SECTIONS[section][2]
        if not cfg.enabled and float(loss_cfg.get(weight_key) or 0.0) > 0:
            raise ValueError(f"LOSS_CONFIG.{weight_key} is {loss_cfg[weight_key]} but MODEL.BACKBONE_3D.{section}."
                             f"ENABLED is not True: the weight would do nothing. Enable the section or remove "
                             f"the weight.")
        if cfg.enabled and cfg.weight == 0:
            raise ValueError(f"MODEL.BACKBONE_3D.{section} is enabled with weight 0 (computed, never trained); "
                             f"set ENABLED: False or give it a weight > 0.")
    return configs


class TeacherStudentLoss(NamedTuple):
    """One built Phase 2 loss: its name (in the backbone's ``ts_losses`` and the tb_dict), module, weight."""

    name: str
    module: nn.Module
    weight: float


def build_loss(section: str, cfg, channels: Mapping[str, int], feature_dim: int) -> nn.Module:
    """The loss module of one section. ``channels``: feature channels of ``x_conv1..x_conv4`` and
    ``bev``; ``feature_dim``: the projectors' output dim (``FEATURE_DIM``)."""
    if section == "MLFR":
        return MLFRLoss(channels, cfg.scales, cfg.target_norm, cfg.loss_type, cfg.masked_site_weight,
                        cfg.decoder_kernel)
    if section == "VOXEL_CONTRAST":
        return VoxelContrastLoss(feature_dim, cfg.num_samples, cfg.tau, cfg.neg_radius)
    return FrameContrastLoss(feature_dim, cfg.tau, cfg.allow_single)


def build_teacher_student_losses(model_cfg: Mapping, loss_cfg: Mapping, channels: Mapping[str, int],
                                 feature_dim: int) -> List[TeacherStudentLoss]:
    """Validate the Phase 2 sections of ``model_cfg`` (the BACKBONE_3D section) and build every
    enabled loss. ``loss_cfg`` holds the resolved LOSS_CONFIG (``TEACHER_STUDENT_WEIGHT`` and the
    per-loss weights). Nothing is built when ``TEACHER_STUDENT_WEIGHT`` is 0 (Phase 1)."""
    configs = phase2_configs(model_cfg, loss_cfg)
    enabled = [(s, c) for s, c in configs.items() if c.enabled]
    if not enabled:
        return []
    if float(loss_cfg.get("TEACHER_STUDENT_WEIGHT") or 0.0) <= 0:
        logger.info("Phase 2 losses %s are enabled but LOSS_CONFIG.TEACHER_STUDENT_WEIGHT is 0: not attached "
                    "(Phase 1 training).", [s for s, _ in enabled])
        return []
    return [TeacherStudentLoss(PHASE2_SECTIONS[section][0], build_loss(section, cfg, channels, feature_dim),
                               cfg.weight) for section, cfg in enabled]


__all__ = ["MLFRLoss", "VoxelContrastLoss", "FrameContrastLoss", "MLFRConfig", "VoxelContrastConfig",
           "FrameContrastConfig", "TeacherStudentLoss", "build_teacher_student_losses", "phase2_configs",
           "PHASE2_SECTIONS"]
