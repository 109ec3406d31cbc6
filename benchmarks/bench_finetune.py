"""Fine-tuning step benchmark: the user's detector in real OpenPCDet (VoxelNeXt with this package's
backbone class and VoxelNeXtHead, ``cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml``)
at the ISARC grid: median step time, peak GPU memory and kernel time, fp32 and AMP.

The step is OpenPCDet's ``train_one_epoch`` iteration: autocast forward (``ret_dict['loss'].mean()``),
``update_global_step``, GradScaler backward, unscale, gradient clipping, the differential-LR optimizer's
step. Frames are bench_pretrain's dense synthetic frames without augmentation, with their own labelled
boxes as ``gt_boxes``. ``--targets``: VoxelNeXtHead's targets by OpenPCDet's per-box loop (``stock``, what
stock train.py runs) and/or batched over boxes (``batched``, what this package's launchers install).
Issue 15 asks for this step before and after its encoder changes; bench_pretrain's ``baseline`` row
times the same encoder without the head.

Needs a GPU (VoxelNeXtHead calls ``.cuda()`` in its constructor) and OpenPCDet importable with its CUDA
ops (``pcdet`` on PYTHONPATH). Usage (PYTHONPATH=.:<OpenPCDet>):
  python benchmarks/bench_finetune.py --batch-size 4 --device-steps 3   # a run added to results/finetune_<card>.json
"""
from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Iterable, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pretrain import CLASSES, Timer, data_cfg, device_busy_ms, environment, write_frames  # noqa: E402
from results_file import add_out_argument, append_run, card_name, results_path  # noqa: E402

from pcdet_rmae_ts.config import cfg_from_yaml_file  # noqa: E402
from pcdet_rmae_ts.data import build_dataloader  # noqa: E402
from pcdet_rmae_ts.data.synthetic import _frame_rng, generate_frame  # noqa: E402
from pcdet_rmae_ts.engine.batch import batch_to_device  # noqa: E402
from pcdet_rmae_ts.optim import create_optimizer_with_differential_lr  # noqa: E402

_LOG = logging.getLogger("bench_finetune")
FINETUNE_CFG = ROOT / "cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml"


# ----------------------------------------------------------------------------- data
def frame_gt_boxes(frame_id: str, seed: int = 0, profile: str = "dense") -> np.ndarray:
    """(M, 8) [x, y, z, dx, dy, dz, heading, class 1..4] of a frame written by ``write_frames(seed=seed)``:
    the generator is drawn again with the frame's own seed, so the boxes are the ones its points show."""
    _, boxes, names = generate_frame(_frame_rng(seed, int(frame_id)), profile)
    labels = np.array([CLASSES.index(str(n)) + 1 for n in names], dtype=np.float32)
    return np.concatenate([boxes.astype(np.float32), labels[:, None]], axis=1)


def padded_gt_boxes(per_frame: Iterable[np.ndarray]) -> np.ndarray:
    """(B, max M, 8), zero rows after each frame's boxes (OpenPCDet's collate: class 0 = padding)."""
    per_frame = list(per_frame)
    out = np.zeros((len(per_frame), max(len(b) for b in per_frame), 8), dtype=np.float32)
    for i, boxes in enumerate(per_frame):
        out[i, :len(boxes)] = boxes
    return out


def with_val_split(data: Path) -> Path:
    """``data`` with ``ImageSets/val.txt`` (the split the test-mode loader reads) naming the training frames."""
    val = data / "ImageSets" / "val.txt"
    if not val.is_file():
        val.write_text((data / "ImageSets" / "train.txt").read_text())
    return data


def stage_batches(cfg, batch_size: int, device: torch.device, max_batches: int, seed: int = 0,
                  profile: str = "dense") -> tuple:
    """(dataset, batches on ``device``): the loader in test mode (no augmentation, so the frames' boxes
    stay where their points are), each batch with its ``gt_boxes``."""
    dataset, loader, _ = build_dataloader(cfg, CLASSES, batch_size=batch_size, workers=0, seed=seed,
                                          training=False, pin_memory=False)
    batches = []
    for batch in loader:
        batch = {k: v for k, v in batch.items() if k != "points"}
        batch["gt_boxes"] = padded_gt_boxes(frame_gt_boxes(f, seed, profile) for f in batch["frame_id"])
        batches.append(batch_to_device(batch, device))
        if len(batches) >= max_batches:
            break
    return dataset, batches


# ----------------------------------------------------------------------------- model and step
def build_detector(cfg_file: Path, dataset) -> tuple:
    """(cfg, model): what OpenPCDet's train.py builds (its global cfg set, the plugin registered)."""
    import pcdet.models
    from pcdet.config import cfg as global_cfg

    import pcdet_rmae_ts

    cfg = cfg_from_yaml_file(cfg_file)
    global_cfg.MODEL, global_cfg.LOSS_CONFIG = cfg.MODEL, cfg.get("LOSS_CONFIG")
    pcdet_rmae_ts.register()
    model = pcdet.models.build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    return cfg, model


def use_targets(kind: str) -> None:
    """Put OpenPCDet's per-box target loop (``stock``) or the batched one (``batched``) on VoxelNeXtHead."""
    from pcdet.models.dense_heads import voxelnext_head

    from pcdet_rmae_ts.integration.pcdet import install_batched_voxelnext_targets

    cls = install_batched_voxelnext_targets(voxelnext_head, environ={})
    batched = cls.assign_target_of_single_head
    stock = getattr(batched, "original", batched)
    cls.assign_target_of_single_head = stock if kind == "stock" else batched


def openpcdet_step(model, optimizer, scaler, clip: float, amp: bool):
    """One iteration of OpenPCDet's ``train_one_epoch`` (the scheduler aside): returns ``step(batch)``."""
    params = list(model.parameters())

    def step(batch: dict) -> torch.Tensor:
        optimizer.zero_grad()
        with torch.autocast("cuda", enabled=amp):
            ret_dict, _, _ = model(dict(batch))  # the model adds keys to the dict it is given
            loss = ret_dict["loss"].mean()
        model.update_global_step()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def bench(cfg_file: Path, dataset, batches: List[dict], amp: bool, warmup: int, steps: int,
          device_steps: int, targets: str = "batched") -> dict:
    device = torch.device("cuda")
    use_targets(targets)
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    base_mem = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    cfg, model = build_detector(cfg_file, dataset)
    model.cuda().train()
    quiet = logging.getLogger("bench_finetune.quiet")
    optimizer = create_optimizer_with_differential_lr(model, cfg.OPTIMIZATION, logger=quiet)
    one = openpcdet_step(model, optimizer, torch.amp.GradScaler("cuda", enabled=amp),
                         float(cfg.OPTIMIZATION.get("GRAD_NORM_CLIP", 10.0)), amp)
    losses = []

    def step(i: int) -> None:
        losses.append(one(batches[i % len(batches)]))

    times = Timer(device)(step, warmup, steps)
    median = statistics.median(times)
    nonfinite = int((~torch.stack(losses).isfinite()).sum())
    result = {"median_ms": median, "min_ms": min(times), "max_ms": max(times), "steps": steps,
              "frames_per_s": int(batches[0]["batch_size"]) * 1e3 / median,
              "final_loss": float(losses[-1]), "losses_finite": nonfinite == 0,
              "nonfinite_losses": nonfinite, "losses": len(losses),
              "peak_mem_mb": (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20}
    if device_steps:
        result["device_ms"] = device_busy_ms(step, warmup + steps, device_steps)
    return result


def table(rows: list) -> str:
    lines = [f"{'batch':>5} {'prec':>5} {'targets':>8} {'median ms':>10} {'min ms':>8} {'frames/s':>9} {'peak MB':>8} "
             f"{'device ms':>10} {'loss':>8} {'non-finite':>10}"]
    for r in rows:
        dev = f"{r['device_ms']:10.1f}" if "device_ms" in r else f"{'-':>10}"
        lines.append(f"{r['batch']:>5} {r['precision']:>5} {r['targets']:>8} {r['median_ms']:10.1f} {r['min_ms']:8.1f} "
                     f"{r['frames_per_s']:9.1f} {r['peak_mem_mb']:8.0f} {dev} {r['final_loss']:8.3f} "
                     f"{r['nonfinite_losses']:>4} of {r['losses']:<3}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder for the generated frames (default: a temp folder; "
                        "bench_pretrain's frames are reused when they are there)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4, help="default 4 (the user's fine-tune)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "amp"], default=["fp32", "amp"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--device-steps", type=int, default=0,
                        help="sum the kernel time over N more steps (torch.profiler): the 'device ms' column")
    parser.add_argument("--targets", nargs="+", choices=["stock", "batched"], default=["batched"],
                        help="VoxelNeXtHead's targets: OpenPCDet's per-box loop and/or the launchers' batched one; "
                             "each is a row per precision")
    parser.add_argument("--cfg", default=str(FINETUNE_CFG), help="the fine-tune model config")
    add_out_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("bench_finetune.quiet").setLevel(logging.WARNING)
    if not torch.cuda.is_available():
        raise SystemExit("bench_finetune needs a GPU: OpenPCDet's VoxelNeXtHead calls .cuda() when it is built")
    root = Path(args.data) if args.data else Path(tempfile.gettempdir()) / "pcdet_rmae_ts_bench"
    data = write_frames(root / f"dense_{args.frames}", args.frames, "dense")
    cfg = data_cfg(with_val_split(data), quick=False)
    dataset, batches = stage_batches(cfg, args.batch_size, torch.device("cuda"), max_batches=4)
    voxels = [int(b["voxel_coords"].shape[0]) for b in batches]
    boxes = [int((b["gt_boxes"][..., 7] > 0).sum()) for b in batches]
    _LOG.info("batch %d: voxels/batch %s, boxes/batch %s", args.batch_size, voxels, boxes)
    card = card_name(torch.device("cuda"))
    out = results_path(args.out, "finetune", card)
    results = {"env": environment(torch.device("cuda")), "cfg": args.cfg,
               "grid": {"point_cloud_range": cfg.POINT_CLOUD_RANGE, "voxel_size": cfg.DATA_PROCESSOR[-1]["VOXEL_SIZE"],
                        "voxels_per_batch": voxels, "boxes_per_batch": boxes}, "rows": []}
    run_id = None
    for prec, targets in itertools.product(args.precisions, args.targets):
        r = bench(Path(args.cfg), dataset, batches, prec == "amp", args.warmup, args.steps, args.device_steps,
                  targets)
        r.update(batch=args.batch_size, precision=prec, targets=targets)
        results["rows"].append(r)
        _LOG.info("%s", r)
        if out:  # partial results survive a run cut off by a time limit
            run_id = append_run(out, "finetune", card, results, label=args.label, run_id=run_id)
    print(f"{results['env']}\n{results['grid']}\n{table(results['rows'])}")  # the table is this tool's output
    return results


if __name__ == "__main__":
    main()
