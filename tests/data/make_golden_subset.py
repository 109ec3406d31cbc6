"""Derive ``voxelnext_backbone_golden_subset.pt`` (about 1 MB) from OpenPCDet's full golden file (5.4 MB).

    python tests/data/make_golden_subset.py /path/to/voxelnext_backbone_golden.pt

Kept in full: the config, the state_dict, the input batch and the encoded BEV output (what
VoxelNeXtHead reads). Per intermediate stage ``x_conv1..x_conv4``: the spatial shape, the number of
rows, SHA-256 digests of the complete indices (int32) and features (float32) in spconv's row order,
and 512 fixed rows of both, so a multi-threaded run (float sums reordered) can still be compared with
a tolerance and a failure shows values, not only a digest.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

STAGES = ("x_conv1", "x_conv2", "x_conv3", "x_conv4")
SAMPLE_ROWS = 512
KEPT = ("note", "config", "input_channels", "grid_size_xyz", "state_dict", "voxel_features", "voxel_coords",
        "batch_size", "encoded_indices", "encoded_features", "encoded_spatial_shape", "encoded_stride",
        "multi_scale_3d_strides")


def sha256_of(tensor: torch.Tensor, dtype: torch.dtype) -> str:
    """Digest of the tensor's bytes as ``dtype``, row-major (the comparison the tests repeat)."""
    return hashlib.sha256(tensor.detach().cpu().to(dtype).contiguous().numpy().tobytes()).hexdigest()


def subset(full: dict) -> dict:
    out = {key: full[key] for key in KEPT}
    out["note"] = full["note"] + (" Subset for the repository's tests (tests/data/make_golden_subset.py): "
                                  "x_conv1..4 as row count, SHA-256 of indices (int32) and features (float32), "
                                  f"and {SAMPLE_ROWS} fixed rows.")
    for stage in STAGES:
        indices, features = full[f"{stage}_indices"], full[f"{stage}_features"]
        generator = torch.Generator().manual_seed(0)
        rows = torch.randperm(indices.shape[0], generator=generator)[:SAMPLE_ROWS].sort().values
        out[f"{stage}_spatial_shape"] = full[f"{stage}_spatial_shape"]
        out[f"{stage}_num_rows"] = int(indices.shape[0])
        out[f"{stage}_indices_sha256"] = sha256_of(indices, torch.int32)
        out[f"{stage}_features_sha256"] = sha256_of(features, torch.float32)
        out[f"{stage}_rows"] = rows
        out[f"{stage}_indices_rows"] = indices[rows].clone()
        out[f"{stage}_features_rows"] = features[rows].clone()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", type=Path, help="OpenPCDet's voxelnext_backbone_golden.pt")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("voxelnext_backbone_golden_subset.pt"))
    args = parser.parse_args()
    torch.save(subset(torch.load(args.full, weights_only=True)), args.out)


if __name__ == "__main__":
    main()
