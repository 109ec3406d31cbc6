"""RMAECMAEBackbonePhase1: VoxelNeXt encoder + radial masking + occupancy decoder +
teacher-student branch, as an OpenPCDet BACKBONE_3D.

With ``PRETRAINING: False`` it is exactly a VoxelNeXt encoder (same state_dict keys);
with ``PRETRAINING: True`` the student encodes the radially masked voxels and learns
to predict the coarse occupancy of the complete scene, while a teacher (EMA copy or
the student itself, no gradient) encodes the complete voxels.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone_keys import ENCODER_ARGS, VALID_KEYS
from ..config import check_known_keys, dataclass_from_section, resolve_loss_config
from ..heads import projection_head
from ..masking import RadialMasker, masking_config_from_cfg
from ..occupancy import (
    SOURCE_BY_STRIDE,
    OccupancyDecoder,
    cells_in_range,
    coarse_shape,
    masked_sector_cells,
    occupancy_config_from_cfg,
    occupancy_loss,
    occupancy_metrics,
    occupancy_targets,
)
from ..sparse_align import match_sites
from ..teacher import TEACHER_TYPES, cosine_momentum, ema_update, frozen_bn_buffers
from .encoder import ENCODER_MODULES, VoxelNeXtEncoder, spconv

logger = logging.getLogger(__name__)


def check_backbone_keys(model_cfg, where: str = "MODEL.BACKBONE_3D") -> None:
    """Raise a clear error (ConfigError) for a key this backbone does not know (typos would silently do
    nothing), naming the nearest valid key."""
    check_known_keys(model_cfg, VALID_KEYS, key_path=where)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the pretraining loss terms (``LOSS_CONFIG``)."""

    rmae: float = 1.0
    teacher_student: float = 0.0

    @classmethod
    def from_resolved(cls, weights: Mapping) -> "LossWeights":
        """From the dict of ``config.resolve_loss_config`` (defaults and precedence live there)."""
        return cls(rmae=float(weights["RMAE_WEIGHT"]), teacher_student=float(weights["TEACHER_STUDENT_WEIGHT"]))


@dataclass(frozen=True)
class TeacherConfig:
    """Teacher-student keys of ``BACKBONE_3D`` (flat, beside the other components' keys)."""

    enabled: bool = field(default=False, metadata={"key": "ENABLE_TEACHER_STUDENT"})
    kind: str = field(default="identical", metadata={"key": "TEACHER_BACKBONE_TYPE"})
    momentum: float = field(default=0.996, metadata={"key": "TEACHER_MOMENTUM"})
    log_interval: int = field(default=50, metadata={"key": "TEACHER_LOG_INTERVAL"})
    feature_dim: int = 128

    def __post_init__(self):
        if self.kind not in TEACHER_TYPES:
            raise ValueError(f"TEACHER_BACKBONE_TYPE must be one of {TEACHER_TYPES}, got '{self.kind}'")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"TEACHER_MOMENTUM must be in [0, 1], got {self.momentum}")
        if self.log_interval < 1:
            raise ValueError(f"TEACHER_LOG_INTERVAL must be >= 1, got {self.log_interval}")

    @classmethod
    def from_cfg(cls, model_cfg) -> "TeacherConfig":
        # the flat BACKBONE_3D section is shared with other components; check_backbone_keys checks it
        return dataclass_from_section(cls, model_cfg, key_path="MODEL.BACKBONE_3D", check_unknown=False)


def without_indice_tables(encoded: dict) -> dict:
    """The encoder outputs as fresh sparse tensors (same features, indices, shapes) that drop the
    conv rule-book (``indice_dict``): the teacher's outputs live until the loss, and its rule-book
    for the complete scene, every layer of it, would otherwise stay in memory with them."""
    def strip(t):
        return spconv.SparseConvTensor(t.features, t.indices, t.spatial_shape, t.batch_size)

    out = dict(encoded)
    out["encoded_spconv_tensor"] = strip(encoded["encoded_spconv_tensor"])
    out["multi_scale_3d_features"] = {k: strip(v) for k, v in encoded["multi_scale_3d_features"].items()}
    return out


class RMAECMAEBackbonePhase1(VoxelNeXtEncoder):
    """OpenPCDet BACKBONE_3D: ``(model_cfg, input_channels, grid_size, voxel_size, point_cloud_range)``."""

    def __init__(self, model_cfg, input_channels: int, grid_size: Sequence[int],
                 voxel_size: Sequence[float], point_cloud_range: Sequence[float], **kwargs):
        check_backbone_keys(model_cfg)
        # absent keys keep VoxelNeXtEncoder's defaults (written once, in its signature)
        encoder_kwargs = {arg: model_cfg[key] for key, arg in ENCODER_ARGS.items() if key in model_cfg}
        super().__init__(input_channels=input_channels, grid_size=grid_size, **encoder_kwargs)
        self.model_cfg = model_cfg
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.pretraining = bool(model_cfg.get("PRETRAINING", False))
        # its own LOSS_CONFIG; the containers (PretrainModel, the detector) set the fully resolved weights
        self.loss_weights = LossWeights.from_resolved(resolve_loss_config({"MODEL": {"BACKBONE_3D": model_cfg}}))
        self.teacher_cfg = TeacherConfig.from_cfg(model_cfg)
        self.forward_ret_dict: Dict[str, object] = {}
        self._forward_calls = 0
        if not self.pretraining:
            if self.teacher_cfg.enabled:
                logger.info("BACKBONE_3D: ENABLE_TEACHER_STUDENT is ignored when PRETRAINING is False.")
            return
        self.masker = RadialMasker(masking_config_from_cfg(model_cfg), self.voxel_size,
                                   self.point_cloud_range, seed=model_cfg.get("MASKING_SEED"))
        self.occupancy_cfg = occupancy_config_from_cfg(model_cfg.get("OCCUPANCY_DECODER"))
        stride = self.occupancy_cfg.stride
        self.occupancy_source = SOURCE_BY_STRIDE[stride]
        self.occupancy_shape = coarse_shape(self.sparse_shape, stride)
        if self.occupancy_source == "encoded_spconv_tensor":
            source_channels, source_z = self.num_point_features, 1
        else:
            source_channels, source_z = self.backbone_channels[self.occupancy_source], self.occupancy_shape[0]
        self.occupancy_decoder = OccupancyDecoder(
            source_channels, self.occupancy_shape[0], source_z, self.occupancy_cfg.reduced_channels,
            self.occupancy_cfg.hidden_channels, self.occupancy_cfg.dilations)
        self.register_buffer("occupancy_valid", cells_in_range(
            self.occupancy_shape, stride, self.voxel_size, self.point_cloud_range, torch.device("cpu")),
            persistent=False)
        # Extension point: Phase 2 losses are added with add_teacher_student_loss().
        self.ts_losses = nn.ModuleDict()
        self.ts_loss_weights: Dict[str, float] = {}
        if self.teacher_cfg.enabled:
            self._build_teacher()

    # ------------------------------------------------------------------ construction
    def _build_teacher(self) -> None:
        dim = self.teacher_cfg.feature_dim
        self.student_projector = projection_head(self.num_point_features, dim)
        if self.teacher_cfg.kind == "ema":
            teacher = VoxelNeXtEncoder(**self.init_kwargs)
            teacher.load_state_dict(self.encoder_state_dict())
            self.teacher = teacher.requires_grad_(False)
            self.teacher_projector = copy.deepcopy(self.student_projector).requires_grad_(False)

    def _occupancy_source_tensor(self, encoded: dict):
        if self.occupancy_source == "encoded_spconv_tensor":
            return encoded["encoded_spconv_tensor"]
        return encoded["multi_scale_3d_features"][self.occupancy_source]

    def encoder_state_dict(self) -> Dict[str, torch.Tensor]:
        """The student's VoxelNeXt part of the state_dict (what a detector loads)."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in ENCODER_MODULES}

    @property
    def loss_channels(self) -> Dict[str, int]:
        """Feature channels of the scales a teacher-student loss can read: ``x_conv1..x_conv4``, ``bev``."""
        return dict(self.backbone_channels, bev=self.num_point_features)

    def freeze_projectors(self) -> None:
        """Phase 1 (no teacher-student loss): the projection heads get no gradient; freezing them
        keeps them out of the optimizer and out of DDP's unused-parameter check."""
        for name in ("student_projector", "teacher_projector"):
            if hasattr(self, name):
                getattr(self, name).requires_grad_(False)

    def add_teacher_student_loss(self, name: str, loss: nn.Module, weight: float) -> None:
        """Plug a teacher-student loss in: ``loss(student=..., teacher=..., mask=..., batch_size=...)``
        must return ``(scalar, tb_dict)``; it is weighted by ``weight`` x TEACHER_STUDENT_WEIGHT.
        A loss with ``uses_projection = True`` gets ``student['projected_bev']``: the student
        projector's (M, FEATURE_DIM) output for the BEV rows (the teacher's is always there)."""
        if not self.pretraining or not self.teacher_cfg.enabled:
            raise ValueError(f"Teacher-student loss '{name}' needs PRETRAINING and ENABLE_TEACHER_STUDENT")
        self.ts_losses[name] = loss
        self.ts_loss_weights[name] = float(weight)

    # ------------------------------------------------------------------ forward
    def forward(self, batch_dict: dict) -> dict:
        features, coords = batch_dict["voxel_features"], batch_dict["voxel_coords"].int()
        batch_size = int(batch_dict["batch_size"])
        step = int(batch_dict.get("global_step", self._forward_calls))
        self._forward_calls += 1
        if not (self.pretraining and self.training):
            return super().forward(batch_dict)
        ret = {"coords": coords, "batch_size": batch_size}
        if self._teacher_runs(step):
            # Before the student: the teacher's no-grad intermediates are freed before the student's
            # activations (kept for backward) are allocated, which lowers the peak memory.
            ret["teacher"] = self._teacher_forward(features, coords, batch_size)
            batch_dict["teacher_outputs"] = ret["teacher"]
        mask = self.masker(coords, batch_size)
        kept = mask.keep.nonzero().squeeze(1)  # one host sync; index_select's backward is an index_add
        student = self.encode(features.index_select(0, kept), coords.index_select(0, kept), batch_size)
        batch_dict.update(student)
        ret.update(mask=mask, student=student,
                   occupancy_logits=self.occupancy_decoder(self._occupancy_source_tensor(student), batch_size))
        batch_dict["rmae_mask"] = mask
        self.forward_ret_dict = ret
        return batch_dict

    def _teacher_runs(self, step: int) -> bool:
        if not self.teacher_cfg.enabled:
            return False
        if self.loss_weights.teacher_student > 0 and self.ts_losses:
            return True
        return step % self.teacher_cfg.log_interval == 0

    @torch.no_grad()
    def _teacher_forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> dict:
        """Multi-scale features of the complete voxels (x_conv1..x_conv4, BEV), never the student's tensors."""
        if self.teacher_cfg.kind == "ema":
            encoder, projector = self.teacher, self.teacher_projector
        else:
            encoder, projector = self, self.student_projector
        with frozen_bn_buffers(encoder):
            out = encoder.encode(features, coords, batch_size)
        out["projected_bev"] = projector(out["encoded_spconv_tensor"].features)
        return without_indice_tables(out)

    # ------------------------------------------------------------------ teacher update
    @property
    def has_ema_teacher(self) -> bool:
        """Whether :meth:`update_teacher` moves an EMA teacher (and so needs the training progress)."""
        return self.pretraining and self.teacher_cfg.enabled and self.teacher_cfg.kind == "ema"

    @torch.no_grad()
    def update_teacher(self, progress: float) -> Optional[float]:
        """EMA step after an optimizer step; ``progress`` = global step / total steps in [0, 1].
        Returns the momentum used (None when there is no EMA teacher)."""
        if not self.has_ema_teacher:
            return None
        momentum = cosine_momentum(progress, self.teacher_cfg.momentum)
        ema_update(self.teacher, self, momentum)
        ema_update(self.teacher_projector, self.student_projector, momentum)
        return momentum

    # ------------------------------------------------------------------ loss
    def get_loss(self, loss_weights: Optional[LossWeights] = None) -> Tuple[torch.Tensor, dict]:
        """Weighted pretraining loss and a tb_dict with every term, masking and occupancy statistics."""
        if not self.pretraining:
            raise RuntimeError("get_loss() is only defined for PRETRAINING: True; fine-tuning losses "
                               "come from the detection head.")
        ret = self.forward_ret_dict
        if "occupancy_logits" not in ret:
            raise RuntimeError("get_loss() called before a training-mode forward of the backbone.")
        weights = loss_weights or self.loss_weights
        if weights.rmae <= 0 and weights.teacher_student <= 0:
            raise ValueError("LOSS_CONFIG: RMAE_WEIGHT and TEACHER_STUDENT_WEIGHT are both 0; nothing would "
                             "be trained. Set RMAE_WEIGHT: 1.0 for R-MAE pretraining.")
        occ_loss, tb_dict = self._occupancy_loss(ret)
        loss = weights.rmae * occ_loss
        tb_dict["loss_rmae"] = occ_loss.detach()
        if weights.teacher_student > 0:
            ts_loss, ts_tb = self._teacher_student_loss(ret)
            loss = loss + weights.teacher_student * ts_loss
            tb_dict.update(ts_tb)
        if "teacher" in ret:
            tb_dict["ts_cosine_similarity"] = self._student_teacher_similarity(ret)
        tb_dict.update({k: v.detach() for k, v in ret["mask"].stats.items()})
        tb_dict["loss"] = loss.detach()
        return loss, tb_dict

    def _occupancy_loss(self, ret) -> Tuple[torch.Tensor, dict]:
        cfg = self.occupancy_cfg
        logits = ret["occupancy_logits"]
        target = occupancy_targets(ret["coords"], ret["batch_size"], self.sparse_shape, cfg.stride)
        valid = self.occupancy_valid.to(logits.device)[None] if cfg.restrict_to_range else None
        loss = occupancy_loss(logits, target, valid, cfg.pos_weight, cfg.focal_gamma)
        region = valid if valid is not None else torch.ones_like(target, dtype=torch.bool)
        tb_dict = occupancy_metrics(logits, target, region, prefix="occ")
        masked_region = region & masked_sector_cells(ret["mask"], ret["batch_size"], self.occupancy_shape[1:],
                                                     cfg.stride, self.voxel_size, self.point_cloud_range)[:, None]
        tb_dict.update(occupancy_metrics(logits, target, masked_region, prefix="occ_masked"))
        return loss, tb_dict

    def _teacher_student_loss(self, ret) -> Tuple[torch.Tensor, dict]:
        if not self.ts_losses:
            raise ValueError("LOSS_CONFIG.TEACHER_STUDENT_WEIGHT > 0 but no teacher-student loss is configured "
                             "(enable MLFR, VOXEL_CONTRAST or FRAME_CONTRAST under BACKBONE_3D), or set it to 0.")
        if "teacher" not in ret:
            raise RuntimeError("Teacher-student loss requested but the teacher did not run this step.")
        total = None
        tb_dict = {}
        student = ret["student"]
        if any(getattr(loss_fn, "uses_projection", False) for loss_fn in self.ts_losses.values()):
            student = dict(student, projected_bev=self.student_projector(
                student["encoded_spconv_tensor"].features.float()))
        for name, loss_fn in self.ts_losses.items():
            value, parts = loss_fn(student=student, teacher=ret["teacher"], mask=ret["mask"],
                                   batch_size=ret["batch_size"])
            weighted = self.ts_loss_weights[name] * value
            total = weighted if total is None else total + weighted
            tb_dict[f"loss_{name}"] = value.detach()
            tb_dict.update({f"{name}_{k}": v for k, v in parts.items()})
        tb_dict["loss_teacher_student"] = total.detach()
        return total, tb_dict

    @torch.no_grad()
    def _student_teacher_similarity(self, ret) -> torch.Tensor:
        """Mean cosine similarity of student and teacher BEV features on the sites both views share."""
        student_bev = ret["student"]["encoded_spconv_tensor"]
        teacher_bev = ret["teacher"]["encoded_spconv_tensor"]
        i_s, i_t = match_sites(student_bev.indices, teacher_bev.indices, teacher_bev.spatial_shape)
        if i_s.numel() == 0:
            return torch.tensor(float("nan"), device=student_bev.features.device)
        return F.cosine_similarity(student_bev.features[i_s].float(), teacher_bev.features[i_t].float(), dim=1).mean()
