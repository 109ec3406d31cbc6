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


def _dataset_pair(tmp_path_factory, name, frames, seed, max_voxels=None):
    """The same frames voxelised in the loader and deferred to the device (VOXELIZE_ON_DEVICE)."""
    root = tmp_path_factory.mktemp(name) / "demo"
    write_dataset(root, frames, seed=seed)
    cfg = EasyDict(yaml.safe_load(CFG))
    cfg.DATA_PATH = str(root)
    if max_voxels is not None:
        cfg.DATA_PROCESSOR[2].MAX_NUMBER_OF_VOXELS = {"train": max_voxels, "test": max_voxels}
    deferred = copy.deepcopy(cfg)
    deferred.VOXELIZE_ON_DEVICE = True
    return PretrainDataset(cfg, None, training=False), PretrainDataset(deferred, None, training=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return _dataset_pair(tmp_path_factory, "vox", frames=4, seed=3)


def _per_voxel(coords, voxels, counts):
    """{(b, z, y, x): (count, sorted points)} for an order-free comparison."""
    out = {}
    for c, v, n in zip(coords.tolist(), voxels, counts.tolist()):
        pts = v[:n].numpy() if isinstance(v, torch.Tensor) else v[:n]
        # sort by y, z, intensity: x is shifted and shifted back on the batch path (equal to ~1e-6)
        out[tuple(c)] = (n, pts[np.lexsort((pts[:, 3], pts[:, 2], pts[:, 1]))])
    return out


def _assert_device_equals_loader(in_loader, deferred, frames=3):
    """The first ``frames`` frames voxelised as one batch on the device hold the same voxels, counts and
    points as the loader's per-sample voxelisation. Returns the loader's batch."""
    reference = PretrainDataset.collate_batch([in_loader[i] for i in range(frames)])
    batch = PretrainDataset.collate_batch([deferred[i] for i in range(frames)])
    assert "voxels" not in batch
    out = BatchVoxelizer.from_dataset(deferred)(torch.from_numpy(batch["points"]), frames)
    got = _per_voxel(out["voxel_coords"], out["voxels"], out["voxel_num_points"])
    want = _per_voxel(reference["voxel_coords"], reference["voxels"], reference["voxel_num_points"])
    assert got.keys() == want.keys()
    for key, (n, pts) in want.items():
        assert got[key][0] == n, key
        np.testing.assert_allclose(got[key][1], pts, rtol=0, atol=1e-5)
    return reference


def test_batch_voxelisation_equals_per_sample(datasets):
    _assert_device_equals_loader(*datasets)


@pytest.fixture(scope="module")
def capped_datasets(tmp_path_factory):
    """MAX_NUMBER_OF_VOXELS far below a synthetic frame's voxel count: the cap decides what is kept."""
    return _dataset_pair(tmp_path_factory, "vox_cap", frames=3, seed=5, max_voxels=700)


def test_the_cap_is_per_sample_and_keeps_what_per_sample_voxelisation_keeps(capped_datasets):
    reference = _assert_device_equals_loader(*capped_datasets)
    assert all((reference["voxel_coords"][:, 0] == b).sum() == 700 for b in range(3)), "every frame is capped"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dense_caps", [3.0, 1.25])
def test_a_dense_frame_does_not_take_a_later_frames_voxels(datasets, seed, dense_caps):
    """Sample 0 holds 3x (or 1.25x) the cap, sample 1 half of it. At 3x the batch-wide buffer (2 x cap)
    fills up, and before it kept 2 x cap voxels of sample 0 and dropped sample 1's; at 1.25x it does not
    fill, and sample 0 kept all its voxels. Now, either way: the first `cap` voxels of 0 (point order),
    all of 1."""
    _, deferred = datasets
    cap = 40
    voxelizer = BatchVoxelizer(deferred.voxel_size, deferred.point_cloud_range, deferred.grid_size, 4, 5, cap)
    gen = torch.Generator().manual_seed(seed)

    def distinct_cells(n):  # n points in n distinct voxels (cell centres), random order
        cells = torch.randperm(256 * 256, generator=gen)[:n]
        x = (cells % 256).float() * 0.2 - 25.6 + 0.1
        y = (cells // 256).float() * 0.2 - 25.6 + 0.1
        return torch.stack([x, y, torch.full_like(x, 0.1), torch.rand(n, generator=gen)], 1)

    dense, sparse = distinct_cells(int(dense_caps * cap)), distinct_cells(cap // 2)
    dense = torch.cat([dense, dense[:10] + torch.tensor([0.05, 0.05, 0.0, 0.0])])  # repeats: no new voxels
    points = torch.cat([torch.cat([torch.zeros(len(dense), 1), dense], 1),
                        torch.cat([torch.ones(len(sparse), 1), sparse], 1)])
    out = voxelizer(points, 2)
    coords = out["voxel_coords"]
    assert int((coords[:, 0] == 0).sum()) == cap and int((coords[:, 0] == 1).sum()) == cap // 2

    def cell_of(p):
        return [int(((p[2] + 3.0) / 0.2).floor()), int(((p[1] + 25.6) / 0.2).floor()),
                int(((p[0] + 25.6) / 0.2).floor())]

    kept0 = sorted(tuple(c[1:]) for c in coords.tolist() if c[0] == 0)
    assert kept0 == sorted(tuple(cell_of(p)) for p in dense[:cap]), "the first `cap` voxels in point order"
    assert int(out["voxel_num_points"][coords[:, 0] == 0].sum()) == cap + 10


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
