"""Differential-LR hook mechanics on a stand-in ``train_utils.optimization`` module (no pcdet)."""
from __future__ import annotations

import io
import logging
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from easydict import EasyDict
from torch import nn

from pcdet_rmae_ts.config import cfg_from_yaml_file
from pcdet_rmae_ts.integration import pcdet as integ

REPO = Path(__file__).resolve().parents[1]


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone_3d = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.backbone_3d.register_parameter("mask_token", nn.Parameter(torch.zeros(4)))  # owned by a parent module
        self.dense_head = nn.Linear(4, 2)
        self.total_steps = None

    def set_total_steps(self, n):
        self.total_steps = n


@pytest.fixture()
def stand_in(monkeypatch):
    calls = []
    package = types.ModuleType("train_utils")
    module = types.ModuleType("train_utils.optimization")

    def build_optimizer(model, optim_cfg):
        calls.append(("optimizer", optim_cfg))
        return "stock-optimizer"

    def build_scheduler(optimizer, total_iters_each_epoch, total_epochs, last_epoch, optim_cfg):
        calls.append(("scheduler", total_iters_each_epoch, total_epochs, last_epoch))
        return "stock-scheduler", None

    module.build_optimizer, module.build_scheduler = build_optimizer, build_scheduler
    package.optimization = module
    monkeypatch.setitem(sys.modules, "train_utils", package)
    monkeypatch.setitem(sys.modules, "train_utils.optimization", module)
    return module, calls


@pytest.fixture()
def pcdet_log():
    """What OpenPCDet's logger receives during the test, as text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(integ.PCDET_LOGGER)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield stream
    log.removeHandler(handler)


def _optim_cfg(differential=True):
    cfg = cfg_from_yaml_file(REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml")
    optim = cfg.OPTIMIZATION
    optim.DIFFERENTIAL_LR = differential
    return optim


def test_hook_installs_by_module_name_and_is_idempotent(stand_in):
    module, _ = stand_in
    originals = module.build_optimizer, module.build_scheduler
    integ.install_optimizer_hook()
    wrapped = module.build_optimizer
    assert wrapped is not originals[0] and getattr(wrapped, integ.HOOK_MARK)
    assert wrapped.original is originals[0] and module.build_scheduler.original is originals[1]
    integ.install_optimizer_hook()
    assert module.build_optimizer is wrapped


def test_delegates_to_stock_builders_when_off(stand_in):
    module, calls = stand_in
    integ.install_optimizer_hook(module)
    optim = _optim_cfg(differential=False)
    model = TinyDetector()
    assert module.build_optimizer(model, optim) == "stock-optimizer"
    assert module.build_scheduler(optimizer="x", total_iters_each_epoch=5, total_epochs=2, last_epoch=-1,
                                  optim_cfg=optim) == ("stock-scheduler", None)
    assert calls == [("optimizer", optim), ("scheduler", 5, 2, -1)]
    assert model.total_steps == 10  # the EMA schedule length is given to the model either way


def test_differential_lr_through_the_hook(stand_in, tmp_path, pcdet_log):
    module, calls = stand_in
    integ.install_optimizer_hook(module)
    optim_cfg = _optim_cfg()
    model = TinyDetector()
    optimizer = module.build_optimizer(model, optim_cfg)
    scheduler, warmup = module.build_scheduler(optimizer, total_iters_each_epoch=10, total_epochs=3,
                                               last_epoch=-1, optim_cfg=optim_cfg)
    assert calls == [] and warmup is None
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_optimizer = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(in_optimizer) == sorted(trainable)  # mask_token included, nothing twice
    for it in range(3):  # official calls step(it, epoch), the fork step(it)
        scheduler.step(it, 0) if it % 2 else scheduler.step(it)
    lrs = scheduler.get_group_lrs()
    assert lrs["dense_head"] == pytest.approx(20 * lrs["backbone"])
    assert float(optimizer.lr) == pytest.approx(lrs["backbone"] / 0.1)
    assert integ.HOOK_STATE.group_lrs == lrs
    text = pcdet_log.getvalue()
    assert "LR per group" in text and "backbone" in text and "dense_head" in text
    assert "parameter groups" in text  # groups logged once at creation
    # OpenPCDet checkpoint of the optimizer loads with weights_only=True and resumes.
    torch.save({"optimizer_state": optimizer.state_dict()}, tmp_path / "ckpt.pth")
    state = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    fresh = module.build_optimizer(TinyDetector(), optim_cfg)
    fresh.load_state_dict(state["optimizer_state"])


def test_group_lrs_reach_tensorboard_dict():
    Ret = namedtuple("ModelReturn", ["loss", "tb_dict", "disp_dict"])
    models = types.ModuleType("fake_models")
    models.model_fn_decorator = lambda: (lambda model, batch: Ret(torch.tensor(1.0), {"rpn_loss": 1.0}, {}))
    integ.install_group_lr_tensorboard(models)
    integ.install_group_lr_tensorboard(models)  # idempotent
    integ.HOOK_STATE.group_lrs = {"backbone": 1e-4, "dense_head": 2e-3}
    ret = models.model_fn_decorator()(None, {})
    assert ret.tb_dict == {"rpn_loss": 1.0, "lr_backbone": 1e-4, "lr_dense_head": 2e-3}


def test_config_lookup_resolves_base_from_the_repository(tmp_path, monkeypatch):
    config = types.ModuleType("fake_pcdet_config")
    merged = []
    config.cfg_from_yaml_file = lambda f, c: None
    config.merge_new_config = lambda config, new_config: merged.append(new_config)
    integ.install_config_lookup(config)
    monkeypatch.chdir(tmp_path)  # not the repository: OpenPCDet alone would not find the base file
    config.cfg_from_yaml_file(str(REPO / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_finetune_phase1.yaml"),
                              EasyDict())
    base = Path(merged[0]["DATA_CONFIG"]["_BASE_CONFIG_"])
    assert base.is_absolute() and base.is_file() and base.name == "custom_dataset_isarc.yaml"


def test_group_lrs_logged_at_every_epoch_end(stand_in, pcdet_log):
    module, _ = stand_in
    integ.install_optimizer_hook(module)
    optim_cfg = _optim_cfg()
    optim_cfg.GROUP_LR_LOG_INTERVAL = 1000  # only the first iteration and the epoch ends log
    optimizer = module.build_optimizer(TinyDetector(), optim_cfg)
    scheduler, _ = module.build_scheduler(optimizer, total_iters_each_epoch=7, total_epochs=3, last_epoch=-1,
                                          optim_cfg=optim_cfg)
    for it in range(21):  # OpenPCDet calls step(accumulated_iter, epoch) before each iteration
        scheduler.step(it, it // 7)
    lines = [line for line in pcdet_log.getvalue().splitlines() if "LR per group" in line]
    assert [line.split(":")[0] for line in lines] == [
        "iter 0", "epoch 1 end (iter 6)", "epoch 2 end (iter 13)", "epoch 3 end (iter 20)"]
    assert "backbone" in lines[-1] and "dense_head" in lines[-1]


class _FakeCustomDataset:
    """What OpenPCDet's CustomDataset carries for evaluation: infos with annos and the dataset config."""

    def __init__(self, infos, evaluation_cfg=None):
        self.custom_infos = infos
        self.dataset_cfg = EasyDict({"EVALUATION": evaluation_cfg} if evaluation_cfg else {})

    def evaluation(self, det_annos, class_names, **kwargs):
        raise AssertionError("the stock evaluation must not run")


def _box(x, y, heading=0.0):
    return [x, y, 0.0, 8.0, 3.0, 3.0, heading]


def test_custom_evaluation_hook_scores_own_class_names(tmp_path):
    import numpy as np

    module = types.ModuleType("fake_custom_dataset")
    module.CustomDataset = _FakeCustomDataset
    cls = integ.install_custom_evaluation(module)
    assert integ.install_custom_evaluation(module) is cls and getattr(cls.evaluation, integ.HOOK_MARK)
    gt = [{"point_cloud": {"lidar_idx": f"{i:06d}"},
           "annos": {"name": np.array(["excavator", "roller"]),
                     "gt_boxes_lidar": np.array([_box(10 + i, 5), _box(40, -20 - i)], dtype=np.float32)}}
          for i in range(4)]
    # excavators found exactly; rollers shifted by half a box length along x: IoU 1/3, a hit only at the
    # configured roller threshold 0.3 (the default 0.5 would miss it); excavators need 0.7 and get 1.0
    dets = [{"frame_id": f"{i:06d}", "name": np.array(["excavator", "roller"]), "score": np.array([0.9, 0.8]),
             "boxes_lidar": np.array([_box(10 + i, 5), _box(44, -20 - i)], dtype=np.float32)} for i in range(4)]
    dataset = cls(gt, evaluation_cfg={"IOU_THRESHOLDS": {"excavator": 0.7, "roller": 0.3}})
    text, scalars = dataset.evaluation(dets, ["excavator", "roller", "grader"], eval_metric="kitti",
                                       output_path=tmp_path)
    assert scalars["AP_3D/excavator"] == pytest.approx(100.0) and scalars["AP_3D/roller"] == pytest.approx(100.0)
    assert scalars["mAP_3D"] == pytest.approx(100.0)
    assert "excavator" in text and "Cyclist" not in text
    def no_nan(constant):  # strict JSON: a class without ground truth is null, not NaN
        raise AssertionError(f"{constant} in {integ.CUSTOM_RESULT_FILE}")

    saved = __import__("json").loads((tmp_path / integ.CUSTOM_RESULT_FILE).read_text(), parse_constant=no_nan)
    assert saved["AP_BEV"]["excavator"] == pytest.approx(100.0) and saved["AP_3D"]["grader"] is None
    dets[1]["frame_id"] = "999999"  # predictions out of order with the infos: refuse, do not score
    with pytest.raises(Exception, match="999999"):
        dataset.evaluation(dets, ["excavator", "roller"], eval_metric="kitti")


def test_custom_evaluation_without_labels_says_so():
    module = types.ModuleType("fake_custom_dataset")
    module.CustomDataset = _FakeCustomDataset
    cls = integ.install_custom_evaluation(module)
    text, scalars = cls([{"point_cloud": {"lidar_idx": "0"}}]).evaluation([{}], ["excavator"])
    assert "No ground-truth" in text and scalars == {}


_START_METHOD_PROBE = ("import os, sys, torch.multiprocessing as mp; sys.path.insert(0, {repo!r}); "
                       "from pcdet_rmae_ts.integration import pcdet as integ; "
                       "print(integ.choose_worker_start_method(), mp.get_start_method(allow_none=True))")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the Linux default")
@pytest.mark.parametrize("env_value, expected", [(None, "fork fork"), ("forkserver", "forkserver forkserver")])
def test_worker_start_method_is_set_before_openpcdet_picks_spawn(env_value, expected):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != integ.START_METHOD_ENV}
    if env_value:
        env[integ.START_METHOD_ENV] = env_value
    out = subprocess.run([sys.executable, "-c", _START_METHOD_PROBE.format(repo=str(REPO))], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert " ".join(out) == expected


def test_worker_start_method_rejects_unknown_and_keeps_an_existing_choice(monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.setattr(mp, "get_start_method", lambda allow_none=False: None)
    with pytest.raises(integ.LauncherError, match="not a start method"):
        integ.choose_worker_start_method({integ.START_METHOD_ENV: "teleport"})
    monkeypatch.setattr(mp, "get_start_method", lambda allow_none=False: "spawn")
    assert integ.choose_worker_start_method({}) is None  # the user chose already: keep it


def _fake_voxelnext_module():
    module = types.ModuleType("fake_voxelnext_head")
    module.centernet_utils = types.SimpleNamespace(gaussian_radius=lambda h, w, min_overlap=0.5: (h + w) * min_overlap)

    class VoxelNeXtHead:
        def assign_target_of_single_head(self, *args, **kwargs):
            return "stock"

    module.VoxelNeXtHead = VoxelNeXtHead
    return module


def test_batched_voxelnext_targets_hook_replaces_the_loop_once_and_can_be_switched_off(caplog):
    from pcdet_rmae_ts.voxel_targets import assign_single_head

    module = _fake_voxelnext_module()
    assert integ.install_batched_voxelnext_targets(module, environ={integ.STOCK_TARGETS_ENV: "1"}) is None
    assert module.VoxelNeXtHead().assign_target_of_single_head() == "stock"
    cls = integ.install_batched_voxelnext_targets(module, environ={})
    assert integ.install_batched_voxelnext_targets(module, environ={}) is cls  # idempotent
    assert cls.assign_target_of_single_head.original(None) == "stock"
    head = cls()
    head.point_cloud_range, head.voxel_size = torch.tensor([-70.4, -70.4, -6.0]), torch.tensor([0.1, 0.1, 0.2])
    head.gaussian_type, head.gaussian_ratio = ["nearst", "gt_center"], 1
    boxes = torch.tensor([[3.0, -4.0, 0.5, 9.0, 3.5, 3.0, 0.4, 2.0], [30.0, 12.0, 0.0, 6.0, 2.5, 2.5, -1.0, 1.0]])
    indices = torch.tensor([[90, 80], [120, 100], [60, 60]], dtype=torch.int32)
    with caplog.at_level(logging.INFO, logger=integ.PCDET_LOGGER):
        got = head.assign_target_of_single_head(3, boxes, 3, indices, [176, 176], 8, num_max_objs=5, min_radius=2)
        head.assign_target_of_single_head(3, boxes, 3, indices, [176, 176], 8, num_max_objs=5, min_radius=2)
    radius = torch.clamp_min(((boxes[:, 3] / 0.1 / 8 + boxes[:, 4] / 0.1 / 8) * 0.1).int(), min=2)
    want = assign_single_head(boxes, radius, 3, 3, indices, [176, 176], head.point_cloud_range, head.voxel_size, 8,
                              num_max_objs=5)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and got[3].tolist() == [1, 1, 0, 0, 0]
    assert sum("batched over boxes" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("differential", [False, True])
def test_merged_epochs_give_the_scheduler_one_epochs_steps(stand_in, pcdet_log, differential):
    """With --merge_all_iters_to_one_epoch, train.py passes the merged loader's length (all epochs) as one
    epoch's; the hook divides it back, so the one-cycle schedule spans the run, not 80 times the run."""
    module, calls = stand_in
    integ.install_optimizer_hook(module, merged_epochs=True)
    optim = _optim_cfg(differential=differential)
    model = TinyDetector()
    optimizer = module.build_optimizer(model, optim)
    scheduler, _ = module.build_scheduler(optimizer, total_iters_each_epoch=400, total_epochs=80, last_epoch=-1,
                                          optim_cfg=optim)
    assert model.total_steps == 400  # 5 steps in each of 80 epochs
    if not differential:
        assert calls[-1] == ("scheduler", 5, 80, -1)
    else:
        for it in range(400):
            scheduler.step(it, it // 5)
        # the one-cycle LR went up and came back down within the run's 400 steps
        assert float(optimizer.lr) < 0.01 * float(optim.LR)
    assert "the LR schedule gets 5 steps per epoch" in pcdet_log.getvalue()
