"""Helpers on the training step that must not make the host wait for the GPU (issue 15): each runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises at any synchronising call. Needs CUDA; the CPU
side of the same rules is benchmarks/count_syncs.py's proxy (tests/test_losses.py, tests/test_count_syncs.py)."""
from __future__ import annotations

import contextlib

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="host syncs only exist with a CUDA device: run on a GPU machine")


@contextlib.contextmanager
def syncs_are_errors():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _coords(n: int, batch_size: int, shape=(40, 200, 200)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    columns = [torch.randint(0, batch_size, (n,), generator=gen)] + [torch.randint(0, s, (n,), generator=gen)
                                                                     for s in shape]
    return torch.stack(columns, 1).int().cuda()


def test_per_scene_mean_forward_and_backward():
    from pcdet_rmae_ts.losses.common import per_scene_mean

    values = torch.rand(1000, device="cuda", requires_grad=True)
    batch = torch.randint(0, 4, (1000,), device="cuda")
    weights = torch.rand(1000, device="cuda")
    with syncs_are_errors():
        loss = per_scene_mean(values, batch, 4, weights)
        loss.backward()
    assert torch.isfinite(loss).item() and values.grad is not None


def test_occupancy_targets_and_voxel_centres():
    from pcdet_rmae_ts.masking import voxel_centres_xy
    from pcdet_rmae_ts.occupancy import occupancy_targets

    coords = _coords(5000, 2)
    voxel_centres_xy(coords, [0.1, 0.1, 0.2], [-10.0, -10.0, -3.0])  # its constants are made once, then cached
    with syncs_are_errors():
        target = occupancy_targets(coords, 2, (40, 200, 200), 8)
        xy = voxel_centres_xy(coords, [0.1, 0.1, 0.2], [-10.0, -10.0, -3.0])
    assert target.sum().item() > 0 and xy.shape == (5000, 2)


def test_deep_stages_merge_without_host_to_device_copies():
    spconv = pytest.importorskip("spconv.pytorch", reason="spconv is not installed")
    from pcdet_rmae_ts.models.encoder import VoxelNeXtEncoder

    def tensor(n, shape):
        return spconv.SparseConvTensor(torch.rand(n, 8, device="cuda"), _coords(n, 2, shape), list(shape), 2)

    x4, x5, x6 = tensor(300, (5, 25, 25)), tensor(200, (3, 13, 13)), tensor(100, (2, 7, 7))
    with syncs_are_errors():
        merged = VoxelNeXtEncoder._merge_deep_stages(x4, x5, x6)
    assert torch.equal(merged.indices[300:500, 1:], x5.indices[:, 1:] * 2)
    assert torch.equal(merged.indices[500:, 1:], x6.indices[:, 1:] * 4)
    assert torch.equal(merged.indices[300:, 0], torch.cat([x5.indices[:, 0], x6.indices[:, 0]]))


def test_mlfr_aligns_a_unique_site_scale_without_waiting():
    from pcdet_rmae_ts.compat import import_spconv
    from pcdet_rmae_ts.losses.mlfr import MLFRLoss

    spconv = import_spconv()
    shape = [200, 200]
    teacher_idx = torch.unique(_coords(3000, 2, shape), dim=0)  # unique sites, as one conv's output has
    student_idx = teacher_idx[::3]
    loss = MLFRLoss({"bev": 8}, ("bev",)).cuda()

    def view(indices):
        features = torch.randn(indices.shape[0], 8, device="cuda")
        return {"encoded_spconv_tensor": spconv.SparseConvTensor(features, indices, shape, 2)}

    student, teacher = view(student_idx), view(teacher_idx)
    with syncs_are_errors():
        _, indices, _, inputs, seen = loss.decoder_input("bev", student, teacher)
    assert indices.shape == teacher_idx.shape and int(seen.sum()) == student_idx.shape[0]
