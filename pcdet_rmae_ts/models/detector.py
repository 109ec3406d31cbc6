"""RMAECMAEDetectorPhase1: OpenPCDet's VoxelNeXt detector with an R-MAE pretraining mode.

The class subclasses ``pcdet.models.detectors.voxelnext.VoxelNeXt`` and is therefore created
lazily, on first use (:func:`get_detector_class`, or attribute access
``pcdet_rmae_ts.models.detector.RMAECMAEDetectorPhase1``): importing this module never imports pcdet.

Modes (from ``MODEL.BACKBONE_3D.PRETRAINING``):

* **pretraining** (no ``DENSE_HEAD``): training returns ``({'loss': loss}, tb_dict, {})`` from
  ``backbone_3d.get_loss(weights)``. Loss weights (``RMAE_WEIGHT``, ``TEACHER_STUDENT_WEIGHT``)
  come from :func:`resolve_detector_loss_config`. The EMA teacher is updated once per optimizer
  step, see :meth:`_catch_up_teacher`; its momentum schedule needs the run length, given by
  :meth:`set_total_steps` (the package's OpenPCDet hook calls it; without it an EMA update raises
  :class:`MissingRunLengthError`). Evaluation is not defined (no head) and raises.
* **fine-tuning** (``DENSE_HEAD: VoxelNeXtHead``): exactly OpenPCDet's VoxelNeXt; the head's
  loss is multiplied by ``DETECTION_WEIGHT`` (1.0 by default); eval returns
  ``(pred_dicts, recall_dicts)``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch

from ..config import resolve_loss_config

logger = logging.getLogger(__name__)

_DETECTOR_CLASS: Optional[type] = None


class MissingRunLengthError(RuntimeError):
    """The EMA teacher is due an update but the detector was never told the run length."""


def ema_progress(step: int, total_steps: Optional[int]) -> float:
    """Training progress ``step / total_steps`` in [0, 1] for the teacher's momentum schedule.

    Raises MissingRunLengthError when ``total_steps`` is None: a progress of 0 would keep the momentum
    at its base value for the whole run, silently."""
    if total_steps is None:
        raise MissingRunLengthError(
            "RMAECMAEDetectorPhase1: the EMA teacher's momentum schedule needs the run length, but "
            "set_total_steps() was never called. Train through this package's launchers (tools/train.py, "
            "scripts/dist_train.sh: their optimizer hook calls it), or call "
            "model.set_total_steps(iterations_per_epoch * epochs) before the first training step.")
    return min(max(step / total_steps, 0.0), 1.0)


def resolve_detector_loss_config(model_cfg: Mapping, global_cfg: Optional[Mapping] = None) -> dict:
    """Loss weights for the detector, which OpenPCDet builds from ``cfg.MODEL`` alone.

    Precedence, least to most specific, key by key (:func:`pcdet_rmae_ts.config.resolve_loss_config`):
    top-level ``LOSS_CONFIG`` (read from ``global_cfg``, by default OpenPCDet's global
    ``pcdet.config.cfg`` that ``tools/train.py`` / ``test.py`` fill from the YAML, but only when its
    ``MODEL`` is this very ``model_cfg``), then ``MODEL.LOSS_CONFIG``, then
    ``MODEL.BACKBONE_3D.LOSS_CONFIG``.
    """
    if global_cfg is None:
        global_cfg = _pcdet_global_cfg()
    top = None
    if global_cfg is not None and global_cfg.get("MODEL") is model_cfg:
        top = global_cfg.get("LOSS_CONFIG")
    merged = {"MODEL": model_cfg}
    if top is not None:
        merged["LOSS_CONFIG"] = top
    return resolve_loss_config(merged)


def _pcdet_global_cfg() -> Optional[Mapping]:
    try:
        from pcdet.config import cfg
    except ImportError:  # pragma: no cover - the detector only exists with pcdet
        return None
    return cfg


def get_detector_class() -> type:
    """The detector class (built on first call; needs pcdet)."""
    global _DETECTOR_CLASS
    if _DETECTOR_CLASS is None:
        _DETECTOR_CLASS = _build_detector_class()
    return _DETECTOR_CLASS


def __getattr__(name: str) -> Any:
    if name == "RMAECMAEDetectorPhase1":
        return get_detector_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_detector_class() -> type:
    from pcdet.models.detectors.voxelnext import VoxelNeXt

    from .backbone import LossWeights
    from .pretrain_model import configure_pretraining_losses

    class RMAECMAEDetectorPhase1(VoxelNeXt):
        """VoxelNeXt + R-MAE pretraining mode. See the module docstring."""

        def __init__(self, model_cfg, num_class, dataset):
            super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
            backbone_cfg = model_cfg.get("BACKBONE_3D") or {}
            self.pretraining = bool(backbone_cfg.get("PRETRAINING", False))
            weights = resolve_detector_loss_config(model_cfg)
            self.loss_weights = LossWeights.from_resolved(weights)
            self.detection_weight = float(weights["DETECTION_WEIGHT"])
            self.ema_total_steps: Optional[int] = None
            self._check_mode()
            if self.pretraining:
                if not hasattr(self.backbone_3d, "get_loss"):
                    raise ValueError(f"MODEL.BACKBONE_3D.NAME {backbone_cfg.get('NAME')!r} has no pretraining "
                                     f"loss; pretraining needs RMAECMAEBackbonePhase1")
                configure_pretraining_losses(self.backbone_3d, backbone_cfg, weights, self.loss_weights)
                # Optimizer steps already folded into the EMA teacher (-1: not synchronised yet).
                self.register_buffer("ema_step", torch.full((1,), -1, dtype=torch.long))

        def _check_mode(self) -> None:
            if self.pretraining and self.dense_head is not None:
                raise ValueError("MODEL.BACKBONE_3D.PRETRAINING is True but MODEL.DENSE_HEAD is set: remove the "
                                 "head for pretraining, or set PRETRAINING: False to fine-tune")
            if not self.pretraining and self.dense_head is None:
                raise ValueError("MODEL.BACKBONE_3D.PRETRAINING is False (fine-tuning) but MODEL.DENSE_HEAD is "
                                 "missing: add a VoxelNeXtHead section")

        def set_total_steps(self, total_steps: int) -> None:
            """Length of training in optimizer steps, for the teacher's cosine momentum schedule."""
            self.ema_total_steps = max(int(total_steps), 1)

        @torch.no_grad()
        def _catch_up_teacher(self) -> None:
            """Apply the EMA for the optimizer step that finished since the last forward.

            OpenPCDet's loop has no post-step hook: it calls ``update_global_step()`` right after the
            forward, *before* ``optimizer.step()``. So at the start of a training forward
            ``global_step`` = number of optimizer steps taken; when it is ahead of ``ema_step``, the
            weights changed once since the last EMA and the EMA is applied now, with momentum from
            ``global_step / total steps`` (a function of the global step, so resumes continue it).
            Net effect: exactly once after every optimizer step, before the teacher is next used.
            ``ema_step`` is a buffer, so a resumed run (``--ckpt``) does not apply an extra update;
            a checkpoint without it only re-synchronises. The last step's EMA is applied by the
            next forward, so a checkpoint's teacher lags the student by at most one step.
            """
            step = int(self.global_step.item())
            done = int(self.ema_step.item())
            if done >= 0 and done < step and self.backbone_3d.has_ema_teacher:
                self.backbone_3d.update_teacher(ema_progress(step, self.ema_total_steps))
            self.ema_step.fill_(step)

        def forward(self, batch_dict):
            if not self.pretraining:
                return super().forward(batch_dict)
            if not self.training:
                raise RuntimeError("RMAECMAEDetectorPhase1 in pretraining mode has no detection head to evaluate; "
                                   "export the encoder (tools/export_pretrained.py) and fine-tune it, or skip the "
                                   "final evaluation")
            self._catch_up_teacher()
            batch_dict["global_step"] = int(self.global_step.item())
            for module in self.module_list:
                batch_dict = module(batch_dict)
            loss, tb_dict, disp_dict = self.get_training_loss()
            return {"loss": loss}, tb_dict, disp_dict

        def get_training_loss(self):
            if self.pretraining:
                loss, tb_dict = self.backbone_3d.get_loss(self.loss_weights)
                return loss, tb_dict, {}
            loss, tb_dict = self.dense_head.get_loss()
            if self.detection_weight != 1.0:
                loss = loss * self.detection_weight
                tb_dict["detection_weight"] = self.detection_weight
            return loss, tb_dict, {}

    return RMAECMAEDetectorPhase1
