"""PretrainDataset over CustomDataset and plain folders, bad-sample policy, collate, DataLoader."""
from __future__ import annotations

import logging
import pickle

import easydict
import numpy as np
import pytest
import yaml

from pcdet_rmae_ts.data import BadSampleError, PretrainDataset, build_dataloader

# The user's DATA_CONFIG (custom_dataset_isarc.yaml + the pretraining DATA_AUGMENTOR override), with
# intensity as a 4th source column and a smaller range so spconv's dense CPU hash stays small in tests.
CFG_YAML = """
DATASET: 'CustomDataset'
DATA_PATH: '/nonexistent'
POINT_CLOUD_RANGE: [-20.0, -20.0, -6, 20.0, 20.0, 10]
CLASS_NAMES: ['dumptruck', 'excavator', 'grader', 'roller']
DATA_SPLIT: {'train': train, 'test': val}
INFO_PATH: {'train': [custom_infos_train.pkl], 'test': [custom_infos_val.pkl]}
POINT_FEATURE_ENCODING: {
    encoding_type: absolute_coordinates_encoding,
    used_feature_list: ['x', 'y', 'z'],
    src_feature_list: ['x', 'y', 'z', 'intensity'],
}
DATA_AUGMENTOR:
    DISABLE_AUG_LIST: ['gt_sampling']
    AUG_CONFIG_LIST:
        - NAME: random_world_flip
          ALONG_AXIS_LIST: ['x']
        - NAME: random_world_scaling
          WORLD_SCALE_RANGE: [0.98, 1.02]
DATA_PROCESSOR:
    - NAME: mask_points_and_boxes_outside_range
      REMOVE_OUTSIDE_BOXES: True
    - NAME: shuffle_points
      SHUFFLE_ENABLED: {'train': True, 'test': False}
    - NAME: transform_points_to_voxels
      VOXEL_SIZE: [0.1, 0.1, 0.2]
      MAX_POINTS_PER_VOXEL: 5
      MAX_NUMBER_OF_VOXELS: {'train': 150000, 'test': 150000}
"""
CLASSES = ["dumptruck", "excavator", "grader", "roller"]


def make_cfg(**overrides) -> easydict.EasyDict:
    cfg = easydict.EasyDict(yaml.safe_load(CFG_YAML))
    cfg.update(overrides)
    return cfg


def _cloud(seed: int, n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-18, -18, -2], [18, 18, 3], size=(n, 3))
    return np.concatenate([xyz, rng.random((n, 1))], axis=1).astype(np.float32)


def _custom_folder(root, ids, split="train"):
    (root / "points").mkdir(parents=True)
    (root / "ImageSets").mkdir()
    for i, sample_id in enumerate(ids):
        np.save(root / "points" / f"{sample_id}.npy", _cloud(i))
    (root / "ImageSets" / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))
    return root


def _write_bad(folder, case: str):
    """Write one bad file named a_<case>.* (sorts before the good b_good.npy)."""
    pts = _cloud(9)
    if case == "truncated_bin":
        path = folder / "a_truncated.bin"
        path.write_bytes(pts.tobytes()[:-6])
    elif case == "corrupt_npy":
        path = folder / "a_corrupt.npy"
        path.write_bytes(b"\x93NUMPY\x01\x00 not really")
    else:
        bad = {"wrong_columns": pts[:, :3], "nan": np.where(np.arange(4) == 0, np.nan, pts),
               "inf": np.where(np.arange(4) == 2, -np.inf, pts), "empty": np.zeros((0, 4), np.float32),
               "outside_range": pts + np.array([500, 0, 0, 0], np.float32)}[case]
        path = folder / f"a_{case}.npy"
        np.save(path, bad.astype(np.float32))
    return path


BAD_CASES = ["truncated_bin", "corrupt_npy", "wrong_columns", "nan", "inf", "empty", "outside_range"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_sample_error_mode_names_the_file(tmp_path, case):
    bad = _write_bad(tmp_path, case)
    np.save(tmp_path / "b_good.npy", _cloud(1))
    ds = PretrainDataset(make_cfg(), CLASSES, training=True, root_path=tmp_path)
    with pytest.raises(BadSampleError) as info:
        ds[0]
    assert bad.name in str(info.value)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_sample_skip_mode_logs_and_returns_next_good(tmp_path, case, caplog):
    bad = _write_bad(tmp_path, case)
    np.save(tmp_path / "b_good.npy", _cloud(1))
    ds = PretrainDataset(make_cfg(ON_BAD_SAMPLE="skip"), CLASSES, training=True, root_path=tmp_path)
    with caplog.at_level(logging.WARNING):
        sample = ds[0]
    assert sample["frame_id"] == "b_good"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and bad.name in warnings[0]


def test_missing_point_file_in_custom_layout(tmp_path, caplog):
    root = _custom_folder(tmp_path / "ds", ["000", "001"])
    (root / "points" / "000.npy").unlink()
    with pytest.raises(BadSampleError, match="000.npy"):
        PretrainDataset(make_cfg(), CLASSES, root_path=root)[0]
    ds = PretrainDataset(make_cfg(ON_BAD_SAMPLE="skip"), CLASSES, root_path=root)
    with caplog.at_level(logging.WARNING):
        assert ds[0]["frame_id"] == "001"
    assert any("000.npy" in r.getMessage() for r in caplog.records)


def test_all_bad_samples_in_skip_mode_end_with_clear_error(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"e{i}.npy", np.zeros((0, 4), np.float32))
    ds = PretrainDataset(make_cfg(ON_BAD_SAMPLE="skip", MAX_BAD_SAMPLE_RETRIES=3), CLASSES, root_path=tmp_path)
    with pytest.raises(BadSampleError, match="3 consecutive bad samples"):
        ds[0]


def test_missing_paths_give_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="DATA_CONFIG.DATA_PATH"):
        PretrainDataset(make_cfg(DATA_PATH=str(tmp_path / "nope")), CLASSES)
    root = _custom_folder(tmp_path / "ds", ["000"], split="train")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        PretrainDataset(make_cfg(), CLASSES, training=False, root_path=root)
    with pytest.raises(ValueError, match="ON_BAD_SAMPLE"):
        PretrainDataset(make_cfg(ON_BAD_SAMPLE="ignore"), CLASSES, root_path=root)


def test_custom_dataset_folder_sample_layout(tmp_path):
    root = _custom_folder(tmp_path / "ds", ["a", "b", "c"])
    ds = PretrainDataset(make_cfg(DATA_PATH=str(root)), CLASSES, training=True)
    assert len(ds) == 3 and ds.mode == "train" and ds.training
    assert ds.point_cloud_range.dtype == np.float32
    assert ds.grid_size.dtype == np.int64 and ds.grid_size.tolist() == [400, 400, 80]
    assert ds.voxel_size == [0.1, 0.1, 0.2] and ds.depth_downsample_factor is None
    assert ds.point_feature_encoder.num_point_features == 3 and ds.class_names == CLASSES
    s = ds[1]
    assert s["frame_id"] == "b"
    assert s["points"].shape[1] == 3 and s["points"].dtype == np.float32
    assert s["voxels"].shape[1:] == (5, 3) and s["voxel_coords"].shape[1] == 3
    assert s["voxel_num_points"].shape == (len(s["voxels"]),)
    assert set(s) >= {"flip_x", "noise_scale"}


def test_plain_folder_of_mixed_formats(tmp_path):
    np.save(tmp_path / "f0.npy", _cloud(0))
    _cloud(1).tofile(tmp_path / "f1.bin")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = PretrainDataset(make_cfg(), CLASSES, training=False, root_path=tmp_path)
    assert ds.frame_ids == ["f0", "f1"] and ds.data_augmentor is None
    np.testing.assert_array_equal(ds[1]["points"], _cloud(1)[:, :3])  # test mode: no aug, no shuffle


def test_rng_reproducible_per_index_and_epoch(tmp_path):
    root = _custom_folder(tmp_path / "ds", ["a", "b"])
    ds = PretrainDataset(make_cfg(), CLASSES, root_path=root, seed=3)
    a, b = ds[(0, 0)], ds[(0, 0)]
    np.testing.assert_array_equal(a["points"], b["points"])
    scales = {ds[(epoch, 0)]["noise_scale"] for epoch in range(4)}
    assert len(scales) == 4
    ds.set_epoch(2)
    assert ds[0]["noise_scale"] == ds[(2, 0)]["noise_scale"]
    other = PretrainDataset(make_cfg(), CLASSES, root_path=root, seed=4)
    assert other[(0, 0)]["noise_scale"] != a["noise_scale"]


def test_collate_batch_layout(tmp_path):
    root = _custom_folder(tmp_path / "ds", ["a", "b", "c"])
    ds = PretrainDataset(make_cfg(), CLASSES, root_path=root)
    samples = [ds[i] for i in range(3)]
    batch = ds.collate_batch(samples)
    n = [len(s["points"]) for s in samples]
    v = [len(s["voxels"]) for s in samples]
    assert batch["batch_size"] == 3
    assert batch["points"].dtype == np.float32 and batch["points"].shape == (sum(n), 4)
    assert batch["voxel_coords"].dtype == np.int32 and batch["voxel_coords"].shape == (sum(v), 4)
    assert batch["voxels"].shape == (sum(v), 5, 3) and batch["voxel_num_points"].dtype == np.int32
    np.testing.assert_array_equal(batch["points"][:, 0], np.repeat(np.arange(3), n))
    np.testing.assert_array_equal(batch["voxel_coords"][:, 0], np.repeat(np.arange(3), v))
    np.testing.assert_array_equal(batch["voxel_coords"][v[0]:v[0] + v[1], 1:], samples[1]["voxel_coords"])
    np.testing.assert_array_equal(batch["points"][:n[0], 1:], samples[0]["points"])
    assert batch["frame_id"].tolist() == ["a", "b", "c"] and batch["frame_id"].dtype.kind == "U"
    assert batch["flip_x"].shape == (3,) and batch["noise_scale"].dtype == np.float64


def test_dataset_pickles_without_logger(tmp_path):
    root = _custom_folder(tmp_path / "ds", ["a"])
    ds = PretrainDataset(make_cfg(), CLASSES, root_path=root, logger=logging.getLogger("x"))
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.logger is None
    np.testing.assert_array_equal(clone[0]["voxel_coords"], first["voxel_coords"])


def _batches(loader, sampler, epoch, count=2):
    sampler.set_epoch(epoch)
    out = []
    for i, batch in enumerate(loader):
        out.append(batch)
        if i + 1 == count:
            break
    return out


def test_loader_two_spawned_workers_match_in_process(tmp_path):
    root = _custom_folder(tmp_path / "ds", [f"{i:03d}" for i in range(6)])
    cfg = make_cfg(DATA_PATH=str(root))
    _, loader0, sampler0 = build_dataloader(cfg, CLASSES, batch_size=2, workers=0, seed=11, training=True)
    _, loader2, sampler2 = build_dataloader(cfg, CLASSES, batch_size=2, workers=2, seed=11, training=True,
                                            multiprocessing_context="spawn")
    assert loader2.persistent_workers and loader0.drop_last
    for epoch in (0, 1):
        for b0, b2 in zip(_batches(loader0, sampler0, epoch), _batches(loader2, sampler2, epoch)):
            assert set(b0) == set(b2)
            for key in b0:
                np.testing.assert_array_equal(np.asarray(b0[key]), np.asarray(b2[key]), err_msg=key)
    e0, e1 = _batches(loader0, sampler0, 0, 1)[0], _batches(loader0, sampler0, 1, 1)[0]
    assert e0["frame_id"].tolist() != e1["frame_id"].tolist() or not np.array_equal(e0["points"], e1["points"])


def test_loader_eval_keeps_order_and_last_batch(tmp_path):
    root = _custom_folder(tmp_path / "ds", [f"{i:03d}" for i in range(5)], split="val")
    _, loader, sampler = build_dataloader(make_cfg(DATA_PATH=str(root)), CLASSES, batch_size=2, workers=0,
                                          training=False)
    ids = [fid for batch in loader for fid in batch["frame_id"].tolist()]
    assert ids == [f"{i:03d}" for i in range(5)]


def test_loader_can_hand_over_torch_tensors(tmp_path):
    """as_tensors=True: same batch as the numpy layout, as tensors (shared-memory hand-over from workers)."""
    import torch
    from easydict import EasyDict

    from pcdet_rmae_ts.data.synthetic import write_dataset

    write_dataset(tmp_path / "d", 4, seed=1)
    cfg = EasyDict(yaml.safe_load(
        "DATA_PATH: x\nPOINT_CLOUD_RANGE: [-20, -20, -3, 20, 20, 5]\nDATA_SPLIT: {train: train, test: val}\n"
        "POINT_FEATURE_ENCODING: {encoding_type: absolute_coordinates_encoding, used_feature_list: [x, y, z],"
        " src_feature_list: [x, y, z, intensity]}\n"
        "DATA_PROCESSOR:\n  - {NAME: transform_points_to_voxels, VOXEL_SIZE: [0.2, 0.2, 0.2], MAX_POINTS_PER_VOXEL: 5,"
        " MAX_NUMBER_OF_VOXELS: {train: 40000, test: 40000}}\n"))
    cfg.DATA_PATH = str(tmp_path / "d")
    batches = []
    for as_tensors in (False, True):
        _, loader, sampler = build_dataloader(cfg, None, 2, workers=1, seed=0, training=True, as_tensors=as_tensors)
        sampler.set_epoch(0)
        batches.append(next(iter(loader)))
    numpy_batch, tensor_batch = batches
    assert isinstance(tensor_batch["voxels"], torch.Tensor) and isinstance(numpy_batch["voxels"], np.ndarray)
    for key in ("points", "voxels", "voxel_coords", "voxel_num_points"):
        assert np.array_equal(tensor_batch[key].numpy(), numpy_batch[key]), key
    assert list(tensor_batch["frame_id"]) == list(numpy_batch["frame_id"])


def test_bad_sample_in_a_loader_worker_shows_its_own_message_and_the_skip_hint(tmp_path):
    (tmp_path / "a_bad.npy").write_bytes(b"\x93NUMPY\x01\x00 not really")
    for i in range(3):
        np.save(tmp_path / f"b{i}.npy", _cloud(i))
    _, loader, sampler = build_dataloader(make_cfg(), CLASSES, batch_size=2, workers=2, root_path=tmp_path,
                                          training=False, pin_memory=False)
    sampler.set_epoch(0)
    with pytest.raises(BadSampleError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "Caught" not in message
    assert message.startswith(str(tmp_path / "a_bad.npy") + ": unreadable .npy file")
    assert "DATA_CONFIG.ON_BAD_SAMPLE: skip" in message and "in DataLoader worker process" in message


@pytest.mark.parametrize("pcr, match", [
    ([20.0, -20.0, -6, -20.0, 20.0, 10], "not on x"),
    ([-20.0, -20.0, 10, 20.0, 20.0, -6], "not on z"),
    ([-20.0, -20.0, 20.0, 20.0], "6 finite numbers"),
    ("a lot", "6 finite numbers"),
])
def test_bad_point_cloud_range_is_a_config_error(tmp_path, pcr, match):
    from pcdet_rmae_ts.config import ConfigError
    np.save(tmp_path / "a.npy", _cloud(0))
    with pytest.raises(ConfigError, match=rf"DATA_CONFIG.POINT_CLOUD_RANGE.*{match}"):
        PretrainDataset(make_cfg(POINT_CLOUD_RANGE=pcr), CLASSES, root_path=tmp_path)


@pytest.mark.parametrize("size, match", [([0.1, 0.0, 0.2], "3 positive sizes"), ([0.1, 0.1], "3 positive sizes"),
                                         ([0.1, -0.1, 0.2], "3 positive sizes"), ([0.1, 0.1, 50.0], "larger than")])
def test_bad_voxel_size_is_a_config_error(tmp_path, size, match):
    from pcdet_rmae_ts.config import ConfigError
    np.save(tmp_path / "a.npy", _cloud(0))
    cfg = make_cfg()
    cfg.DATA_PROCESSOR[2]["VOXEL_SIZE"] = size
    with pytest.raises(ConfigError, match=rf"DATA_PROCESSOR\[2\].VOXEL_SIZE.*{match}"):
        PretrainDataset(cfg, CLASSES, root_path=tmp_path)
