"""Loader throughput with voxelisation in the workers vs on the device (VOXELIZE_ON_DEVICE).

At the user's grid (dense synthetic frames), in the same run: frames/s of the training loader
(default 4 workers, batch 8) when the workers voxelise, frames/s when they only read/augment/crop,
and the device time of voxelising one collated batch with BatchVoxelizer.

    PYTHONPATH=. python benchmarks/bench_device_voxelizer.py [--data DIR] [--workers 4] [--out FILE|DIR|-]

Each run is added to ``benchmarks/results/device_voxelizer_<card>.json`` unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import bench_loaders, isarc_cfg  # noqa: E402
from results_file import add_out_argument, append_run, card_name  # noqa: E402

from pcdet_rmae_ts.data.synthetic import write_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    add_out_argument(parser)
    args = parser.parse_args()
    data = Path(args.data or tempfile.mkdtemp()) / "dense"
    if not (data / "ImageSets").exists():
        write_dataset(data, args.frames, seed=0, profile="dense")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = bench_loaders(isarc_cfg(str(data)), [args.workers], args.batch_size, device)
    fps = {row["voxelization"]: row["frames_per_s"] for row in result["rows"]}
    print(f"device {device}, workers {args.workers}, batch {args.batch_size}")
    for mode, value in fps.items():
        print(f"loader, voxelisation {mode:<12}{value:>10.1f} frames/s")
    print(f"device voxelisation of a batch: {result['device_voxelize_ms_per_batch']:.2f} ms")
    print(f"points-only loader / voxelising loader: {fps['on device'] / fps['in workers']:.2f}x")
    append_run(args.out, "device_voxelizer", card_name(device), {"device": str(device), **vars(args), **result},
               label=args.label)

if __name__ == "__main__":
    main()
