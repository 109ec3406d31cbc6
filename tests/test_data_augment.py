"""Point-only augmentations against analytic expectations; augmentor config handling."""
from __future__ import annotations

import copy
import logging
import pickle

import numpy as np
import pytest

from pcdet_rmae_ts.data.augment import (
    PointAugmentor,
    random_world_flip,
    random_world_rotation,
    random_world_scaling,
    random_world_translation,
)


def _pts(seed: int, n: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 10, size=(n, 4)).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_flip_x_negates_y_and_flip_y_negates_x(seed):
    pts = _pts(seed)
    out, info = random_world_flip(pts, np.random.default_rng(seed), along_axis_list=["x", "y"])
    exp = pts.copy()
    if info["flip_x"]:
        exp[:, 1] *= -1
    if info["flip_y"]:
        exp[:, 0] *= -1
    np.testing.assert_array_equal(out, exp)
    np.testing.assert_array_equal(out[:, 2:], pts[:, 2:])


def test_flip_probability_is_half():
    rng = np.random.default_rng(0)
    flips = [random_world_flip(_pts(0, 4), rng, ["x"])[1]["flip_x"] for _ in range(2000)]
    assert 0.45 < np.mean(flips) < 0.55


@pytest.mark.parametrize("seed", range(4))
def test_rotation_is_counter_clockwise_about_z(seed):
    pts = _pts(seed)
    out, info = random_world_rotation(pts, np.random.default_rng(seed), [-0.78539816, 0.78539816])
    angle = np.random.default_rng(seed).uniform(-0.78539816, 0.78539816)
    assert info["noise_rot"] == pytest.approx(angle)
    c, s = np.cos(angle), np.sin(angle)
    np.testing.assert_allclose(out[:, 0], pts[:, 0] * c - pts[:, 1] * s, atol=1e-4)
    np.testing.assert_allclose(out[:, 1], pts[:, 0] * s + pts[:, 1] * c, atol=1e-4)
    np.testing.assert_array_equal(out[:, 2:], pts[:, 2:])
    # a point on +x lands at azimuth +angle
    unit, _ = random_world_rotation(np.array([[1.0, 0, 0, 0]], np.float32), np.random.default_rng(seed),
                                    [-0.78539816, 0.78539816])
    assert np.arctan2(unit[0, 1], unit[0, 0]) == pytest.approx(angle, abs=1e-6)


def test_rotation_scalar_range_is_symmetric():
    angles = [random_world_rotation(_pts(0, 2), np.random.default_rng(i), 0.1)[1]["noise_rot"] for i in range(200)]
    assert min(angles) >= -0.1 and max(angles) <= 0.1 and min(angles) < 0 < max(angles)


@pytest.mark.parametrize("seed", range(4))
def test_scaling(seed):
    pts = _pts(seed)
    out, info = random_world_scaling(pts, np.random.default_rng(seed), [0.98, 1.02])
    assert 0.98 <= info["noise_scale"] <= 1.02
    np.testing.assert_allclose(out[:, :3], pts[:, :3] * info["noise_scale"], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 3], pts[:, 3])


def test_translation_is_one_shift_with_given_std():
    pts = _pts(0)
    out, info = random_world_translation(pts, np.random.default_rng(1), [0.5, 0.0, 0.2])
    shift = out[:, :3] - pts[:, :3]
    np.testing.assert_allclose(shift, np.broadcast_to(info["noise_translate"], shift.shape), atol=1e-5)
    assert info["noise_translate"][1] == 0.0
    rng = np.random.default_rng(2)
    shifts = np.array([random_world_translation(pts[:1], rng, [0.5, 0.0, 0.2])[1]["noise_translate"]
                       for _ in range(3000)])
    np.testing.assert_allclose(shifts.std(axis=0), [0.5, 0.0, 0.2], atol=0.03)


PRETRAIN_AUG = {"DISABLE_AUG_LIST": ["gt_sampling"], "AUG_CONFIG_LIST": [
    {"NAME": "gt_sampling", "DB_INFO_PATH": ["custom_dbinfos_train.pkl"]},
    {"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["x"]},
    {"NAME": "random_world_scaling", "WORLD_SCALE_RANGE": [0.98, 1.02]},
]}


def test_disabled_gt_sampling_is_skipped_with_one_log_line(caplog):
    with caplog.at_level(logging.INFO):
        aug = PointAugmentor(PRETRAIN_AUG)
    lines = [r for r in caplog.records if "gt_sampling" in r.getMessage()]
    assert len(lines) == 1 and "DISABLE_AUG_LIST" in lines[0].getMessage()
    assert aug.names == ["random_world_flip", "random_world_scaling"]
    out, info = aug(_pts(0), np.random.default_rng(0))
    assert set(info) == {"flip_x", "noise_scale"}


def test_enabled_gt_sampling_raises_with_key_path_and_fix():
    cfg = copy.deepcopy(PRETRAIN_AUG)
    cfg["DISABLE_AUG_LIST"] = ["placeholder"]
    with pytest.raises(ValueError) as info:
        PointAugmentor(cfg)
    msg = str(info.value)
    assert "DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST[0]" in msg and "DISABLE_AUG_LIST" in msg


def test_disable_list_is_honoured_for_any_augmentor():
    cfg = copy.deepcopy(PRETRAIN_AUG)
    cfg["DISABLE_AUG_LIST"] = ["gt_sampling", "random_world_flip"]
    assert PointAugmentor(cfg).names == ["random_world_scaling"]


def test_unknown_augmentor_and_unknown_key_raise():
    with pytest.raises(ValueError, match="random_world_flip"):
        PointAugmentor({"AUG_CONFIG_LIST": [{"NAME": "random_world_flp"}]})
    with pytest.raises(ValueError, match="WORLD_SCALE_RANG"):
        PointAugmentor({"AUG_CONFIG_LIST": [{"NAME": "random_world_scaling", "WORLD_SCALE_RANG": [1, 1]}]})


def test_augmentor_is_reproducible_and_picklable():
    aug = pickle.loads(pickle.dumps(PointAugmentor(PRETRAIN_AUG)))
    a = aug(_pts(1), np.random.default_rng(7))
    b = aug(_pts(1), np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
