"""Tests for pcdet_rmae_ts.optim.differential_lr: groups, optimizers, schedules, resume."""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet_rmae_ts.config import ConfigError, cfg_from_yaml_file
from pcdet_rmae_ts.optim import build_scheduler, create_optimizer_with_differential_lr, uses_differential_lr
from pcdet_rmae_ts.optim.differential_lr import BACKBONE_LAYERS

REPO = Path(__file__).resolve().parents[1]
ITERS, EPOCHS = 7, 5  # 35 steps; int(35 * 0.4) = 14 rising steps


class ToyBackbone(nn.Module):
    """Named like VoxelResBackBone8xVoxelNeXt, plus a parameter owned by a module with children."""

    def __init__(self) -> None:
        super().__init__()
        for name in BACKBONE_LAYERS:
            setattr(self, name, nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
        self.mask_token = nn.Parameter(torch.randn(4))


class ToyDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vfe = nn.Linear(3, 4)
        self.backbone_3d = ToyBackbone()
        self.dense_head = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        self.other = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.ones(1))  # directly on a module that has children


def _model(seed: int = 0) -> ToyDetector:
    torch.manual_seed(seed)
    return ToyDetector()


def _optim_cfg(**overrides) -> EasyDict:
    cfg = {"OPTIMIZER": "adam_onecycle", "LR": 0.003, "WEIGHT_DECAY": 0.01, "MOMENTUM": 0.9,
           "DIFFERENTIAL_LR": True, "BACKBONE_LR_RATIO": 0.1, "DENSE_HEAD_LR_RATIO": 2.0,
           "MOMS": [0.95, 0.85], "PCT_START": 0.4, "DIV_FACTOR": 10, "DECAY_STEP_LIST": [3, 4],
           "LR_DECAY": 0.1, "LR_CLIP": 1e-7, "LR_WARMUP": False, "WARMUP_EPOCH": 1, "GRAD_NORM_CLIP": 10}
    cfg.update(overrides)
    return EasyDict(cfg)


def _build(cfg: EasyDict, model: nn.Module | None = None, last_epoch: int = -1):
    model = model or _model()
    optimizer = create_optimizer_with_differential_lr(model, cfg)
    scheduler, warmup = build_scheduler(optimizer, ITERS, EPOCHS, last_epoch, cfg)
    assert warmup is None
    return model, optimizer, scheduler


def _group_of(optimizer, param) -> str:
    names = [g["name"] for g in optimizer.param_groups if any(p is param for p in g["params"])]
    assert len(names) == 1, names
    return names[0]


# ----------------------------------------------------------------------------- references
def reference_one_cycle(step: int, total: int, lr_max: float, div: float, pct: float, moms) -> tuple:
    """OpenPCDet's OneCycle, written the way its phase table works (loops are fine here)."""
    def cos(start, end, p):
        return end + (start - end) / 2 * (math.cos(math.pi * p) + 1)

    low = lr_max / div
    split = int(pct * total)
    lr_phases = [(0, split, lambda p: cos(low, lr_max, p)), (split, total, lambda p: cos(lr_max, low / 1e4, p))]
    mom_phases = [(0, split, lambda p: cos(moms[0], moms[1], p)), (split, total, lambda p: cos(moms[1], moms[0], p))]
    lr = mom = None
    for start, end, fn in lr_phases:
        if step >= start:
            lr = fn((step - start) / (end - start))
    for start, end, fn in mom_phases:
        if step >= start:
            mom = fn((step - start) / (end - start))
    return lr, mom


def reference_step_decay(step: int, cfg: EasyDict) -> float:
    warmup_iters = cfg.WARMUP_EPOCH * ITERS if cfg.LR_WARMUP else 0
    if step < warmup_iters:
        eta_min = cfg.LR / cfg.DIV_FACTOR
        return eta_min + (cfg.LR - eta_min) * (1 - math.cos(math.pi * step / warmup_iters)) / 2
    factor = 1.0
    for epoch in cfg.DECAY_STEP_LIST:
        if step >= epoch * ITERS:
            factor *= cfg.LR_DECAY
    return cfg.LR * max(factor, cfg.LR_CLIP / cfg.LR)


EXPECTED_RATIOS = {"backbone": 0.1, "dense_head": 2.0, "default": 1.0}


# ----------------------------------------------------------------------------- groups
def test_every_trainable_parameter_in_exactly_one_group():
    model, optimizer, _ = _build(_optim_cfg())
    held = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(held) == len({id(p) for p in held})  # no duplicates
    assert {id(p) for p in held} == {id(p) for p in trainable}
    assert all(p is not model.frozen.weight for p in held)


def test_group_membership_and_ratios():
    model, optimizer, _ = _build(_optim_cfg())
    assert _group_of(optimizer, model.vfe.weight) == "backbone"
    assert _group_of(optimizer, model.backbone_3d.conv3[0].weight) == "backbone"
    assert _group_of(optimizer, model.backbone_3d.mask_token) == "backbone"
    assert _group_of(optimizer, model.dense_head[1].bias) == "dense_head"
    assert _group_of(optimizer, model.other.weight) == "default"
    assert _group_of(optimizer, model.logit_scale) == "default"
    assert {g["name"]: g["lr_scale"] for g in optimizer.param_groups} == EXPECTED_RATIOS


def test_groups_are_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="pcdet_rmae_ts.optim.differential_lr"):
        _build(_optim_cfg())
    lines = [r.getMessage() for r in caplog.records]
    for name, ratio in EXPECTED_RATIOS.items():
        assert sum(f"group {name} " in line for line in lines) == 1
        line = next(line for line in lines if f"group {name} " in line)
        assert f"ratio {ratio:<8.4g}" in line and f"LR {0.003 * ratio:<10.4g}" in line


def test_explicit_groups_layer_decay_and_no_decay():
    cfg = _optim_cfg(DIFFERENTIAL_LR={
        "GROUPS": [{"NAME": "backbone", "PREFIXES": ["vfe.", "backbone_3d."], "LR_RATIO": 0.5},
                   {"NAME": "head", "PREFIXES": ["dense_head."], "LR_RATIO": 3.0, "WEIGHT_DECAY": 0.0},
                   {"NAME": "last_head_layer", "PREFIXES": ["dense_head.1."], "LR_RATIO": 4.0}],
        "DEFAULT_LR_RATIO": 0.7, "LAYER_DECAY": 0.5, "NO_DECAY_NORM_BIAS": True})
    model, optimizer, _ = _build(cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    depth = {name: len(BACKBONE_LAYERS) - 1 - i for i, name in enumerate(BACKBONE_LAYERS)}
    for layer in BACKBONE_LAYERS:
        assert groups[f"backbone.{layer}"]["lr_scale"] == pytest.approx(0.5 * 0.5 ** depth[layer])
        assert groups[f"backbone.{layer}.no_decay"]["weight_decay"] == 0.0
    assert groups["backbone.shared_conv"]["lr_scale"] > groups["backbone.conv_out"]["lr_scale"]
    assert groups["backbone.conv1"]["lr_scale"] > groups["backbone.conv_input"]["lr_scale"]
    assert groups["backbone.vfe"]["lr_scale"] == pytest.approx(0.5 * 0.5 ** len(BACKBONE_LAYERS))
    assert _group_of(optimizer, model.backbone_3d.mask_token) == "backbone.no_decay"  # 1-D, top of backbone
    assert _group_of(optimizer, model.dense_head[1].weight) == "last_head_layer"  # longest prefix wins
    assert groups["head"]["weight_decay"] == 0.0 and groups["head"]["lr_scale"] == 3.0
    assert groups["default"]["lr_scale"] == 0.7 and groups["default"]["weight_decay"] == 0.01
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert sorted(map(id, held)) == sorted(id(p) for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("section, bad, near", [
    ({"GRUOPS": []}, "GRUOPS", "GROUPS"),
    ({"LAYER_DECAYS": 0.9}, "LAYER_DECAYS", "LAYER_DECAY"),
    ({"GROUPS": [{"NAME": "b", "PREFIX": ["vfe."], "LR_RATIO": 1.0}]}, "PREFIX", "PREFIXES"),
])
def test_unknown_keys_name_the_nearest_valid_key(section, bad, near):
    with pytest.raises(ConfigError) as err:
        create_optimizer_with_differential_lr(_model(), _optim_cfg(DIFFERENTIAL_LR=section))
    assert bad in str(err.value) and f"did you mean '{near}'" in str(err.value)


def test_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'BACKBONE_LR_RATIO'"):
        create_optimizer_with_differential_lr(_model(), _optim_cfg(BACKBONE_LR_RATO=0.2))
    with pytest.raises(ConfigError, match="OPTIMIZATION.OPTIMIZER.*adam_onecycle"):
        create_optimizer_with_differential_lr(_model(), _optim_cfg(OPTIMIZER="adam_onecylce"))
    with pytest.raises(ConfigError, match="DENSE_HEAD_LR_RATIO"):
        create_optimizer_with_differential_lr(_model(), _optim_cfg(DENSE_HEAD_LR_RATIO=-1))
    with pytest.raises(ConfigError, match="backbone"):
        create_optimizer_with_differential_lr(_model(), _optim_cfg(DIFFERENTIAL_LR={
            "GROUPS": [{"NAME": "enc", "PREFIXES": ["vfe."], "LR_RATIO": 1.0}], "FREEZE_BACKBONE_EPOCHS": 1}))


def test_uses_differential_lr():
    assert uses_differential_lr(_optim_cfg())
    assert uses_differential_lr(_optim_cfg(DIFFERENTIAL_LR={"LAYER_DECAY": 0.9}))
    assert not uses_differential_lr(_optim_cfg(DIFFERENTIAL_LR={"ENABLED": False}))
    assert not uses_differential_lr(_optim_cfg(DIFFERENTIAL_LR=False))
    assert not uses_differential_lr(EasyDict({"OPTIMIZER": "adam_onecycle"}))


# ----------------------------------------------------------------------------- one-cycle
def _assert_follows_one_cycle(optimizer, scheduler, cfg, ratios, call_with_epoch: bool) -> None:
    total = ITERS * EPOCHS
    for it in range(total):
        if call_with_epoch:
            scheduler.step(it, it // ITERS)  # official tree
        else:
            scheduler.step(it)  # VoxelNeXt fork
        lr, mom = reference_one_cycle(it, total, cfg.LR, cfg.DIV_FACTOR, cfg.PCT_START, cfg.MOMS)
        assert float(optimizer.lr) == pytest.approx(lr, rel=1e-12)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(lr * ratios[group["name"]], rel=1e-12), (it, group["name"])
            assert group["betas"][0] == pytest.approx(mom, rel=1e-12)
            assert group["betas"][1] == 0.99
            assert type(group["lr"]) is float


@pytest.mark.parametrize("call_with_epoch", [True, False])
def test_one_cycle_every_group_follows_reference_times_ratio(call_with_epoch):
    cfg = _optim_cfg()
    _, optimizer, scheduler = _build(cfg)
    _assert_follows_one_cycle(optimizer, scheduler, cfg, EXPECTED_RATIOS, call_with_epoch)
    assert scheduler.get_group_lrs() == {g["name"]: g["lr"] for g in optimizer.param_groups}


def test_differential_lr_off_is_plain_one_cycle():
    cfg = _optim_cfg(DIFFERENTIAL_LR=False)
    model, optimizer, scheduler = _build(cfg)
    assert [g["name"] for g in optimizer.param_groups] == ["all"]
    assert optimizer.param_groups[0]["lr_scale"] == 1.0
    assert len(optimizer.param_groups[0]["params"]) == len([p for p in model.parameters() if p.requires_grad])
    _assert_follows_one_cycle(optimizer, scheduler, cfg, {"all": 1.0}, call_with_epoch=True)


def test_momentum_cycles_high_low_high():
    cfg = _optim_cfg()
    _, optimizer, scheduler = _build(cfg)
    moms, lrs = [], []
    for it in range(ITERS * EPOCHS):
        scheduler.step(it)
        moms.append(optimizer.param_groups[0]["betas"][0])
        lrs.append(float(optimizer.lr))
    peak = lrs.index(max(lrs))
    assert peak == int(ITERS * EPOCHS * cfg.PCT_START)
    assert moms[0] == pytest.approx(0.95) and moms[peak] == pytest.approx(0.85)
    assert all(a > b for a, b in zip(moms[:peak], moms[1:peak + 1]))  # falls while LR rises
    assert all(a < b for a, b in zip(moms[peak:-1], moms[peak + 1:]))  # rises while LR falls
    assert lrs[-1] < cfg.LR / cfg.DIV_FACTOR


def test_tiny_run_does_not_divide_by_zero():
    cfg = _optim_cfg()
    model = _model()
    optimizer = create_optimizer_with_differential_lr(model, cfg)
    scheduler, _ = build_scheduler(optimizer, 1, 2, -1, cfg)  # int(2 * 0.4) == 0 rising steps
    scheduler.step(0)
    assert float(optimizer.lr) == pytest.approx(cfg.LR)


def test_decoupled_weight_decay_uses_each_groups_lr():
    cfg = _optim_cfg(DIFFERENTIAL_LR={"GROUPS": [
        {"NAME": "backbone", "PREFIXES": ["vfe.", "backbone_3d."], "LR_RATIO": 0.1},
        {"NAME": "dense_head", "PREFIXES": ["dense_head."], "LR_RATIO": 2.0, "WEIGHT_DECAY": 0.05}]})
    model, optimizer, scheduler = _build(cfg)
    scheduler.step(10)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only the weight decay moves the parameters
    optimizer.step()
    for group in optimizer.param_groups:
        wd = 0.05 if group["name"] == "dense_head" else 0.01
        assert group["weight_decay"] == wd
        for p in group["params"]:
            expected = before[id(p)] * (1 - group["lr"] * wd)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(model.frozen.weight.detach(), before[id(model.frozen.weight)], rtol=0, atol=0)


def test_freeze_backbone_epochs():
    cfg = _optim_cfg(DIFFERENTIAL_LR={"FREEZE_BACKBONE_EPOCHS": 2})
    *_, scheduler = _build(cfg)
    total = ITERS * EPOCHS
    for it in range(total):
        scheduler.step(it)
        lr, _ = reference_one_cycle(it, total, cfg.LR, cfg.DIV_FACTOR, cfg.PCT_START, cfg.MOMS)
        lrs = scheduler.get_group_lrs()
        expected_backbone = 0.0 if it < 2 * ITERS else lr * 0.1
        assert lrs["backbone"] == pytest.approx(expected_backbone, abs=0, rel=1e-12)
        assert lrs["dense_head"] == pytest.approx(lr * 2.0, rel=1e-12)
    scheduler.step(0, epoch=2)  # an explicit epoch wins over it // iters
    assert scheduler.get_group_lrs()["backbone"] > 0


# ----------------------------------------------------------------------------- resume
def _plain_types_only(value) -> bool:
    if isinstance(value, dict):
        return all(_plain_types_only(k) and _plain_types_only(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain_types_only(v) for v in value)
    return value is None or type(value) in (int, float, bool, str) or isinstance(value, torch.Tensor)


@pytest.mark.parametrize("stop_at", [5, 14, 22])
def test_resume_mid_cycle_gives_same_next_lrs(stop_at):
    cfg = _optim_cfg()
    model, optimizer, scheduler = _build(cfg)
    for it in range(stop_at):
        scheduler.step(it)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                "it": stop_at}, buffer)
    assert _plain_types_only(optimizer.state_dict()["param_groups"]) and _plain_types_only(scheduler.state_dict())
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    model2 = _model(seed=1)
    model2.load_state_dict(model.state_dict())
    optimizer2 = create_optimizer_with_differential_lr(model2, cfg)
    optimizer2.load_state_dict(checkpoint["optimizer_state"])
    scheduler2, _ = build_scheduler(optimizer2, ITERS, EPOCHS, stop_at // ITERS + 1, cfg)
    scheduler2.load_state_dict(checkpoint["scheduler_state"])
    assert scheduler2.get_group_lrs() == scheduler.get_group_lrs()
    for it in range(stop_at, ITERS * EPOCHS):
        scheduler.step(it)
        scheduler2.step(it)
        assert scheduler2.get_group_lrs() == scheduler.get_group_lrs()
        assert [g["betas"] for g in optimizer2.param_groups] == [g["betas"] for g in optimizer.param_groups]
        assert float(optimizer2.lr) == float(optimizer.lr)


# ----------------------------------------------------------------------------- step decay + warmup
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("warmup", [False, True])
def test_step_decay_and_warmup_keep_ratios(name, warmup):
    cfg = _optim_cfg(OPTIMIZER=name, LR_WARMUP=warmup, WARMUP_EPOCH=1)
    _, optimizer, scheduler = _build(cfg)
    for it in range(ITERS * EPOCHS):
        scheduler.step(it, it // ITERS)
        base = reference_step_decay(it, cfg)
        assert float(optimizer.lr) == pytest.approx(base, rel=1e-12)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(base * EXPECTED_RATIOS[group["name"]], rel=1e-12)
    if warmup:
        scheduler.step(0)
        assert float(optimizer.lr) == pytest.approx(cfg.LR / cfg.DIV_FACTOR)
    opt_type = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    assert type(optimizer) is opt_type


def test_adam_keeps_openpcdet_l2_weight_decay():
    _, optimizer, _ = _build(_optim_cfg(OPTIMIZER="adam"))
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    assert isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)


def test_shipped_finetune_config_builds():
    cfg = cfg_from_yaml_file(REPO / "cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml")
    _, optimizer, scheduler = _build(cfg.OPTIMIZATION)
    assert {g["name"]: g["lr_scale"] for g in optimizer.param_groups} == EXPECTED_RATIOS
    scheduler.step(int(ITERS * EPOCHS * 0.4))
    assert scheduler.get_group_lrs() == pytest.approx({"backbone": 0.0003, "dense_head": 0.006, "default": 0.003})


class ToyTwoStageDetector(ToyDetector):
    """A two-stage detector: point and RoI heads beside the dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.point_head = nn.Linear(4, 2)
        self.roi_head = nn.Linear(4, 2)


def test_point_and_roi_heads_default_to_the_dense_head_ratio():
    torch.manual_seed(0)
    model = ToyTwoStageDetector()
    _, optimizer, _ = _build(_optim_cfg(DENSE_HEAD_LR_RATIO=3.0), model)
    ratios = {g["name"]: g["lr_scale"] for g in optimizer.param_groups}
    assert _group_of(optimizer, model.point_head.weight) == "point_head"
    assert _group_of(optimizer, model.roi_head.bias) == "roi_head"
    assert ratios["point_head"] == 3.0 and ratios["roi_head"] == 3.0 and ratios["dense_head"] == 3.0
    _, optimizer, _ = _build(_optim_cfg(POINT_HEAD_LR_RATIO=0.5, ROI_HEAD_LR_RATIO=0.25), ToyTwoStageDetector())
    ratios = {g["name"]: g["lr_scale"] for g in optimizer.param_groups}
    assert ratios["point_head"] == 0.5 and ratios["roi_head"] == 0.25 and ratios["dense_head"] == 2.0
