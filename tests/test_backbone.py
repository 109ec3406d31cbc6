"""RMAECMAEBackbonePhase1: pretraining path, teacher, fine-tune path, config checks."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from easydict import EasyDict
from torch import nn

from pcdet_rmae_ts.models.backbone import LossWeights, RMAECMAEBackbonePhase1
from pcdet_rmae_ts.teacher import frozen_bn_buffers

SEEDS = Path(__file__).resolve().parent / "data" / "seed-configs"  # the user's original configs
PKG_CFGS = Path(__file__).resolve().parents[1] / "pcdet_rmae_ts" / "cfgs" / "custom_models"
RANGE = [-25.6, -25.6, -3.0, 25.6, 25.6, 3.0]
VOXEL = [0.4, 0.4, 0.4]
GRID = [128, 128, 15]


def seed_backbone_cfg(name: str) -> EasyDict:
    for folder in (PKG_CFGS, SEEDS):
        path = folder / name
        if path.exists():
            return EasyDict(yaml.safe_load(path.read_text())).MODEL.BACKBONE_3D
    pytest.fail(f"seed config {name} not found in {PKG_CFGS} or {SEEDS}")


def small(cfg: EasyDict, **overrides) -> EasyDict:
    cfg = copy.deepcopy(cfg)
    cfg.update(CHANNELS=[8, 8, 16, 16, 16], OUT_CHANNEL=16,
               OCCUPANCY_DECODER={"HIDDEN_CHANNELS": 16, "REDUCED_CHANNELS": 8})
    cfg.update(overrides)
    return cfg


def make_scene(seed: int, batch: int = 2, n: int = 3000):
    """A ground ring plus a few boxes of voxels, as (features, coords)."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.randint(0, batch, (n, 1), generator=gen),
                        torch.randint(0, 4, (n, 1), generator=gen),
                        torch.randint(0, 128, (n, 2), generator=gen)], 1)
    box = torch.cartesian_prod(torch.arange(batch), torch.arange(4, 9), torch.arange(60, 70), torch.arange(80, 90))
    coords = torch.unique(torch.cat([coords, box]), dim=0).int()
    features = torch.randn(coords.shape[0], 4, generator=gen)
    return features, coords


def batch_dict(seed=0, batch=2, step=0):
    features, coords = make_scene(seed, batch)
    return {"voxel_features": features, "voxel_coords": coords, "batch_size": batch, "global_step": step}


@pytest.fixture(scope="module")
def pretrain_cfg():
    return seed_backbone_cfg("rmae_cmae_isarc_4class_pretraining_phase1.yaml")


def build(cfg):
    return RMAECMAEBackbonePhase1(cfg, input_channels=4, grid_size=GRID, voxel_size=VOXEL, point_cloud_range=RANGE)


def test_seed_pretraining_backbone_forward_backward(pretrain_cfg):
    torch.manual_seed(0)
    model = build(small(pretrain_cfg)).train()
    model(batch_dict())
    loss, tb = model.get_loss()
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("student_projector"):
            continue  # trained only by the Phase 2 teacher-student losses
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), name
    for key in ("loss", "loss_rmae", "occ_acc", "occ_precision", "occ_recall", "occ_pos_ratio",
                "occ_masked_recall", "mask_ratio", "mask_ratio_near", "mask_ratio_mid", "mask_ratio_far",
                "ts_cosine_similarity"):
        assert key in tb, key


def test_student_sees_masked_voxels_and_outputs_are_2d(pretrain_cfg):
    model = build(small(pretrain_cfg)).train()
    batch = model(batch_dict())
    mask = batch["rmae_mask"]
    assert 0 < int(mask.keep.sum()) < mask.keep.numel()
    student = batch["multi_scale_3d_features"]["x_conv1"]
    assert student.indices.shape[0] == int(mask.keep.sum())
    assert batch["encoded_spconv_tensor"].indices.shape[1] == 3


@pytest.mark.parametrize("kind", ["identical", "ema"])
def test_teacher_features_are_separate_and_gradient_free(pretrain_cfg, kind):
    model = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE=kind)).train()
    batch = model(batch_dict())
    teacher = batch["teacher_outputs"]
    for name in ("x_conv1", "x_conv2", "x_conv3", "x_conv4"):
        t = teacher["multi_scale_3d_features"][name]
        s = batch["multi_scale_3d_features"][name]
        assert t is not s and t.features is not s.features
        assert not t.features.requires_grad
        assert t.indices.shape[0] != s.indices.shape[0], "the teacher sees the complete voxels"
    assert not teacher["encoded_spconv_tensor"].features.requires_grad
    assert not teacher["projected_bev"].requires_grad
    assert teacher["projected_bev"].shape[1] == 128


@pytest.mark.parametrize("kind", ["identical", "ema"])
def test_teacher_outputs_do_not_keep_the_rule_book_alive(pretrain_cfg, kind):
    model = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE=kind)).train()
    teacher = model(batch_dict())["teacher_outputs"]
    assert teacher["encoded_spconv_tensor"].indice_dict == {}
    assert all(t.indice_dict == {} for t in teacher["multi_scale_3d_features"].values())


def test_identical_teacher_adds_no_encoder_copy(pretrain_cfg):
    identical = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE="identical"))
    ema = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE="ema"))
    assert not any(k.startswith("teacher") for k in identical.state_dict())
    teacher_keys = {k[len("teacher."):] for k in ema.state_dict() if k.startswith("teacher.")}
    assert teacher_keys == set(ema.encoder_state_dict())
    assert all(not p.requires_grad for p in ema.teacher.parameters())


def test_teacher_bn_buffers_untouched_by_teacher_forward(pretrain_cfg):
    model = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE="ema")).train()
    before = copy.deepcopy(model.teacher.state_dict())
    model(batch_dict())
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_ema_update_moves_teacher_toward_student(pretrain_cfg):
    model = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE="ema", TEACHER_MOMENTUM=0.9))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    teacher_before = model.teacher.conv1[0].conv1.weight.clone()
    student = model.conv1[0].conv1.weight
    momentum = model.update_teacher(progress=0.0)
    assert momentum == pytest.approx(0.9)
    torch.testing.assert_close(model.teacher.conv1[0].conv1.weight, 0.9 * teacher_before + 0.1 * student)
    assert model.update_teacher(progress=1.0) == pytest.approx(1.0)


def test_teacher_runs_every_log_interval_when_its_weight_is_zero(pretrain_cfg):
    model = build(small(pretrain_cfg, TEACHER_LOG_INTERVAL=3)).train()
    ran = [("teacher_outputs" in model(batch_dict(step=s))) for s in range(6)]
    assert ran == [True, False, False, True, False, False]


def test_finetune_path_is_exactly_voxelnext(reference_path):
    cfg = seed_backbone_cfg("rmae_cmae_isarc_4class_finetune_phase1.yaml")
    model = RMAECMAEBackbonePhase1(cfg, input_channels=3, grid_size=[1408, 1408, 80], voxel_size=[0.1, 0.1, 0.2],
                                   point_cloud_range=[-70.4, -70.4, -6, 70.4, 70.4, 10])
    reference = json.loads(reference_path("voxelnext_backbone_state_dict.json").read_text())
    expected = reference["state_dict"]["input_channels=3"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.num_point_features == 128
    assert not hasattr(model, "occupancy_decoder") and not hasattr(model, "teacher")


def test_eval_mode_encodes_complete_voxels(pretrain_cfg):
    model = build(small(pretrain_cfg)).eval()
    features, coords = make_scene(1)
    with torch.no_grad():
        batch = model({"voxel_features": features, "voxel_coords": coords, "batch_size": 2})
    assert batch["multi_scale_3d_features"]["x_conv1"].indices.shape[0] == coords.shape[0]
    assert "rmae_mask" not in batch


def test_unknown_key_names_the_nearest_valid_key(pretrain_cfg):
    cfg = small(pretrain_cfg)
    cfg["MASKED_RATIOS"] = 0.5
    with pytest.raises(ValueError, match="MASKED_RATIOS.*did you mean 'MASKED_RATIO'"):
        build(cfg)


def test_no_placeholder_losses(pretrain_cfg):
    model = build(small(pretrain_cfg)).train()
    with pytest.raises(RuntimeError, match="before a training-mode forward"):
        model.get_loss()
    model(batch_dict())
    with pytest.raises(ValueError, match="no teacher-student loss is configured"):
        model.get_loss(LossWeights(rmae=1.0, teacher_student=0.5))
    with pytest.raises(ValueError, match="both 0"):
        model.get_loss(LossWeights(rmae=0.0, teacher_student=0.0))


def test_overfitting_one_scene_predicts_the_cells_it_never_sees(pretrain_cfg):
    """The same mask at every step: cells that only masked voxels occupy are never seen by the student,
    so only the complete-scene target can teach it that they are occupied."""
    torch.manual_seed(0)
    model = build(small(pretrain_cfg, MASKED_RATIO=0.6, MASKING_SEED=0)).train()
    model.masker.generator(torch.device("cpu"))
    mask_state = model.masker.state_dict()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, masked_recall = [], []
    for step in range(40):
        model.masker.load_state_dict(mask_state)
        model(batch_dict(seed=0, step=step))
        loss, tb = model.get_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        masked_recall.append(float(tb["occ_masked_recall"]))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert sum(masked_recall[-5:]) / 5 > 0.5, "occupied cells inside masked sectors are predicted"
    ret = model.forward_ret_dict
    shape = tuple(model.occupancy_shape)
    hidden = occupancy_of(ret["coords"], 2, shape, 8) - occupancy_of(ret["coords"][ret["mask"].keep], 2, shape, 8)
    assert int(hidden.sum()) >= 10, "fixture: cells that only masked voxels occupy"
    predicted = (ret["occupancy_logits"].detach() > 0).float()
    assert float((predicted * hidden).sum() / hidden.sum()) > 0.5


# ----------------------------------------------------------------------------- the R-MAE objective, by numbers
def occupancy_of(coords: torch.Tensor, batch: int, shape, stride: int) -> torch.Tensor:
    """(B, Z', Y', X') {0, 1}: a coarse cell is 1 iff one of the (N, 4) [b, z, y, x] voxels falls in it (loop)."""
    out = torch.zeros(batch, *shape)
    for b, z, y, x in coords.tolist():
        out[b, z // stride, y // stride, x // stride] = 1.0
    return out


def per_scene_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over each scene's cells, then over the batch (every cell of these grids is in range)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1).mean()


def small_occ(cfg, stride: int, **overrides):
    return small(cfg, OCCUPANCY_DECODER={"HIDDEN_CHANNELS": 16, "REDUCED_CHANNELS": 8, "STRIDE": stride}, **overrides)


@pytest.mark.parametrize("stride", [8, 4])
def test_occupancy_loss_targets_the_complete_scene(pretrain_cfg, stride):
    """R-MAE: the target is the occupancy of every voxel, the masked ones included, not of what the student saw."""
    torch.manual_seed(0)
    model = build(small_occ(pretrain_cfg, stride, MASKED_RATIO=0.8, MASKING_SEED=0)).train()
    batch = batch_dict(seed=2)
    coords = batch["voxel_coords"].clone()
    model(batch)
    _, tb = model.get_loss(LossWeights(rmae=1.0, teacher_student=0.0))
    logits = model.forward_ret_dict["occupancy_logits"].detach()
    shape = tuple(-(-n // stride) for n in model.sparse_shape)
    assert logits.shape == (2, *shape)
    assert bool(model.occupancy_valid.all()), "fixture: every coarse cell of this grid lies in the range"
    complete = occupancy_of(coords, 2, shape, stride)
    visible = occupancy_of(coords[batch["rmae_mask"].keep], 2, shape, stride)
    assert int((complete - visible).sum()) >= 10, "fixture: cells that only masked voxels occupy"
    expected = per_scene_bce(logits, complete)
    assert abs(float(expected) - float(per_scene_bce(logits, visible))) > 1e-3
    torch.testing.assert_close(tb["loss_rmae"], expected)
    torch.testing.assert_close(tb["occ_pos_ratio"], complete.mean())


def test_stride4_decodes_the_x_conv3_sites(pretrain_cfg):
    model = build(small_occ(pretrain_cfg, 4)).train()
    batch = model(batch_dict(seed=1))
    x_conv3 = batch["multi_scale_3d_features"]["x_conv3"]
    logits = model.forward_ret_dict["occupancy_logits"]
    assert logits.shape == (2, *x_conv3.spatial_shape)  # one logit per x_conv3 cell, z included
    source = model._occupancy_source_tensor(batch)
    assert source is x_conv3


class KnownLoss(nn.Module):
    """A teacher-student loss whose value is known: ``value`` (plus 0 x a student feature, for a graph)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, student, teacher, **context):
        self.calls += 1
        assert teacher["encoded_spconv_tensor"] is not student["encoded_spconv_tensor"]
        return student["encoded_spconv_tensor"].features.sum() * 0.0 + self.value, {}


@pytest.mark.parametrize("rmae, ts", [(0.3, 2.0), (0.0, 1.0)])
def test_total_loss_applies_every_weight(pretrain_cfg, rmae, ts):
    """loss = RMAE_WEIGHT x occupancy + TEACHER_STUDENT_WEIGHT x sum(per-loss weight x loss)."""
    torch.manual_seed(0)
    model = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE="identical")).train()
    first, second = KnownLoss(0.7), KnownLoss(1.9)
    model.add_teacher_student_loss("first", first, weight=1.0)
    model.add_teacher_student_loss("second", second, weight=0.25)
    model.loss_weights = weights = LossWeights(rmae=rmae, teacher_student=ts)
    model(batch_dict(step=1))  # not a log step: the teacher runs because its loss is weighted
    loss, tb = model.get_loss(weights)
    assert first.calls == 1 and second.calls == 1
    ts_total = 1.0 * 0.7 + 0.25 * 1.9
    torch.testing.assert_close(tb["loss_teacher_student"], torch.tensor(ts_total))
    assert float(tb["loss_rmae"]) > 0.1
    torch.testing.assert_close(loss.detach(), rmae * tb["loss_rmae"] + ts * ts_total)
    torch.testing.assert_close(tb["loss"], loss.detach())


def test_phase1_total_loss_is_the_weighted_occupancy_loss(pretrain_cfg):
    model = build(small(pretrain_cfg)).train()
    model(batch_dict())
    loss, tb = model.get_loss(LossWeights(rmae=0.25, teacher_student=0.0))
    assert "loss_teacher_student" not in tb
    torch.testing.assert_close(loss.detach(), 0.25 * tb["loss_rmae"])


def _by_site(tensor) -> torch.Tensor:
    """Features of a sparse tensor in a canonical order (sorted by their indices)."""
    idx = tensor.indices.long()
    key = torch.zeros_like(idx[:, 0])
    for col in range(idx.shape[1]):
        key = key * 4096 + idx[:, col]
    return tensor.features[torch.argsort(key)]


@pytest.mark.parametrize("kind", ["identical", "ema"])
def test_teacher_encodes_the_complete_voxels(pretrain_cfg, kind):
    """The teacher's features are those of the complete (unmasked) voxels, through the teacher's weights."""
    torch.manual_seed(0)
    model = build(small(pretrain_cfg, TEACHER_BACKBONE_TYPE=kind, MASKED_RATIO=0.8, MASKING_SEED=0)).train()
    batch = batch_dict(seed=3)
    features, coords = batch["voxel_features"].clone(), batch["voxel_coords"].clone()
    out = model(batch)
    assert not bool(out["rmae_mask"].keep.all())
    teacher = out["teacher_outputs"]
    conv1 = teacher["multi_scale_3d_features"]["x_conv1"]
    assert {tuple(r) for r in conv1.indices.tolist()} == {tuple(r) for r in coords.tolist()}
    encoder = model if kind == "identical" else model.teacher
    with torch.no_grad(), frozen_bn_buffers(encoder):
        reference = encoder.encode(features, coords, 2)
    for name in ("x_conv1", "x_conv4"):
        torch.testing.assert_close(_by_site(teacher["multi_scale_3d_features"][name]),
                                   _by_site(reference["multi_scale_3d_features"][name]))
    torch.testing.assert_close(_by_site(teacher["encoded_spconv_tensor"]), _by_site(reference["encoded_spconv_tensor"]))
