"""The encoder is a drop-in for OpenPCDet's VoxelResBackBone8xVoxelNeXt (real reference data)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pcdet_rmae_ts.models.encoder import VoxelNeXtEncoder


@pytest.fixture(scope="module")
def golden(reference_path):
    """OpenPCDet's outputs: the encoded BEV tensor in full; x_conv1..4 as digests plus 512 rows each
    (tests/data/README.md)."""
    return torch.load(reference_path("voxelnext_backbone_golden_subset.pt"), weights_only=True)


@pytest.mark.parametrize("input_channels", [3, 4])
def test_state_dict_keys_and_shapes_equal_openpcdet(reference_path, input_channels):
    reference = json.loads(reference_path("voxelnext_backbone_state_dict.json").read_text())
    expected = reference["state_dict"][f"input_channels={input_channels}"]
    encoder = VoxelNeXtEncoder(input_channels, [1408, 1408, 80])
    got = {k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert got == expected


def _sha256(tensor: torch.Tensor, dtype: torch.dtype) -> str:
    """Same digest as tests/data/make_golden_subset.py: the bytes as ``dtype``, row-major."""
    return hashlib.sha256(tensor.detach().cpu().to(dtype).contiguous().numpy().tobytes()).hexdigest()


def _run_golden(golden, threads: int):
    cfg = golden["config"]
    encoder = VoxelNeXtEncoder(golden["input_channels"], golden["grid_size_xyz"], cfg["CHANNELS"],
                               cfg["OUT_CHANNEL"], cfg["SPCONV_KERNEL_SIZES"])
    encoder.load_state_dict(golden["state_dict"])
    encoder.train()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            return encoder.encode(golden["voxel_features"], golden["voxel_coords"], golden["batch_size"])
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_golden_outputs_reproduced(golden, threads):
    out = _run_golden(golden, threads)
    encoded = out["encoded_spconv_tensor"]
    assert encoded.indices.shape[1] == 3, "the BEV output must be 2D [b, y, x] for VoxelNeXtHead"
    assert torch.equal(encoded.indices.long(), golden["encoded_indices"].long())
    assert list(encoded.spatial_shape) == list(golden["encoded_spatial_shape"])
    assert out["encoded_spconv_tensor_stride"] == golden["encoded_stride"]
    # One thread reproduced the reference bit for bit on the CPU that made it; on another CPU model the
    # matmul kernels (MKL / oneDNN choose their code path by CPU) round differently, by up to ~1e-5
    # (an AVX-512 Xeon, sixth session). Two threads also reorder float sums.
    tol = dict(rtol=1e-5, atol=2e-5) if threads == 1 else dict(rtol=1e-5, atol=5e-4)
    torch.testing.assert_close(encoded.features, golden["encoded_features"], **tol)
    assert out["multi_scale_3d_strides"] == golden["multi_scale_3d_strides"]
    for name in ("x_conv1", "x_conv2", "x_conv3", "x_conv4"):
        tensor = out["multi_scale_3d_features"][name]
        assert list(tensor.spatial_shape) == list(golden[f"{name}_spatial_shape"]), name
        assert tensor.indices.shape[0] == golden[f"{name}_num_rows"], name
        rows = golden[f"{name}_rows"]
        # the stored rows first, so a failure shows values; then every row, exactly, through the digest
        assert torch.equal(tensor.indices[rows].long(), golden[f"{name}_indices_rows"].long()), name
        assert _sha256(tensor.indices, torch.int32) == golden[f"{name}_indices_sha256"], name
        torch.testing.assert_close(tensor.features[rows], golden[f"{name}_features_rows"], **tol)


def test_forward_writes_openpcdet_batch_keys(golden):
    cfg = golden["config"]
    encoder = VoxelNeXtEncoder(4, golden["grid_size_xyz"], cfg["CHANNELS"], cfg["OUT_CHANNEL"])
    batch = {"voxel_features": golden["voxel_features"], "voxel_coords": golden["voxel_coords"].float(),
             "batch_size": 2}
    with torch.no_grad():
        out = encoder(batch)
    assert out is batch
    for key in ("encoded_spconv_tensor", "encoded_spconv_tensor_stride", "multi_scale_3d_features",
                "multi_scale_3d_strides"):
        assert key in out
    assert encoder.num_point_features == cfg["OUT_CHANNEL"]
    assert encoder.backbone_channels == {"x_conv1": 8, "x_conv2": 8, "x_conv3": 16, "x_conv4": 16}


def test_eval_mode_runs_on_cpu(golden):
    cfg = golden["config"]
    encoder = VoxelNeXtEncoder(4, golden["grid_size_xyz"], cfg["CHANNELS"], cfg["OUT_CHANNEL"]).eval()
    with torch.no_grad():
        out = encoder.encode(golden["voxel_features"], golden["voxel_coords"], 2)
    assert torch.isfinite(out["encoded_spconv_tensor"].features).all()


def test_rejects_mismatched_deep_channels():
    with pytest.raises(ValueError, match="c3 == c4"):
        VoxelNeXtEncoder(4, [64, 64, 16], channels=[8, 8, 16, 16, 32])


def test_only_x_conv4_can_hold_a_site_twice(golden):
    """MLFR sorts the sites of every scale but x_conv4 instead of coalescing them (no host sync):
    right only while each of those scales is one sparse conv's output, one row per site."""
    from pcdet_rmae_ts.losses.common import SCALE_NAMES, scale_tensor
    from pcdet_rmae_ts.losses.mlfr import STACKED_SCALES
    from pcdet_rmae_ts.sparse_align import site_keys

    out = _run_golden(golden, threads=1)
    for scale in SCALE_NAMES:
        tensor = scale_tensor(out, scale)
        keys = site_keys(tensor.indices, tensor.spatial_shape)
        repeated = keys.numel() - torch.unique(keys).numel()
        if scale in STACKED_SCALES:
            assert repeated > 0, f"{scale} no longer stacks rows at one site: drop it from STACKED_SCALES"
        else:
            assert repeated == 0, f"{scale} holds {repeated} repeated site(s): add it to STACKED_SCALES"
