"""Trainer.train_step on a tiny model: LR index, clipping, non-finite loss, EMA teacher once per step."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet_rmae_ts.engine.trainer import LoopConfig, Trainer, TrainState
from pcdet_rmae_ts.optim import build_scheduler, create_optimizer_with_differential_lr
from pcdet_rmae_ts.teacher import cosine_momentum

ITERS, EPOCHS = 3, 2
LR, BASE_MOMENTUM = 0.1, 0.9


class TinyBackbone(nn.Module):
    """Stands in for RMAECMAEBackbonePhase1: a student weight, an EMA teacher copy, ``update_teacher``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.teacher_weight = nn.Parameter(self.weight.detach().clone(), requires_grad=False)
        self.progress_seen = []

    @torch.no_grad()
    def update_teacher(self, progress: float) -> float:
        self.progress_seen.append(progress)
        momentum = cosine_momentum(progress, BASE_MOMENTUM)
        self.teacher_weight.lerp_(self.weight, 1.0 - momentum)
        return momentum


class TinyModel(nn.Module):
    """The trainer's model protocol, like PretrainModel: ``forward`` -> (loss, tb_dict) with
    loss = scale * (w . x - 1)^2 (gradient 2 scale (w . x - 1) x), ``after_optimizer_step(progress)``."""

    def __init__(self):
        super().__init__()
        self.backbone_3d = TinyBackbone()
        self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))
        self.steps_seen = []

    def after_optimizer_step(self, progress: float) -> dict:
        self.global_step += 1
        return {"teacher_momentum": self.backbone_3d.update_teacher(progress)}

    def forward(self, batch):
        self.steps_seen.append(batch["global_step"])
        w = self.backbone_3d.weight
        loss = batch["scale"] * ((w * batch["x"]).sum() - 1.0) ** 2
        return loss, {"loss": loss.detach()}


def expected_grad(w: torch.Tensor, batch: dict) -> torch.Tensor:
    return 2 * batch["scale"] * ((w * batch["x"]).sum() - 1.0) * batch["x"]


def make_batch(i: int, scale: float = 1.0) -> dict:
    gen = torch.Generator().manual_seed(i)
    return {"x": torch.randn(3, generator=gen) + 1.0, "scale": torch.tensor(scale), "batch_size": 1}


def make_trainer(tmp_path, clip: float = 1e6):
    model = TinyModel()
    # SGD without momentum: the update is exactly -lr x (clipped) gradient. Warm-up: the LR differs at every step.
    cfg = EasyDict({"OPTIMIZER": "sgd", "LR": LR, "MOMENTUM": 0.0, "WEIGHT_DECAY": 0.0, "DECAY_STEP_LIST": [100],
                    "LR_WARMUP": True, "WARMUP_EPOCH": EPOCHS, "DIV_FACTOR": 10.0})
    optimizer = create_optimizer_with_differential_lr(model, cfg)
    scheduler, _ = build_scheduler(optimizer, ITERS, EPOCHS, -1, cfg)
    loop = LoopConfig(total_epochs=EPOCHS, grad_norm_clip=clip, ckpt_dir=tmp_path)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loader = [make_batch(i) for i in range(ITERS)]
    trainer = Trainer(model, optimizer, scheduler, loader, sampler=None, device=torch.device("cpu"), loop=loop,
                      logger=logging.getLogger("test_trainer_step"), scaler=scaler)
    return trainer, model, scheduler


def test_each_step_uses_the_lr_of_its_own_iteration_and_updates_the_teacher_once(tmp_path):
    trainer, model, scheduler = make_trainer(tmp_path)
    backbone = model.backbone_3d
    state = TrainState()
    total = ITERS * EPOCHS
    for it in range(total):
        state.epoch = it // ITERS
        batch = make_batch(it)
        w_before = backbone.weight.detach().clone()
        teacher_before = backbone.teacher_weight.detach().clone()
        tb = trainer.train_step(dict(batch), state)
        lr = scheduler.schedule.lr_at(it)
        assert lr != pytest.approx(scheduler.schedule.lr_at(it + 1))  # fixture: the index matters
        assert scheduler.last_it == it
        torch.testing.assert_close(backbone.weight.detach(), w_before - lr * expected_grad(w_before, batch))
        # EMA once, after the optimizer step, with progress = global step after this step / total steps
        progress = (it + 1) / total
        assert backbone.progress_seen == pytest.approx([(k + 1) / total for k in range(it + 1)])
        momentum = cosine_momentum(progress, BASE_MOMENTUM)
        assert float(tb["teacher_momentum"]) == pytest.approx(momentum)
        torch.testing.assert_close(backbone.teacher_weight.detach(),
                                   momentum * teacher_before + (1 - momentum) * backbone.weight.detach())
        assert int(model.global_step) == it + 1 and model.steps_seen[-1] == it
        state.it += 1  # what train_one_epoch does after the step


def test_gradient_is_clipped_to_grad_norm_clip(tmp_path):
    clip = 0.05
    trainer, model, scheduler = make_trainer(tmp_path, clip=clip)
    w = model.backbone_3d.weight
    batch = make_batch(7, scale=3.0)
    w_before = w.detach().clone()
    grad = expected_grad(w_before, batch)
    norm = float(grad.norm())
    assert norm > 10 * clip  # fixture: the clip is active
    tb = trainer.train_step(dict(batch), TrainState())
    assert float(tb["grad_norm"]) == pytest.approx(norm, rel=1e-5)  # logged before clipping
    lr = scheduler.schedule.lr_at(0)
    step = w_before - w.detach()
    assert float(step.norm()) == pytest.approx(lr * clip, rel=1e-4)
    torch.testing.assert_close(step, lr * grad * clip / (norm + 1e-6))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_before_anything_changes(tmp_path, bad):
    trainer, model, _ = make_trainer(tmp_path)
    state = TrainState(epoch=1, it=4)
    trainer.train_step(make_batch(0), state)  # a good step first: the optimizer has state, the teacher moved
    state.it += 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    progress_calls = list(model.backbone_3d.progress_seen)
    with pytest.raises(FloatingPointError, match="Non-finite loss .* at iteration 5"):
        trainer.train_step(make_batch(1, scale=bad), state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a step with a non-finite loss"
    assert model.backbone_3d.progress_seen == progress_calls  # no EMA update either
    assert all(math.isfinite(float(p)) for p in model.parameters() for p in p.detach().flatten())


def test_one_epoch_steps_the_schedule_and_the_teacher_once_per_batch(tmp_path):
    trainer, model, scheduler = make_trainer(tmp_path)

    class Sampler:
        def set_epoch(self, epoch):
            self.epoch = epoch

    trainer.sampler = Sampler()
    state = TrainState(epoch=1, it=ITERS)
    trainer.train_one_epoch(state)
    total = ITERS * EPOCHS
    assert state.it == 2 * ITERS and trainer.sampler.epoch == 1
    assert model.steps_seen == list(range(ITERS, 2 * ITERS))
    assert model.backbone_3d.progress_seen == pytest.approx([(k + 1) / total for k in range(ITERS, 2 * ITERS)])
    assert scheduler.last_it == 2 * ITERS - 1


def test_pretrain_model_after_optimizer_step_counts_and_moves_the_ema_teacher():
    """The real model behind the protocol: global step + 1 and one EMA step with cosine_momentum(progress)."""
    import copy
    from pathlib import Path

    import yaml

    from pcdet_rmae_ts.models.pretrain_model import PretrainModel

    seed = Path(__file__).resolve().parent / "data" / "seed-configs" / "rmae_cmae_isarc_4class_pretraining_phase1.yaml"
    model_cfg = EasyDict(yaml.safe_load(seed.read_text())).MODEL
    model_cfg.BACKBONE_3D.update(CHANNELS=[8, 8, 16, 16, 16], OUT_CHANNEL=16, TEACHER_BACKBONE_TYPE="ema",
                                 ENABLE_TEACHER_STUDENT=True, TEACHER_MOMENTUM=0.9,
                                 OCCUPANCY_DECODER={"HIDDEN_CHANNELS": 16, "REDUCED_CHANNELS": 8})
    torch.manual_seed(0)
    model = PretrainModel(model_cfg, 4, [128, 128, 15], [0.4, 0.4, 0.4], [-25.6, -25.6, -3.0, 25.6, 25.6, 3.0])
    backbone = model.backbone_3d
    with torch.no_grad():
        for p in backbone.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    teacher_before = copy.deepcopy(backbone.teacher.state_dict())
    out = model.after_optimizer_step(progress=0.25)
    momentum = cosine_momentum(0.25, 0.9)
    assert float(out["teacher_momentum"]) == pytest.approx(momentum) and int(model.global_step) == 1
    student = backbone.state_dict()
    for key, value in backbone.teacher.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(value, momentum * teacher_before[key] + (1 - momentum) * student[key])
