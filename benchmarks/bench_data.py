"""Pretraining data-loader throughput at the ISARC grid (range +-70.4 m, voxel 0.1 x 0.1 x 0.2 m).

Generates (or reuses) a dense-profile synthetic dataset, then measures frames/s of one process
(`PretrainDataset.__getitem__` in a loop = what one DataLoader worker delivers) and of a DataLoader
with N workers. Usage (package installed, or PYTHONPATH=.):
``python benchmarks/bench_data.py [--frames 16] [--workers 0 2] [--out FILE|DIR|-]`` (default: the run is
added to ``benchmarks/results/data_<card>.json``, card = the CUDA device if there is one, else 'CPU <n>-core').
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import easydict
import numpy as np
import torch

from pcdet_rmae_ts.data import PretrainDataset, build_dataloader
from pcdet_rmae_ts.data.device_voxelizer import BatchVoxelizer
from pcdet_rmae_ts.data.synthetic import ensure_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import add_out_argument, append_run, card_name  # noqa: E402

_LOG = logging.getLogger("bench_data")
CLASSES = ["dumptruck", "excavator", "grader", "roller"]


def isarc_cfg(data_path: str) -> easydict.EasyDict:
    """custom_dataset_isarc.yaml + the pretraining DATA_AUGMENTOR; intensity is a 4th source column."""
    return easydict.EasyDict({
        "DATASET": "CustomDataset", "DATA_PATH": data_path,
        "POINT_CLOUD_RANGE": [-70.4, -70.4, -6, 70.4, 70.4, 10],
        "DATA_SPLIT": {"train": "train", "test": "val"},
        "POINT_FEATURE_ENCODING": {"encoding_type": "absolute_coordinates_encoding",
                                   "used_feature_list": ["x", "y", "z"],
                                   "src_feature_list": ["x", "y", "z", "intensity"]},
        "DATA_AUGMENTOR": {"DISABLE_AUG_LIST": ["gt_sampling"], "AUG_CONFIG_LIST": [
            {"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["x"]},
            {"NAME": "random_world_scaling", "WORLD_SCALE_RANGE": [0.98, 1.02]}]},
        "DATA_PROCESSOR": [
            {"NAME": "mask_points_and_boxes_outside_range", "REMOVE_OUTSIDE_BOXES": True},
            {"NAME": "shuffle_points", "SHUFFLE_ENABLED": {"train": True, "test": False}},
            {"NAME": "transform_points_to_voxels", "VOXEL_SIZE": [0.1, 0.1, 0.2], "MAX_POINTS_PER_VOXEL": 5,
             "MAX_NUMBER_OF_VOXELS": {"train": 150000, "test": 150000}}],
    })


def bench_in_process(cfg: easydict.EasyDict, repeats: int) -> dict:
    ds = PretrainDataset(cfg, CLASSES, training=True)
    first = time.perf_counter()
    ds[0]  # imports spconv and allocates its hash grid once
    warmup = time.perf_counter() - first
    voxels = []
    start = time.perf_counter()
    for epoch in range(repeats):
        for i in range(len(ds)):
            voxels.append(len(ds[(epoch, i)]["voxels"]))
    elapsed = time.perf_counter() - start
    return {"workers": 0, "frames": len(voxels), "seconds": elapsed, "frames_per_s": len(voxels) / elapsed,
            "first_sample_s": warmup, "mean_voxels": float(np.mean(voxels)), "max_voxels": int(np.max(voxels))}


def long_split(cfg: easydict.EasyDict, workers: int, batch_size: int) -> easydict.EasyDict:
    """``cfg`` reading a split that lists the training frames as often as needed for >= 4 batches per
    worker per epoch: with fewer, each epoch waits for one worker's first batch, and the figure is
    that latency, not the steady throughput of the workers. Writes ``ImageSets/bench_loader.txt``
    in the dataset folder (the only file a benchmark adds to a dataset given with ``--data``)."""
    root = Path(cfg.DATA_PATH)
    ids = (root / "ImageSets" / f"{cfg.DATA_SPLIT['train']}.txt").read_text().split()
    copies = -(-4 * max(workers, 1) * batch_size // len(ids))
    (root / "ImageSets" / "bench_loader.txt").write_text("\n".join(ids * copies) + "\n")
    out = copy.deepcopy(cfg)
    out.DATA_SPLIT = {"train": "bench_loader", "test": "bench_loader"}
    return out


def bench_loader(cfg: easydict.EasyDict, workers: int, batch_size: int, repeats: int) -> dict:
    cfg = long_split(cfg, workers, batch_size)
    _, loader, sampler = build_dataloader(cfg, CLASSES, batch_size=batch_size, workers=workers, seed=0,
                                          training=True, as_tensors=True)  # as the engine (pinned on CUDA)
    sampler.set_epoch(0)
    for _ in loader:  # warm-up epoch: worker start, spconv import, hash allocation
        pass
    frames = 0
    start = time.perf_counter()
    for epoch in range(1, repeats + 1):
        sampler.set_epoch(epoch)
        for batch in loader:
            frames += batch["batch_size"]
    elapsed = time.perf_counter() - start
    fps = frames / elapsed
    return {"workers": workers, "batch_size": batch_size, "frames": frames, "seconds": elapsed,
            "frames_per_s": fps, "frames_per_s_per_worker": fps / max(workers, 1)}


def time_voxelizer(cfg, batch_size: int, device: torch.device, repeats: int = 10) -> float:
    """Median ms of BatchVoxelizer on one collated batch already on ``device`` (VOXELIZE_ON_DEVICE)."""
    dataset, loader, sampler = build_dataloader(cfg, None, batch_size, workers=0, seed=0, as_tensors=True)
    sampler.set_epoch(0)
    points = next(iter(loader))["points"].to(device)
    voxelizer = BatchVoxelizer.from_dataset(dataset)
    times = []
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        voxelizer(points, batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2] * 1000


def bench_loaders(cfg, workers: list, batch_size: int, device: torch.device) -> dict:
    """Training-loader frames/s with each worker count, for voxelisation in the workers and for the
    shipped ``VOXELIZE_ON_DEVICE: True`` (workers read/augment/crop; the batch is voxelised on the
    device, whose time per batch is reported too)."""
    deferred = copy.deepcopy(cfg)
    deferred.VOXELIZE_ON_DEVICE = True
    rows = []
    for mode, c in (("on device", deferred), ("in workers", cfg)):
        for w in workers:
            rows.append({"voxelization": mode, **bench_loader(c, w, batch_size, repeats=2)})
            _LOG.info("%s", rows[-1])
    return {"rows": rows, "device_voxelize_ms_per_batch": time_voxelizer(deferred, batch_size, device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="dataset folder (default: a temporary dense synthetic set)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs")
    add_out_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data = Path(args.data) if args.data else Path(tempfile.gettempdir()) / "pcdet_rmae_ts_bench_dense"
    ensure_dataset(data, frames=args.frames, seed=0, profile="dense", val_fraction=0.0)
    cfg = isarc_cfg(str(data))
    results = {"cpu_count": os.cpu_count(), "frames": args.frames, "single": bench_in_process(cfg, args.repeats),
               "loaders": [bench_loader(cfg, w, args.batch_size, args.repeats) for w in args.workers]}
    single = results["single"]
    lines = [f"dense synthetic, {args.frames} frames, mean {single['mean_voxels']:.0f} voxels/frame "
             f"(max {single['max_voxels']}), first sample {single['first_sample_s']:.2f} s",
             f"{'setup':<28}{'frames/s':>10}{'frames/s/worker':>18}",
             f"{'in-process (1 worker)':<28}{single['frames_per_s']:>10.2f}{single['frames_per_s']:>18.2f}"]
    for row in results["loaders"]:
        name = f"DataLoader workers={row['workers']} bs={row['batch_size']}"
        lines.append(f"{name:<28}{row['frames_per_s']:>10.2f}{row['frames_per_s_per_worker']:>18.2f}")
    print("\n".join(lines))  # the table is this tool's output
    card = card_name(torch.device("cuda") if torch.cuda.is_available() else None)
    append_run(args.out, "data", card, results, label=args.label)


if __name__ == "__main__":
    main()
