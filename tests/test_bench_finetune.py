"""benchmarks/bench_finetune.py's batches: each frame's gt_boxes are the boxes its own points show
(drawn again from the frame's seed), padded as OpenPCDet's collate pads them. The step itself needs
OpenPCDet and a GPU and runs on the accelerator machine."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("bench_finetune")


@pytest.fixture(scope="module")
def staged(bench, tmp_path_factory):
    """Two batches of two demo frames on the small grid, in the loader's test mode."""
    from bench_pretrain import data_cfg, write_frames

    data = bench.with_val_split(write_frames(tmp_path_factory.mktemp("finetune") / "demo_4", 4, "demo"))
    cfg = data_cfg(data, quick=True)
    return cfg, bench.stage_batches(cfg, 2, torch.device("cpu"), max_batches=2, profile="demo")[1]


def _voxel_centres(batch: dict, cfg, frame: int) -> np.ndarray:
    coords = batch["voxel_coords"].numpy()
    zyx = coords[coords[:, 0] == frame, 1:]
    size = np.asarray(cfg.DATA_PROCESSOR[-1]["VOXEL_SIZE"])
    return np.asarray(cfg.POINT_CLOUD_RANGE[:3]) + (zyx[:, ::-1] + 0.5) * size


def _voxels_in(box: np.ndarray, centres: np.ndarray) -> int:
    """Voxel centres in the box above its lowest 0.4 m (the ground a box stands on is in every frame)."""
    c, s = np.cos(box[6]), np.sin(box[6])
    d = centres - box[:3]
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    inside = (np.abs(local[:, :2]) <= box[3:5] / 2 + 0.2).all(1)
    return int((inside & (local[:, 2] > -box[5] / 2 + 0.4) & (local[:, 2] <= box[5] / 2 + 0.2)).sum())


def _in_range(box: np.ndarray, cfg) -> bool:
    lo, hi = np.asarray(cfg.POINT_CLOUD_RANGE[:3]), np.asarray(cfg.POINT_CLOUD_RANGE[3:])
    return bool((box[:3] > lo).all() and (box[:3] < hi).all())


def test_each_frame_gets_the_boxes_its_points_show(staged):
    cfg, batches = staged
    own, other = [], []
    for batch in batches:
        boxes = batch["gt_boxes"].numpy()
        for frame in range(int(batch["batch_size"])):
            real = [b for b in boxes[frame] if b[7] > 0 and _in_range(b, cfg)]
            own += [_voxels_in(b, _voxel_centres(batch, cfg, frame)) for b in real]
            other += [_voxels_in(b, _voxel_centres(batch, cfg, 1 - frame)) for b in real]
    assert len(own) >= 4, "too few labelled boxes inside the small grid to say anything"
    assert min(own) >= 20, f"a frame's gt box holds (almost) none of that frame's voxels: {own}"
    assert all(o > x for o, x in zip(own, other)), f"a box fits the batch's other frame better: {own} vs {other}"


def test_gt_boxes_are_padded_with_class_zero_rows(staged, bench):
    boxes = bench.padded_gt_boxes([np.ones((2, 8), np.float32), np.full((3, 8), 2, np.float32)])
    assert boxes.shape == (2, 3, 8)
    assert (boxes[0, 2] == 0).all() and (boxes[0, :2] == 1).all() and (boxes[1] == 2).all()
    classes = np.concatenate([b["gt_boxes"][..., 7].numpy().ravel() for b in staged[1]])
    assert set(np.unique(classes)) <= {0.0, 1.0, 2.0, 3.0, 4.0} and (classes > 0).any()
