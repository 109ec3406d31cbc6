"""RMAECMAEDetectorPhase1 logic on a stand-in VoxelNeXt base (no pcdet): pretraining loss with the
resolved LOSS_CONFIG weights, EMA applied once per optimizer step, fine-tune DETECTION_WEIGHT."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def detector_cls(monkeypatch):
    """Build the detector class on a minimal VoxelNeXt stand-in (Detector3DTemplate's contract)."""
    from pcdet_rmae_ts.models import detector as det_mod
    from pcdet_rmae_ts.models.backbone import RMAECMAEBackbonePhase1
    from pcdet_rmae_ts.models.vfe import MeanVFE

    class VoxelNeXt(nn.Module):
        def __init__(self, model_cfg, num_class, dataset):
            super().__init__()
            self.model_cfg = model_cfg
            self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))
            self.vfe = MeanVFE(model_cfg.VFE, 3)
            self.backbone_3d = RMAECMAEBackbonePhase1(model_cfg.BACKBONE_3D, input_channels=3, grid_size=[64, 64, 16],
                                                      voxel_size=[0.5, 0.5, 0.5],
                                                      point_cloud_range=[-16, -16, -3, 16, 16, 5])
            self.dense_head = model_cfg.get("FAKE_HEAD")
            self.module_list = [self.vfe, self.backbone_3d]

        def update_global_step(self):
            self.global_step += 1

        def forward(self, batch_dict):
            loss, tb, disp = self.get_training_loss()
            return {"loss": loss}, tb, disp

    for name in ("pcdet", "pcdet.models", "pcdet.models.detectors", "pcdet.models.detectors.voxelnext"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["pcdet.models.detectors.voxelnext"].VoxelNeXt = VoxelNeXt
    monkeypatch.setattr(det_mod, "_DETECTOR_CLASS", None)
    monkeypatch.setattr(det_mod, "_pcdet_global_cfg", lambda: None)
    yield det_mod.get_detector_class()
    det_mod._DETECTOR_CLASS = None


def _cfg(teacher="ema", loss=None):
    from pcdet_rmae_ts.config import cfg_from_yaml_file

    cfg = cfg_from_yaml_file(REPO / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml")
    cfg.MODEL.BACKBONE_3D.TEACHER_BACKBONE_TYPE = teacher
    if loss is not None:
        cfg.MODEL.LOSS_CONFIG = loss
    return cfg


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.cat([torch.randint(0, 2, (800, 1), generator=g),
                                     torch.randint(0, 16, (800, 1), generator=g),
                                     torch.randint(0, 64, (800, 2), generator=g)], 1), dim=0)
    return {"voxels": torch.rand(len(coords), 5, 3, generator=g), "voxel_num_points": torch.full((len(coords),), 5.0),
            "voxel_coords": coords.float(), "batch_size": 2}


def test_pretraining_loss_and_ema_once_per_step(detector_cls, monkeypatch):
    model = detector_cls(_cfg().MODEL, 4, None)
    model.set_total_steps(4)
    calls = []
    monkeypatch.setattr(model.backbone_3d, "update_teacher", lambda progress: calls.append(progress))
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for step in range(3):  # OpenPCDet's order: forward, update_global_step, backward, optimizer.step
        ret, tb_dict, disp = model(_batch(step))
        model.update_global_step()
        ret["loss"].backward()
        optimizer.step()
        assert torch.isfinite(ret["loss"]) and "loss_rmae" in tb_dict and disp == {}
    assert calls == [pytest.approx(0.25), pytest.approx(0.5)]
    assert "ema_step" in model.state_dict() and int(model.ema_step) == 2


def _train_steps(model, steps):
    """OpenPCDet's order: forward, update_global_step, backward, optimizer.step."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for step in range(steps):
        ret, _, _ = model(_batch(step))
        model.update_global_step()
        ret["loss"].backward()
        optimizer.step()


def test_ema_teacher_without_run_length_fails_at_its_first_update(detector_cls):
    """Without set_total_steps (no hook), progress used to be 0 and the momentum stayed at its base."""
    from pcdet_rmae_ts.models.detector import MissingRunLengthError

    model = detector_cls(_cfg().MODEL, 4, None)
    assert model.backbone_3d.has_ema_teacher
    with pytest.raises(MissingRunLengthError, match=r"set_total_steps\(\) was never called.*tools/train\.py"):
        _train_steps(model, 2)
    assert int(model.ema_step) == 0, "the failing step applied no EMA"


def test_identical_teacher_needs_no_run_length(detector_cls):
    model = detector_cls(_cfg(teacher="identical").MODEL, 4, None)
    assert not model.backbone_3d.has_ema_teacher
    _train_steps(model, 2)
    assert int(model.ema_step) == 1


def test_ema_momentum_follows_the_run_length(detector_cls):
    from pcdet_rmae_ts.teacher import cosine_momentum

    model = detector_cls(_cfg().MODEL, 4, None)
    model.set_total_steps(2)
    seen = []
    update = model.backbone_3d.update_teacher
    model.backbone_3d.update_teacher = lambda progress: seen.append(update(progress))
    _train_steps(model, 3)
    base = model.backbone_3d.teacher_cfg.momentum
    assert seen == [pytest.approx(cosine_momentum(0.5, base)), pytest.approx(1.0)]


def test_ema_progress():
    from pcdet_rmae_ts.models.detector import MissingRunLengthError, ema_progress

    assert ema_progress(3, 12) == 0.25 and ema_progress(20, 12) == 1.0
    with pytest.raises(MissingRunLengthError, match="set_total_steps"):
        ema_progress(1, None)


def test_resume_does_not_apply_an_extra_ema(detector_cls, monkeypatch):
    model = detector_cls(_cfg().MODEL, 4, None)
    model.global_step.fill_(7)
    model.ema_step.fill_(7)  # as loaded from a checkpoint
    calls = []
    monkeypatch.setattr(model.backbone_3d, "update_teacher", lambda progress: calls.append(progress))
    model.train()
    model(_batch(0))
    assert calls == []


def test_loss_weights_from_model_loss_config(detector_cls):
    model = detector_cls(_cfg(loss={"RMAE_WEIGHT": 0.5}).MODEL, 4, None)
    assert model.loss_weights.rmae == 0.5 and model.loss_weights.teacher_student == 0.0
    model.train()
    ret, tb_dict, _ = model(_batch(1))
    assert ret["loss"].item() == pytest.approx(0.5 * float(tb_dict["loss_rmae"]), rel=1e-5)


def test_eval_in_pretraining_mode_raises(detector_cls):
    model = detector_cls(_cfg().MODEL, 4, None).eval()
    with pytest.raises(RuntimeError, match="no detection head"):
        model(_batch(0))


def test_top_level_loss_config_from_global_cfg():
    from pcdet_rmae_ts.models.detector import resolve_detector_loss_config

    cfg = _cfg()
    cfg.LOSS_CONFIG = {"RMAE_WEIGHT": 2.0, "DETECTION_WEIGHT": 3.0}
    cfg.MODEL.BACKBONE_3D.LOSS_CONFIG = {"RMAE_WEIGHT": 4.0}
    weights = resolve_detector_loss_config(cfg.MODEL, cfg)
    assert weights["RMAE_WEIGHT"] == 4.0 and weights["DETECTION_WEIGHT"] == 3.0
    other = _cfg()
    assert resolve_detector_loss_config(other.MODEL, cfg)["DETECTION_WEIGHT"] == 1.0  # not this model's cfg
