"""Synthetic construction-site LiDAR: determinism, classes, label format, occlusion, dataset use."""
from __future__ import annotations

import filecmp

import numpy as np
import pytest

from pcdet_rmae_ts.data import PretrainDataset
from pcdet_rmae_ts.data.raycast import Ground, intersect_ground
from pcdet_rmae_ts.data.synthetic import CLASS_NAMES, CLASS_SIZES, ensure_dataset, generate_frame, write_dataset


def _rng(seed):
    return np.random.default_rng(seed)


def test_same_seed_gives_identical_files(tmp_path):
    a = write_dataset(tmp_path / "a", frames=3, seed=5, profile="demo")
    b = write_dataset(tmp_path / "b", frames=3, seed=5, profile="demo")
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(names) == 3 + 3 + 2 + 1
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(n) for n in names], shallow=False)
    assert not mismatch and not errors
    c = write_dataset(tmp_path / "c", frames=1, seed=6, profile="demo")
    assert not filecmp.cmp(a / "points" / "000000.npy", c / "points" / "000000.npy", shallow=False)


def test_splits_and_label_format(tmp_path):
    root = write_dataset(tmp_path / "d", frames=5, seed=0, profile="demo", val_fraction=0.2)
    train = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    assert train == ["000000", "000001", "000002", "000003"] and val == ["000004"]
    seen = set()
    for frame_id in train + val:
        pts = np.load(root / "points" / f"{frame_id}.npy")
        assert pts.dtype == np.float32 and pts.shape[1] == 4 and len(pts) > 1000
        for line in (root / "labels" / f"{frame_id}.txt").read_text().splitlines():
            fields = line.split(" ")  # OpenPCDet splits on single spaces
            assert len(fields) == 8
            x, y, z, dx, dy, dz, heading = map(float, fields[:7])
            name = fields[7]
            seen.add(name)
            for value, (lo, hi) in zip((dx, dy, dz), CLASS_SIZES[name]):
                assert lo - 1e-3 <= value <= hi + 1e-3
            assert -np.pi <= heading < np.pi
            assert -3.0 < z - dz / 2 < -0.5  # box bottom sits on the ground, ~1.8 m below the sensor
    assert seen == set(CLASS_NAMES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_contents(seed):
    points, boxes, names = generate_frame(_rng(seed), "demo")
    assert points.dtype == np.float32 and boxes.dtype == np.float32
    assert np.isfinite(points).all() and len(boxes) == len(names) >= 4
    assert 0.0 <= points[:, 3].min() and points[:, 3].max() <= 1.0
    r = np.linalg.norm(points[:, :3], axis=1)
    assert r.max() <= 40.0 + 0.2 and r.min() >= 0.8
    # no two boxes overlap in bird's eye view (circumscribed circles are kept apart)
    radius = np.hypot(boxes[:, 3], boxes[:, 4]) / 2
    dist = np.hypot(boxes[:, None, 0] - boxes[None, :, 0], boxes[:, None, 1] - boxes[None, :, 1])
    np.fill_diagonal(dist, np.inf)
    assert (dist > radius[:, None] + radius[None, :]).all()


def _segment_hits_box(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Reference: does the segment sensor->point cross the box? (slab test per point, t in [0, 1])."""
    c, s = np.cos(-box[6]), np.sin(-box[6])
    rel = points - box[:3]
    end = np.stack([rel[:, 0] * c - rel[:, 1] * s, rel[:, 0] * s + rel[:, 1] * c, rel[:, 2]], axis=1)
    start = np.array([-box[0] * c + box[1] * s, -box[0] * s - box[1] * c, -box[2]])
    d = end - start
    half = box[3:6] / 2
    t_lo, t_hi = np.zeros(len(points)), np.ones(len(points))
    for k in range(3):
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = (-half[k] - start[k]) / d[:, k], (half[k] - start[k]) / d[:, k]
        parallel = np.abs(d[:, k]) < 1e-12
        inside = abs(start[k]) <= half[k]
        lo = np.where(parallel, np.where(inside, 0.0, np.inf), np.minimum(a, b))
        hi = np.where(parallel, np.where(inside, 1.0, -np.inf), np.maximum(a, b))
        t_lo, t_hi = np.maximum(t_lo, lo), np.minimum(t_hi, hi)
    return t_lo <= t_hi


@pytest.mark.parametrize("seed", [0, 3])
def test_no_points_behind_boxes(seed):
    points, boxes, _ = generate_frame(_rng(seed), "demo")
    xyz = points[:, :3].astype(np.float64)
    r = np.linalg.norm(xyz, axis=1, keepdims=True)
    short = xyz * (1.0 - 0.15 / r)  # stop 15 cm (5 sigma of range noise) before the return
    hit_counts = []
    for box in boxes.astype(np.float64):
        shrunk = box.copy()
        shrunk[3:6] -= 0.1
        assert not _segment_hits_box(short, shrunk).any()
        grown = box.copy()
        grown[3:6] += 0.3
        hit_counts.append(int(_segment_hits_box(xyz, grown).sum()))
    assert sum(c > 0 for c in hit_counts) >= len(boxes) - 1  # objects are actually seen


def test_ground_raycast_matches_height_field():
    ground = Ground(1.8, (0.005, -0.003), np.array([[0.3, 0.1, 0.5, 0.2], [0.05, 0.4, 1.0, 0.1]]))
    el = np.deg2rad(np.array([-5.0, -12.0, -25.0]))[:, None]
    az = np.linspace(-np.pi, np.pi, 50)[None, :]
    dirs = np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)
    t, _ = intersect_ground(dirs, ground)
    hit = dirs * t[..., None]
    np.testing.assert_allclose(hit[..., 2], ground.z(hit[..., 0], hit[..., 1]), atol=0.02)
    up, _ = intersect_ground(np.array([[0.0, 0.0, 1.0]]), ground)
    assert np.isinf(up).all()


def test_ensure_dataset_reuses_complete_and_repairs_incomplete(tmp_path):
    root = ensure_dataset(tmp_path / "demo", frames=3, seed=1)
    stamp = (root / "points" / "000001.npy").stat().st_mtime_ns
    ensure_dataset(root, frames=3, seed=1)
    assert (root / "points" / "000001.npy").stat().st_mtime_ns == stamp
    (root / "points" / "000002.npy").unlink()
    ensure_dataset(root, frames=3, seed=1)
    assert (root / "points" / "000002.npy").is_file()


def test_synthetic_dataset_loads_in_pretrain_dataset(tmp_path):
    import easydict

    root = write_dataset(tmp_path / "d", frames=2, seed=0, profile="demo", val_fraction=0.5)
    cfg = easydict.EasyDict({
        "DATA_PATH": str(root), "POINT_CLOUD_RANGE": [-40.0, -40.0, -6, 40.0, 40.0, 10],
        "DATA_SPLIT": {"train": "train", "test": "val"},
        "POINT_FEATURE_ENCODING": {"encoding_type": "absolute_coordinates_encoding",
                                   "used_feature_list": ["x", "y", "z"],
                                   "src_feature_list": ["x", "y", "z", "intensity"]},
        "DATA_AUGMENTOR": {"DISABLE_AUG_LIST": ["gt_sampling"], "AUG_CONFIG_LIST": []},
        "DATA_PROCESSOR": [{"NAME": "mask_points_and_boxes_outside_range"},
                           {"NAME": "transform_points_to_voxels", "VOXEL_SIZE": [0.1, 0.1, 0.2],
                            "MAX_POINTS_PER_VOXEL": 5, "MAX_NUMBER_OF_VOXELS": {"train": 150000, "test": 150000}}],
    })
    sample = PretrainDataset(cfg, list(CLASS_NAMES), training=True)[0]
    assert sample["frame_id"] == "000000" and len(sample["voxels"]) > 5000
