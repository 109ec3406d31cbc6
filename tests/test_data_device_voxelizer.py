"""Batch voxelisation in the training process equals per-sample voxelisation in the loader."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict

from pcdet_rmae_ts.data import PretrainDataset
from pcdet_rmae_ts.data.device_voxelizer import BatchVoxelizer
from pcdet_rmae_ts.data.synthetic import write_dataset

CFG = """
DATA_PATH: x
POINT_CLOUD_RANGE: [-25.6, -25.6, -3.0, 25.6, 25.6, 5.0]
DATA_SPLIT: {train: train, test: val}
POINT_FEATURE_ENCODING: {encoding_type: absolute_coordinates_encoding, used_feature_list: [x, y, z, intensity],
                         src_feature_list: [x, y, z, intensity]}
DATA_PROCESSOR:
  - {NAME: mask_points_and_boxes_outside_range, REMOVE_OUTSIDE_BOXES: True}
  - {NAME: shuffle_points, SHUFFLE_ENABLED: {train: True, test: False}}
  - {NAME: transform_points_to_voxels, VOXEL_SIZE: [0.2, 0.2, 0.2], MAX_POINTS_PER_VOXEL: 100,
     MAX_NUMBER_OF_VOXELS: {train: 80000, test: 80000}}
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox") / "demo"
    write_dataset(root, 4, seed=3)
    cfg = EasyDict(yaml.safe_load(CFG))
    cfg.DATA_PATH = str(root)
    deferred = copy.deepcopy(cfg)
    deferred.VOXELIZE_ON_DEVICE = True
    return PretrainDataset(cfg, None, training=False), PretrainDataset(deferred, None, training=False)


def _per_voxel(coords, voxels, counts):
    """{(b, z, y, x): (count, sorted points)} for an order-free comparison."""
    out = {}
    for c, v, n in zip(coords.tolist(), voxels, counts.tolist()):
        pts = v[:n].numpy() if isinstance(v, torch.Tensor) else v[:n]
        # sort by y, z, intensity: x is shifted and shifted back on the batch path (equal to ~1e-6)
        out[tuple(c)] = (n, pts[np.lexsort((pts[:, 3], pts[:, 2], pts[:, 1]))])
    return out


def test_batch_voxelisation_equals_per_sample(datasets):
    in_loader, deferred = datasets
    reference = PretrainDataset.collate_batch([in_loader[i] for i in range(3)])
    batch = PretrainDataset.collate_batch([deferred[i] for i in range(3)])
    assert "voxels" not in batch
    out = BatchVoxelizer.from_dataset(deferred)(torch.from_numpy(batch["points"]), 3)
    got = _per_voxel(out["voxel_coords"], out["voxels"], out["voxel_num_points"])
    want = _per_voxel(reference["voxel_coords"], reference["voxels"], reference["voxel_num_points"])
    assert got.keys() == want.keys()
    for key, (n, pts) in want.items():
        assert got[key][0] == n, key
        np.testing.assert_allclose(got[key][1], pts, rtol=0, atol=1e-5)


def test_points_on_the_upper_x_bound_do_not_leak_into_the_next_sample(datasets):
    _, deferred = datasets
    voxelizer = BatchVoxelizer.from_dataset(deferred)
    points = torch.tensor([[0, 25.6, 0.0, 0.0, 1.0], [1, -25.5, 0.0, 0.0, 1.0]])
    out = voxelizer(points, 2)
    assert out["voxel_coords"].tolist() == [[1, 15, 128, 0]]


def test_deferred_dataset_still_rejects_frames_without_voxels(datasets, tmp_path):
    from pcdet_rmae_ts.data import BadSampleError

    _, deferred = datasets
    (tmp_path / "points").mkdir()
    np.save(tmp_path / "points" / "a.npy", np.array([[1.0, 1.0, 9.0, 0.5]], dtype=np.float32))  # above z range
    cfg = copy.deepcopy(deferred.dataset_cfg)
    cfg.DATA_PATH = str(tmp_path / "points")
    with pytest.raises(BadSampleError, match="no point falls inside"):
        PretrainDataset(cfg, None, training=False)[0]
