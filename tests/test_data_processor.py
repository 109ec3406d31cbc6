"""Point feature encoding and the DATA_PROCESSOR queue (crop, shuffle, spconv voxelisation)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from pcdet_rmae_ts.data.processor import DataProcessor, PointFeatureEncoder, grid_size_of
from pcdet_rmae_ts.data.readers import BadSampleError

RANGE = np.array([-10.0, -8.0, -3.0, 10.0, 8.0, 1.0], np.float32)


def _processor(voxel=(0.1, 0.1, 0.2), max_points=5, max_voxels=100000, shuffle=True, training=True, c=4):
    cfg = [{"NAME": "mask_points_and_boxes_outside_range", "REMOVE_OUTSIDE_BOXES": True},
           {"NAME": "shuffle_points", "SHUFFLE_ENABLED": {"train": shuffle, "test": False}},
           {"NAME": "transform_points_to_voxels", "VOXEL_SIZE": list(voxel), "MAX_POINTS_PER_VOXEL": max_points,
            "MAX_NUMBER_OF_VOXELS": {"train": max_voxels, "test": max_voxels}}]
    return DataProcessor(cfg, RANGE, training, c)


def _points(seed: int, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(RANGE[:3] - 1.0, RANGE[3:] + 1.0, size=(n, 3))  # some outside
    return np.concatenate([xyz, rng.random((n, 1))], axis=1).astype(np.float32)


def test_grid_size_like_openpcdet():
    g = grid_size_of(np.array([-70.4, -70.4, -6, 70.4, 70.4, 10], np.float32), [0.1, 0.1, 0.2])
    assert g.dtype == np.int64 and g.tolist() == [1408, 1408, 80]


def test_encoder_selects_used_features_and_checks_columns():
    enc = PointFeatureEncoder({"encoding_type": "absolute_coordinates_encoding",
                               "src_feature_list": ["x", "y", "z", "intensity", "ring"],
                               "used_feature_list": ["x", "y", "z", "ring"]})
    pts = np.arange(20, dtype=np.float32).reshape(4, 5)
    assert enc.num_point_features == 4
    np.testing.assert_array_equal(enc(pts), pts[:, [0, 1, 2, 4]])
    with pytest.raises(BadSampleError, match="frame_7.npy"):
        enc(pts[:, :4], "frame_7.npy")
    with pytest.raises(ValueError, match="start with x, y, z"):
        PointFeatureEncoder({"src_feature_list": ["y", "x", "z"], "used_feature_list": ["x"]})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxel_of_every_point_is_floor_of_metric_position(seed):
    proc = _processor(max_points=64)
    data = proc({"points": _points(seed)}, np.random.default_rng(seed), "x.npy")
    voxels, coords, counts = data["voxels"], data["voxel_coords"], data["voxel_num_points"]
    assert voxels.dtype == np.float32 and coords.dtype == np.int32 and counts.dtype == np.int32
    assert voxels.shape[1:] == (64, 4) and coords.shape == (len(voxels), 3)
    grid = proc.grid_size
    assert (coords >= 0).all() and (coords < grid[::-1]).all()  # [z, y, x] inside the grid
    vsize = np.asarray(proc.voxel_size, np.float32)
    for v in range(0, len(voxels), 7):
        pts = voxels[v, :counts[v]]
        expect = np.floor((pts[:, :3] - RANGE[:3]) / vsize).astype(np.int64)[:, ::-1]
        np.testing.assert_array_equal(expect, np.broadcast_to(coords[v], expect.shape))
        assert not voxels[v, counts[v]:].any()  # zero padding
    # with room for every point, voxels hold exactly the points strictly inside the range
    pts = data["points"][:, :3]
    inside = ((pts >= RANGE[:3]) & (pts < RANGE[3:])).all(axis=1)
    assert counts.sum() == inside.sum()
    assert len(np.unique(coords, axis=0)) == len(coords)


def test_range_mask_is_inclusive_in_x_y_only():
    proc = _processor()
    pts = np.array([[10.0, 8.0, 0.0, 0], [10.01, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 0]], np.float32)
    out = proc.mask_points_outside_range(pts, "a.npy")
    np.testing.assert_array_equal(out, pts[[0, 2, 3]])


def test_max_points_and_max_voxels_are_respected():
    proc = _processor(voxel=(1.0, 1.0, 1.0), max_points=2, max_voxels=10)
    data = proc({"points": _points(3)}, np.random.default_rng(0))
    assert len(data["voxels"]) == 10 and data["voxel_num_points"].max() <= 2


def test_shuffle_follows_mode_and_rng():
    pts = _points(4)
    keep = pts[(pts[:, 0] >= RANGE[0]) & (pts[:, 0] <= RANGE[3]) & (pts[:, 1] >= RANGE[1]) & (pts[:, 1] <= RANGE[4])]
    test = _processor(training=False)({"points": pts}, np.random.default_rng(0))
    np.testing.assert_array_equal(test["points"], keep)
    a = _processor()({"points": pts}, np.random.default_rng(5))
    b = _processor()({"points": pts}, np.random.default_rng(5))
    np.testing.assert_array_equal(a["points"], b["points"])
    assert not np.array_equal(a["points"], keep)
    np.testing.assert_array_equal(np.sort(a["points"], axis=0), np.sort(keep, axis=0))


def test_cloud_outside_range_is_a_bad_sample():
    pts = _points(0) + np.array([100, 0, 0, 0], np.float32)
    with pytest.raises(BadSampleError, match="far.npy"):
        _processor()({"points": pts}, np.random.default_rng(0), "far.npy")
    high = _points(0)[:10] * np.array([0, 0, 0, 1], np.float32) + np.array([0, 0, 50, 0], np.float32)
    with pytest.raises(BadSampleError, match="high.npy"):
        _processor()({"points": high}, np.random.default_rng(0), "high.npy")


def test_unknown_processor_raises_with_suggestion():
    with pytest.raises(ValueError, match="shuffle_points"):
        DataProcessor([{"NAME": "shuffle_point"}], RANGE, True, 4)


def test_processor_pickles_after_use():
    proc = _processor()
    proc({"points": _points(0)}, np.random.default_rng(0))
    clone = pickle.loads(pickle.dumps(proc))
    a = proc({"points": _points(1)}, np.random.default_rng(1))
    b = clone({"points": _points(1)}, np.random.default_rng(1))
    np.testing.assert_array_equal(a["voxel_coords"], b["voxel_coords"])


def test_deferred_voxel_check_looks_past_the_first_points():
    processor = DataProcessor([{"NAME": "transform_points_to_voxels", "VOXEL_SIZE": [0.1, 0.1, 0.2],
                                "MAX_POINTS_PER_VOXEL": 5, "MAX_NUMBER_OF_VOXELS": {"train": 10, "test": 10}}],
                              RANGE, True, 3, defer_voxelization=True)
    above = np.tile(np.array([[0.0, 0.0, 5.0]], np.float32), (10000, 1))  # x, y inside; z above the range
    processor.check_voxels_exist(np.concatenate([above, [[0.0, 0.0, 0.0]]]).astype(np.float32), "late.npy")
    with pytest.raises(BadSampleError, match="above.npy"):
        processor.check_voxels_exist(above, "above.npy")
