"""Synthetic construction-site LiDAR: determinism, classes, label format, occlusion, columns, folder
ownership, workers, the hard profile, dataset use."""
from __future__ import annotations

import filecmp
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pcdet_rmae_ts.config import PACKAGE_ROOT, cfg_from_list, cfg_from_yaml_file
from pcdet_rmae_ts.data import PretrainDataset, synthetic
from pcdet_rmae_ts.data.raycast import Ground, intersect_ground
from pcdet_rmae_ts.data.synthetic import (
    CLASS_NAMES,
    CLASS_SIZES,
    MARKER,
    ForeignFolderError,
    ensure_dataset,
    features_from_config,
    generate_frame,
    main,
    parse_features,
    write_dataset,
)

ISARC_PHASE1 = PACKAGE_ROOT / "cfgs" / "custom_models" / "rmae_cmae_isarc_4class_pretraining_phase1.yaml"
ISARC_DATASET = PACKAGE_ROOT / "cfgs" / "dataset_configs" / "custom_dataset_isarc.yaml"
DEMO_CFG = PACKAGE_ROOT / "cfgs" / "demo" / "rmae_cmae_demo_pretraining.yaml"


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


def _files(root: Path) -> dict:
    """Relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _label_lines(root: Path) -> dict:
    return {p.stem: p.read_text().splitlines() for p in sorted((root / "labels").glob("*.txt"))}


def test_features_option_writes_three_columns(tmp_path):
    main(["--out", str(tmp_path / "xyz"), "--frames", "2", "--features", "x,y,z", "--workers", "1"])
    full = write_dataset(tmp_path / "xyzi", frames=2, seed=0, workers=1)
    for frame_id in ("000000", "000001"):
        xyz = np.load(tmp_path / "xyz" / "points" / f"{frame_id}.npy")
        assert xyz.dtype == np.float32 and xyz.shape[1] == 3 and xyz.flags.c_contiguous
        np.testing.assert_array_equal(xyz, np.load(full / "points" / f"{frame_id}.npy")[:, :3])
    assert _label_lines(tmp_path / "xyz") == _label_lines(full)
    assert json.loads((tmp_path / "xyz" / MARKER).read_text())["features"] == ["x", "y", "z"]


@pytest.mark.parametrize("cfg_file, columns", [(ISARC_PHASE1, 3), (ISARC_DATASET, 3), (DEMO_CFG, 4)])
def test_cfg_file_option_takes_columns_from_the_config(tmp_path, cfg_file, columns):
    main(["--out", str(tmp_path / "d"), "--frames", "1", "--cfg_file", str(cfg_file), "--workers", "1"])
    assert np.load(tmp_path / "d" / "points" / "000000.npy").shape[1] == columns
    assert len(features_from_config(cfg_file)) == columns


def test_unknown_features_are_refused_with_the_known_names(tmp_path, capsys):
    for bad in ("x,y,z,ring", ["x", "y", "z", "elongation"]):
        with pytest.raises(ValueError, match="x, y, z, intensity"):
            parse_features(bad)
    for bad in ("intensity,x,y,z", "x,y", "x,y,z,intensity,intensity"):
        with pytest.raises(ValueError, match="must start with x, y, z"):
            parse_features(bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "d"), "--frames", "1", "--features", "x,y,z,timestamp"])
    assert exit_info.value.code == 2 and "timestamp" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    cfg = tmp_path / "no_encoding.yaml"
    cfg.write_text("DATA_PATH: somewhere\n")
    with pytest.raises(ValueError, match="src_feature_list"):
        features_from_config(cfg)


def test_marker_records_parameters_and_completion(tmp_path):
    root = write_dataset(tmp_path / "d", frames=3, seed=4, profile="demo", val_fraction=0.34,
                         features="x,y,z", workers=1)
    assert json.loads((root / MARKER).read_text()) == {
        "complete": True, "features": ["x", "y", "z"], "frames": 3, "profile": "demo", "seed": 4,
        "val_fraction": 0.34}
    assert sorted(p.name for p in root.iterdir()) == sorted(["points", "labels", "ImageSets", MARKER])


@pytest.mark.parametrize("frames, val_fraction", [(7, 0.3), (5, 0.2), (2, 0.1), (3, 0.0)])
def test_imagesets_split_is_disjoint_and_complete(tmp_path, frames, val_fraction):
    root = write_dataset(tmp_path / "d", frames=frames, seed=0, val_fraction=val_fraction, workers=1)
    train = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    expected_val = max(round(frames * val_fraction), 1) if val_fraction > 0 else 0
    assert len(val) == expected_val and not set(train) & set(val)
    assert sorted(train + val) == sorted(p.stem for p in (root / "points").glob("*.npy"))
    assert sorted(train + val) == [f"{i:06d}" for i in range(frames)]


def test_every_frame_has_a_label(tmp_path):
    root = write_dataset(tmp_path / "d", frames=6, seed=2, workers=1)
    labels = _label_lines(root)
    assert sorted(labels) == [f"{i:06d}" for i in range(6)]
    assert all(len(lines) >= 1 for lines in labels.values())


def test_scene_without_labelled_object_is_drawn_again(monkeypatch):
    real_scene = synthetic._scene
    calls = []

    def first_scene_unlabelled(rng, prof, ground):
        shapes, names = real_scene(rng, prof, ground)
        calls.append(len(names))
        return (shapes[len(names):], []) if len(calls) == 1 else (shapes, names)

    monkeypatch.setattr(synthetic, "_scene", first_scene_unlabelled)
    points, boxes, names = generate_frame(_rng(0), "demo")
    assert len(calls) == 2 and len(names) == len(boxes) == calls[1] >= 1


def _user_dataset(root: Path) -> dict:
    """A user's own CustomDataset folder (3-column clouds, labels, splits, info file)."""
    for sub in ("points", "labels", "ImageSets"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(3):
        np.save(root / "points" / f"{i:06d}.npy", rng.normal(size=(100, 3)).astype(np.float32))
        (root / "labels" / f"{i:06d}.txt").write_text(f"{i}.0 1.0 -1.0 9.0 3.5 4.0 0.1 dumptruck\n")
    (root / "ImageSets" / "train.txt").write_text("000000\n000001\n")
    (root / "ImageSets" / "val.txt").write_text("000002\n")
    (root / "custom_infos_train.pkl").write_bytes(b"user info")
    return _files(root)


def test_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    user = tmp_path / "own_dataset"
    before = _user_dataset(user)
    with pytest.raises(ForeignFolderError, match="own_dataset") as error:
        write_dataset(user, frames=2, workers=1)
    assert "DATA_CONFIG.SYNTHETIC" in str(error.value) and "empty or new folder" in str(error.value)
    with pytest.raises(ForeignFolderError):
        ensure_dataset(user, frames=2, features="x,y,z")
    with pytest.raises(SystemExit):
        main(["--out", str(user), "--frames", "2", "--workers", "1"])
    assert "refusing to write" in capsys.readouterr().err
    lone = tmp_path / "one_file"
    lone.mkdir()
    (lone / "notes.txt").write_text("mine")
    with pytest.raises(ForeignFolderError):
        write_dataset(lone, frames=1, workers=1)
    assert _files(user) == before and _files(lone) == {"notes.txt": b"mine"}


def test_demo_config_synthetic_key_never_overwrites_user_data(tmp_path):
    """The reported case: a demo config with ``--set DATA_CONFIG.DATA_PATH /path/to/own_dataset``."""
    from pcdet_rmae_ts.engine.pretrain import prepare_data_path

    user = tmp_path / "own_dataset"
    before = _user_dataset(user)
    cfg = cfg_from_list(["DATA_CONFIG.DATA_PATH", str(user)], cfg_from_yaml_file(DEMO_CFG))
    with pytest.raises(ForeignFolderError, match="own_dataset"):
        prepare_data_path(cfg, logging.getLogger("test"))
    assert _files(user) == before
    cfg = cfg_from_list(["DATA_CONFIG.DATA_PATH", str(tmp_path / "fresh"), "DATA_CONFIG.SYNTHETIC.FRAMES", "2"], cfg)
    prepare_data_path(cfg, logging.getLogger("test"))
    meta = json.loads((tmp_path / "fresh" / MARKER).read_text())
    assert meta["features"] == ["x", "y", "z", "intensity"] and meta["frames"] == 2
    # the config's columns decide the files: a 3-column config rewrites our own folder with 3 columns
    cfg = cfg_from_list(["DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list", "['x', 'y', 'z']"], cfg)
    prepare_data_path(cfg, logging.getLogger("test"))
    assert np.load(tmp_path / "fresh" / "points" / "000001.npy").shape[1] == 3


def test_writes_into_empty_folder_and_rewrites_its_own(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_dataset(empty, frames=3, seed=1, features="x,y,z,intensity", workers=1)
    assert np.load(empty / "points" / "000002.npy").shape[1] == 4
    # other features and fewer frames: ours, so rewritten; frames past the new count go
    ensure_dataset(empty, frames=2, seed=1, features="x,y,z", workers=1)
    assert sorted(p.name for p in (empty / "points").iterdir()) == ["000000.npy", "000001.npy"]
    assert sorted(p.name for p in (empty / "labels").iterdir()) == ["000000.txt", "000001.txt"]
    assert np.load(empty / "points" / "000001.npy").shape[1] == 3
    assert json.loads((empty / MARKER).read_text())["features"] == ["x", "y", "z"]


def test_interrupted_write_is_ours_and_not_complete(tmp_path, monkeypatch):
    def crash(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_frame", crash)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "d", frames=2, workers=1)
    assert json.loads((tmp_path / "d" / MARKER).read_text())["complete"] is False
    monkeypatch.undo()
    ensure_dataset(tmp_path / "d", frames=2)  # allowed: the marker says the folder is ours
    assert json.loads((tmp_path / "d" / MARKER).read_text())["complete"] is True


def test_workers_give_byte_identical_files(tmp_path):
    one = write_dataset(tmp_path / "one", frames=5, seed=3, profile="demo", workers=1)
    three = write_dataset(tmp_path / "three", frames=5, seed=3, profile="demo", workers=3)
    files = _files(one)
    assert len(files) == 5 + 5 + 2 + 1 and files == _files(three)


def test_machine_like_distractors_fall_outside_every_class_range():
    rng = _rng(0)
    for _ in range(300):
        dims = synthetic._machine_like_dims(rng, jitter=0.1)
        for name in CLASS_NAMES:
            ranges = CLASS_SIZES[name]
            assert any(not (lo * 0.9 - 0.25 <= v <= hi * 1.1 + 0.25) for v, (lo, hi) in zip(dims, ranges))


def test_hard_profile_frame():
    prof = synthetic.get_profile("hard")
    points, boxes, names = generate_frame(synthetic._frame_rng(0, 0), "hard")
    assert len(names) == len(boxes) >= 1 and np.isfinite(points).all()
    xyz = points[:, :3].astype(np.float64)
    ranges = np.hypot(boxes[:, 0], boxes[:, 1])
    assert ranges.max() > 45.0  # far, sparse objects exist
    for box, name in zip(boxes.astype(np.float64), names):
        lo = np.array([r[0] for r in CLASS_SIZES[name]]) * (1 - prof.size_jitter)
        hi = np.array([r[1] for r in CLASS_SIZES[name]]) * (1 + prof.size_jitter)
        assert (lo - 1e-3 <= box[3:6]).all() and (box[3:6] <= hi + 1e-3).all()
        c, s = np.cos(-box[6]), np.sin(-box[6])
        rel = xyz - box[:3]
        local = np.stack([rel[:, 0] * c - rel[:, 1] * s, rel[:, 0] * s + rel[:, 1] * c, rel[:, 2]], axis=1)
        inside = (np.abs(local) <= box[3:6] / 2 + 0.15).all(axis=1)
        assert inside.sum() >= prof.min_label_points  # every labelled object was seen
