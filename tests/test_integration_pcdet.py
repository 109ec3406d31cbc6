"""Against a real OpenPCDet build: registration, build_network, pretraining forward/backward,
checkpoint loading, the hook on the real train_utils. Skipped (with the reason) without pcdet;
fine-tune tests need a GPU because VoxelNeXtHead calls .cuda() in its constructor."""
from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("pcdet") is None:
    pytest.skip("OpenPCDet (pcdet) is not installed in this environment; build it from source to run these",
                allow_module_level=True)
pcdet_models = pytest.importorskip("pcdet.models", reason="pcdet is installed but pcdet.models does not import")

import pcdet_rmae_ts  # noqa: E402
from pcdet_rmae_ts.config import cfg_from_yaml_file  # noqa: E402
from pcdet_rmae_ts.engine.checkpoint import checkpoint_state, save_checkpoint  # noqa: E402

NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="VoxelNeXtHead calls .cuda() in its constructor: needs a GPU")
FINETUNE = REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml"
PRETRAIN = REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_pretraining_phase1.yaml"


class DatasetStub:
    """The attributes Detector3DTemplate.build_networks reads."""

    def __init__(self, cfg, grid=(176, 176, 40)):
        self.class_names = list(cfg.CLASS_NAMES)
        self.point_feature_encoder = EasyDict(num_point_features=3)
        self.grid_size = np.array(grid, dtype=np.int64)
        self.point_cloud_range = np.array([-8.8, -8.8, -3.0, 8.8, 8.8, 5.0], dtype=np.float32)
        self.voxel_size = [0.1, 0.1, 0.2]
        self.depth_downsample_factor = None


def _set_global_cfg(monkeypatch, global_cfg, cfg) -> None:
    """What OpenPCDet's train.py does (cfg_from_yaml_file into pcdet.config.cfg), undone after the test.
    setitem, not setattr: pcdet's cfg is an EasyDict, whose delattr would leave the dict key behind."""
    monkeypatch.setitem(global_cfg, "MODEL", cfg.MODEL)
    monkeypatch.setitem(global_cfg, "LOSS_CONFIG", cfg.get("LOSS_CONFIG"))


def _build(cfg_file, monkeypatch):
    from pcdet.config import cfg as global_cfg

    cfg = cfg_from_yaml_file(cfg_file)
    _set_global_cfg(monkeypatch, global_cfg, cfg)
    pcdet_rmae_ts.register()
    model = pcdet_models.build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=DatasetStub(cfg))
    return cfg, model


def _batch(batch_size=2, n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.full((n, 1), b) for b in range(batch_size)] * 1, 0)
    zyx = torch.stack([torch.randint(0, 40, (n * batch_size,), generator=g),
                       torch.randint(0, 176, (n * batch_size,), generator=g),
                       torch.randint(0, 176, (n * batch_size,), generator=g)], 1)
    coords = torch.cat([coords, zyx], 1)
    coords = torch.unique(coords, dim=0)
    voxels = torch.rand(coords.shape[0], 5, 3, generator=g)
    return {"voxels": voxels, "voxel_num_points": torch.full((coords.shape[0],), 5.0),
            "voxel_coords": coords.float(), "batch_size": batch_size}


def test_register_is_idempotent():
    first = pcdet_rmae_ts.register()
    second = pcdet_rmae_ts.register()
    assert first == second
    import pcdet.models.backbones_3d as b3d
    import pcdet.models.detectors as det

    from pcdet_rmae_ts.models.detector import get_detector_class
    assert det.__all__["RMAECMAEDetectorPhase1"] is get_detector_class()
    assert issubclass(get_detector_class(), det.__all__["VoxelNeXt"])
    assert b3d.__all__["RMAECMAEBackbonePhase1"].__name__ == "RMAECMAEBackbonePhase1"


def test_pretraining_build_forward_backward_cpu(monkeypatch):
    cfg, model = _build(PRETRAIN, monkeypatch)
    assert model.dense_head is None and model.pretraining
    model.train()
    ret, tb_dict, disp = model(_batch())
    assert set(ret) == {"loss"} and torch.isfinite(ret["loss"]) and disp == {}
    assert "loss_rmae" in tb_dict
    ret["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_ema_applied_once_per_optimizer_step(monkeypatch):
    cfg = cfg_from_yaml_file(PRETRAIN)
    cfg.MODEL.BACKBONE_3D.TEACHER_BACKBONE_TYPE = "ema"
    from pcdet.config import cfg as global_cfg
    _set_global_cfg(monkeypatch, global_cfg, cfg)
    pcdet_rmae_ts.register()
    model = pcdet_models.build_network(model_cfg=cfg.MODEL, num_class=4, dataset=DatasetStub(cfg))
    model.set_total_steps(10)
    calls = []
    monkeypatch.setattr(model.backbone_3d, "update_teacher", lambda progress: calls.append(progress))
    model.train()
    for step in range(3):  # OpenPCDet order: forward, update_global_step, (backward, optimizer.step)
        model(_batch(seed=step))
        model.update_global_step()
    assert calls == [pytest.approx(0.1), pytest.approx(0.2)]


@NEEDS_GPU
def test_finetune_build_and_load_pretraining_checkpoint(monkeypatch, tmp_path):
    from pcdet_rmae_ts.models.pretrain_model import PretrainModel

    pre_cfg = cfg_from_yaml_file(PRETRAIN)
    stub = DatasetStub(pre_cfg)
    pre = PretrainModel(pre_cfg.MODEL, 3, stub.grid_size, stub.voxel_size, stub.point_cloud_range)
    ckpt = save_checkpoint(checkpoint_state(pre, epoch=1, it=1), tmp_path / "pre.pth")
    cfg, model = _build(FINETUNE, monkeypatch)
    model.load_params_from_file(str(ckpt), logger=logging.getLogger("test"), to_cpu=True)
    own = model.state_dict()
    for key, value in pre.backbone_3d.encoder_state_dict().items():
        assert torch.equal(own[f"backbone_3d.{key}"].cpu(), value)


def test_hook_on_real_train_utils(monkeypatch):
    from pcdet_rmae_ts.integration import pcdet as integ

    tools = integ.find_pcdet_tools()
    monkeypatch.syspath_prepend(str(tools))
    optimization = importlib.import_module("train_utils.optimization")
    originals = optimization.build_optimizer, optimization.build_scheduler
    try:
        integ.install_optimizer_hook(optimization)
        cfg, model = _build(PRETRAIN, monkeypatch)
        optim = cfg_from_yaml_file(FINETUNE).OPTIMIZATION
        optimizer = optimization.build_optimizer(model, optim)
        scheduler, _ = optimization.build_scheduler(optimizer, total_iters_each_epoch=5, total_epochs=2,
                                                    last_epoch=-1, optim_cfg=optim)
        scheduler.step(3, 0)
        assert float(optimizer.lr) > 0 and "backbone" in scheduler.get_group_lrs()
        optim.DIFFERENTIAL_LR = False
        stock = optimization.build_optimizer(model, optim)
        assert type(stock).__name__ == "OptimWrapper"
    finally:
        optimization.build_optimizer, optimization.build_scheduler = originals
    sys.modules.pop("train_utils.optimization", None)


def _stock_voxelnext_cfg():
    """The shipped fine-tune config turned into a stock OpenPCDet VoxelNeXt (no plugin classes)."""
    cfg = cfg_from_yaml_file(FINETUNE)
    cfg.MODEL.NAME = "VoxelNeXt"
    cfg.MODEL.BACKBONE_3D = EasyDict({"NAME": "VoxelResBackBone8xVoxelNeXt"})
    return cfg


@pytest.mark.parametrize("target", ["plugin", "stock"])
def test_pretraining_checkpoint_loads_into_finetune_models_cpu(monkeypatch, tmp_path, caplog, target):
    """--pretrained_model path, on the CPU: VoxelNeXtHead's constructor calls .cuda(), made a no-op here
    (the contract's test technique); everything else is OpenPCDet's own code."""
    from pcdet_rmae_ts.models.pretrain_model import PretrainModel

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    pre_cfg = cfg_from_yaml_file(PRETRAIN)
    pre_cfg.MODEL.BACKBONE_3D.TEACHER_BACKBONE_TYPE = "ema"
    stub = DatasetStub(pre_cfg)
    pre = PretrainModel(pre_cfg.MODEL, 3, stub.grid_size, stub.voxel_size, stub.point_cloud_range)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p))  # weights a fresh model cannot have by chance
    ckpt = save_checkpoint(checkpoint_state(pre, epoch=1, it=1), tmp_path / "pre.pth")
    if target == "plugin":
        cfg, model = _build(FINETUNE, monkeypatch)
    else:
        cfg = _stock_voxelnext_cfg()
        model = pcdet_models.build_network(model_cfg=cfg.MODEL, num_class=4, dataset=DatasetStub(cfg))
        assert type(model).__name__ == "VoxelNeXt"
    with caplog.at_level(logging.INFO):
        model.load_params_from_file(str(ckpt), logger=logging.getLogger("pcdet-load"), to_cpu=True)
    own = model.state_dict()
    encoder = pre.backbone_3d.encoder_state_dict()
    for key, value in encoder.items():
        assert torch.equal(own[f"backbone_3d.{key}"], value), key
    not_updated = [r.message for r in caplog.records if r.message.startswith("Not updated weight")]
    assert not any("backbone_3d" in m for m in not_updated), not_updated
    assert all("dense_head" in m for m in not_updated)


def _finetune_batch(device, batch_size=2, seed=0):
    batch = _batch(batch_size=batch_size, n=3000, seed=seed)
    boxes = torch.tensor([[2.0, 1.0, 0.5, 8.0, 3.5, 4.0, 0.3, 1.0],
                          [-4.0, -3.0, 0.2, 9.0, 3.2, 3.2, -1.0, 2.0],
                          [3.0, -5.0, 0.0, 5.5, 2.2, 3.0, 1.2, 4.0]])
    batch["gt_boxes"] = boxes[None].repeat(batch_size, 1, 1)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


@NEEDS_GPU
@pytest.mark.parametrize("target", ["plugin", "stock"])
def test_finetune_forward_backward_and_eval_on_gpu(monkeypatch, target):
    if target == "plugin":
        cfg, model = _build(FINETUNE, monkeypatch)
    else:
        cfg = _stock_voxelnext_cfg()
        model = pcdet_models.build_network(model_cfg=cfg.MODEL, num_class=4, dataset=DatasetStub(cfg))
    model.cuda().train()
    ret, tb_dict, _ = model(_finetune_batch("cuda"))
    assert torch.isfinite(ret["loss"]) and "hm_loss_head_0" in tb_dict and "loc_loss_head_0" in tb_dict
    ret["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        pred_dicts, recall_dicts = model(_finetune_batch("cuda", seed=1))
    assert len(pred_dicts) == 2 and {"pred_boxes", "pred_scores", "pred_labels"} <= set(pred_dicts[0])
    assert "gt" in recall_dicts


@NEEDS_GPU
def test_detection_weight_scales_the_head_loss(monkeypatch):
    cfg, model = _build(FINETUNE, monkeypatch)
    model.cuda().train()
    model.detection_weight = 0.5
    ret, tb_dict, _ = model(_finetune_batch("cuda"))
    torch.testing.assert_close(ret["loss"], 0.5 * torch.as_tensor(tb_dict["rpn_loss"], device="cuda"),
                               rtol=1e-5, atol=1e-6)


def _numpy_batch(seed: int, with_boxes: bool) -> dict:
    batch = _finetune_batch("cpu", seed=seed) if with_boxes else _batch(seed=seed)
    return {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in batch.items()}


@pytest.mark.parametrize("config", ["finetune", "pretrain"])
def test_stock_train_one_epoch_with_differential_lr_cpu(monkeypatch, config):
    """OpenPCDet's own train_one_epoch + model_fn_decorator with our optimizer/scheduler hook, on the CPU
    (Tensor.cuda made a no-op: the loop and VoxelNeXtHead call .cuda()). Checks the scheduler's step
    convention, the LR the loop reads, per-group ratios, global_step and (pretraining) the EMA steps."""
    from pcdet_rmae_ts.integration import pcdet as integ

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.syspath_prepend(str(integ.find_pcdet_tools()))
    optimization = importlib.import_module("train_utils.optimization")
    train_utils = importlib.import_module("train_utils.train_utils")
    originals = optimization.build_optimizer, optimization.build_scheduler
    try:
        integ.install_optimizer_hook(optimization)
        cfg_file = FINETUNE if config == "finetune" else PRETRAIN
        cfg = cfg_from_yaml_file(cfg_file)
        if config == "pretrain":
            cfg.MODEL.BACKBONE_3D.TEACHER_BACKBONE_TYPE = "ema"
        from pcdet.config import cfg as global_cfg
        _set_global_cfg(monkeypatch, global_cfg, cfg)
        pcdet_rmae_ts.register()
        model = pcdet_models.build_network(model_cfg=cfg.MODEL, num_class=4, dataset=DatasetStub(cfg))
        optim_cfg = cfg_from_yaml_file(FINETUNE).OPTIMIZATION  # DIFFERENTIAL_LR: backbone 0.1, head 2.0
        optimizer = optimization.build_optimizer(model, optim_cfg)
        iters = 3
        scheduler, _ = optimization.build_scheduler(optimizer, total_iters_each_epoch=iters, total_epochs=2,
                                                    last_epoch=-1, optim_cfg=optim_cfg)
        loader = [_numpy_batch(seed, with_boxes=config == "finetune") for seed in range(iters)]
        import tqdm
        with tqdm.tqdm(total=2, disable=True) as tbar:
            accumulated = train_utils.train_one_epoch(
                model, optimizer, loader, pcdet_models.model_fn_decorator(), scheduler, accumulated_iter=0,
                optim_cfg=optim_cfg, rank=0, tbar=tbar, total_it_each_epoch=iters, dataloader_iter=iter(loader),
                cur_epoch=0, total_epochs=2)
        assert accumulated == iters and int(model.global_step) == iters
        lrs = scheduler.get_group_lrs()
        assert lrs["backbone"] == pytest.approx(0.1 * float(optimizer.lr))
        if config == "finetune":
            assert lrs["dense_head"] == pytest.approx(2.0 * float(optimizer.lr))
        else:
            assert int(model.ema_step) == iters - 1  # the last step's EMA is applied by the next forward
    finally:
        optimization.build_optimizer, optimization.build_scheduler = originals
        sys.modules.pop("train_utils.optimization", None)
        sys.modules.pop("train_utils.train_utils", None)


# The batched Gaussians (values <= 1) differ from the stock loop's on CUDA by up to 1.2e-7 for these seeds (H200,
# third and tenth sessions; bit for bit on the CPU, tests/test_voxel_targets.py; cause open, benchmarks/README.md).
# A sigma 1.7 % off (/ 5.9 for / 6) moved them by 1.2e-2 on the H200.
HEATMAP_ATOL_CUDA = 2.5e-7


@NEEDS_GPU
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_voxelnext_targets_equal_openpcdets_loop_on_gpu(monkeypatch, seed):
    """The launcher's batched target assignment against OpenPCDet's own per-box loop, on a crowded scene
    (60 boxes per sample, every class, some beyond the range, some without size): identical tensors, but
    for the heatmaps' Gaussians, within HEATMAP_ATOL_CUDA. Every key is compared before the test fails."""
    from pcdet.models.dense_heads import voxelnext_head

    from pcdet_rmae_ts.integration import pcdet as integ

    stock = getattr(voxelnext_head.VoxelNeXtHead.assign_target_of_single_head, "original",
                    voxelnext_head.VoxelNeXtHead.assign_target_of_single_head)
    monkeypatch.setattr(voxelnext_head.VoxelNeXtHead, "assign_target_of_single_head", stock)
    _, model = _build(FINETUNE, monkeypatch)
    head = model.cuda().dense_head
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(22 * 22, generator=g)[:300]  # the stub's 17.6 m grid at stride 8: 22 x 22 cells
    spatial = [torch.stack((cells % 22, cells // 22), -1).int().cuda() for _ in range(2)]
    boxes = torch.cat((torch.rand(2, 60, 2, generator=g) * 20 - 10, torch.rand(2, 60, 1, generator=g),
                       torch.rand(2, 60, 3, generator=g) * 8 + 1, torch.rand(2, 60, 1, generator=g) * 6 - 3,
                       torch.randint(1, 5, (2, 60, 1), generator=g).float()), -1).cuda()
    boxes[0, 7, 3] = 0.0
    num_voxels = [torch.tensor(300, device="cuda") for _ in range(2)]  # what _get_voxel_infos passes: 0-dim sums
    args = (num_voxels, spatial, [22, 22])
    want = head.assign_targets(boxes.clone(), *args)
    integ.install_batched_voxelnext_targets(voxelnext_head, environ={})
    assert voxelnext_head.VoxelNeXtHead.assign_target_of_single_head.original is stock
    got = head.assign_targets(boxes.clone(), *args)
    mismatches = []
    for key in ("heatmaps", "target_boxes", "inds", "masks"):
        for i, (a, b) in enumerate(zip(got[key], want[key])):
            same = a.shape == b.shape and (torch.equal(a, b) if key != "heatmaps" else
                                           bool((a - b).abs().max() <= HEATMAP_ATOL_CUDA))
            if not same:
                mismatches.append(f"{key}[{i}]: shapes {tuple(a.shape)} {tuple(b.shape)}, max |diff| "
                                  f"{(a.double() - b.double()).abs().max() if a.shape == b.shape else '-'}")
    assert not mismatches, mismatches
    assert int(want["masks"][0].sum()) == 2 * 60 - 1
