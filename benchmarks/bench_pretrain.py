"""Pretraining step benchmark: median step time, frames/s and peak GPU memory of the R-MAE
pretraining step against a plain VoxelNeXt encoder step, at the ISARC grid.

Rows (each at every batch size and precision, all in one run on the same batches):
  1 baseline       VoxelNeXtEncoder forward + backward on the complete voxels, trivial loss on the BEV
  2 teacher_off    pretraining step, no teacher
  3 identical      teacher = the student without gradient, run every step (TEACHER_LOG_INTERVAL 1)
  4 ema            EMA teacher, run every step, with its EMA update after the optimizer step
  5 phase2         the Phase 2 config (teacher-student losses), when pcdet_rmae_ts/losses.py exists
Every row runs the engine's own ``Trainer.train_step`` (scheduler, autocast, GradScaler, clip,
AdamW step, EMA update). Usage (PYTHONPATH=.):
  python benchmarks/bench_pretrain.py              # GPU, full grid: a run added to results/pretrain_<card>.json
  python benchmarks/bench_pretrain.py --device cpu --quick --out /tmp/quick.json            # CPU check
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_data import CLASSES, bench_loaders, isarc_cfg  # noqa: E402
from results_file import add_out_argument, append_run, card_name, card_slug, results_path  # noqa: E402

from pcdet_rmae_ts.config import cfg_from_yaml_file  # noqa: E402
from pcdet_rmae_ts.data import build_dataloader  # noqa: E402
from pcdet_rmae_ts.data.synthetic import _frame_rng, generate_frame  # noqa: E402
from pcdet_rmae_ts.engine.batch import batch_to_device  # noqa: E402
from pcdet_rmae_ts.engine.trainer import LoopConfig, Trainer, TrainState  # noqa: E402
from pcdet_rmae_ts.models.encoder import VoxelNeXtEncoder  # noqa: E402
from pcdet_rmae_ts.models.pretrain_model import PretrainModel  # noqa: E402
from pcdet_rmae_ts.models.vfe import MeanVFE  # noqa: E402
from pcdet_rmae_ts.occupancy import masked_sector_cells, occupancy_targets  # noqa: E402
from pcdet_rmae_ts.optim import build_scheduler, create_optimizer_with_differential_lr  # noqa: E402

_LOG = logging.getLogger("bench_pretrain")
PHASE1_CFG = ROOT / "cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml"
PHASE2_CFG = ROOT / "cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase2.yaml"
DEMO_CFG = ROOT / "cfgs/demo/rmae_cmae_demo_pretraining.yaml"
ROWS = ("baseline", "teacher_off", "identical", "ema", "phase2")
QUICK_RANGE = [-25.6, -25.6, -3.0, 25.6, 25.6, 5.0]


# ----------------------------------------------------------------------------- data
def _write_frame(args) -> int:
    out, seed, index, profile = args
    points, _, _ = generate_frame(_frame_rng(seed, index), profile)
    np.save(Path(out) / "points" / f"{index:06d}.npy", points)
    return len(points)


def write_frames(out: Path, frames: int, profile: str, seed: int = 0, procs: Optional[int] = None) -> Path:
    """Synthetic frames (points/*.npy + ImageSets/train.txt), generated in parallel; reused if complete."""
    meta = {"frames": frames, "profile": profile, "seed": seed}
    marker = out / "bench_meta.json"
    if marker.is_file() and json.loads(marker.read_text()) == meta:
        return out
    (out / "points").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, profile) for i in range(frames)]
    procs = procs or min(frames, os.cpu_count() or 1)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        counts = pool.map(_write_frame, jobs)
    (out / "ImageSets" / "train.txt").write_text("".join(f"{i:06d}\n" for i in range(frames)))
    marker.write_text(json.dumps(meta))
    _LOG.info("Wrote %d %s frames (mean %.0f points) to %s in %.1f s", frames, profile, np.mean(counts), out,
              time.perf_counter() - start)
    return out


def data_cfg(path: Path, quick: bool):
    """The ISARC dataset config (x, y, z used; intensity is the 4th source column); --quick: a small grid."""
    cfg = isarc_cfg(str(path))
    if quick:
        cfg.POINT_CLOUD_RANGE = list(QUICK_RANGE)
        cfg.DATA_PROCESSOR[-1]["VOXEL_SIZE"] = [0.2, 0.2, 0.2]
        cfg.DATA_PROCESSOR[-1]["MAX_NUMBER_OF_VOXELS"] = {"train": 40000, "test": 40000}
    return cfg


def stage_batches(cfg, batch_size: int, device: torch.device, workers: int, max_batches: int):
    """(dataset, batches already on ``device``): one epoch of the training loader, augmentation included."""
    dataset, loader, sampler = build_dataloader(cfg, CLASSES, batch_size=batch_size, workers=workers, seed=0,
                                                training=True, pin_memory=False)
    sampler.set_epoch(0)
    batches = []
    for batch in loader:
        batch = {k: v for k, v in batch.items() if k != "points"}  # the model never reads raw points
        batches.append(batch_to_device(batch, device))
        if len(batches) >= max_batches:
            break
    return dataset, batches


# ----------------------------------------------------------------------------- models
class BaselineModel(nn.Module):
    """MeanVFE + VoxelNeXt encoder on the complete voxels; loss = mean square of the BEV features
    (what a supervised VoxelNeXt pays for its backbone, without the head)."""

    def __init__(self, model_cfg, num_point_features: int, grid_size):
        super().__init__()
        bb = model_cfg.BACKBONE_3D
        self.vfe = MeanVFE(model_cfg.get("VFE"), num_point_features)
        self.backbone_3d = VoxelNeXtEncoder(num_point_features, grid_size,
                                            channels=bb.get("CHANNELS", [16, 32, 64, 128, 128]),
                                            out_channel=bb.get("OUT_CHANNEL", 128),
                                            kernel_sizes=bb.get("SPCONV_KERNEL_SIZES", [3, 3, 3, 3]))

    def update_global_step(self) -> None:
        return None

    def after_optimizer_step(self, progress: float) -> dict:
        """The engine's post-step hook (PretrainModel's contract): nothing to update, nothing to log."""
        return {}

    def extra_state(self) -> dict:
        return {}

    def forward(self, batch_dict: dict):
        out = self.backbone_3d(self.vfe(batch_dict))
        loss = out["encoded_spconv_tensor"].features.float().square().mean()
        return loss, {"loss": loss.detach()}


def row_config(row: str, masking_seed: int = 0):
    """Full config of a row (None for a row whose config does not exist yet)."""
    if row == "phase2":
        has_losses = (ROOT / "pcdet_rmae_ts/losses.py").is_file() or (ROOT / "pcdet_rmae_ts/losses").is_dir()
        if not (PHASE2_CFG.is_file() and has_losses):
            return None
        cfg = cfg_from_yaml_file(PHASE2_CFG)
    else:
        cfg = cfg_from_yaml_file(PHASE1_CFG)
        bb = cfg.MODEL.BACKBONE_3D
        bb.ENABLE_TEACHER_STUDENT = row in ("identical", "ema")
        if row in ("identical", "ema"):
            bb.TEACHER_BACKBONE_TYPE = row
            bb.TEACHER_LOG_INTERVAL = 1  # the teacher forward every step: its full cost
    cfg.MODEL.BACKBONE_3D.MASKING_SEED = masking_seed
    return cfg


def build_model(row: str, cfg, dataset) -> nn.Module:
    if row == "baseline":
        return BaselineModel(cfg.MODEL, dataset.point_feature_encoder.num_point_features, dataset.grid_size)
    return PretrainModel.from_config(cfg, dataset)


def make_trainer(model: nn.Module, cfg, batches: list, device: torch.device, amp: bool, epochs: int = 1,
                 logger: Optional[logging.Logger] = None) -> Trainer:
    quiet = logger or logging.getLogger("bench_pretrain.quiet")
    optimizer = create_optimizer_with_differential_lr(model, cfg.OPTIMIZATION, logger=quiet)
    scheduler, _ = build_scheduler(optimizer, len(batches), epochs, -1, cfg.OPTIMIZATION)
    loop = LoopConfig(total_epochs=epochs, grad_norm_clip=float(cfg.OPTIMIZATION.get("GRAD_NORM_CLIP", 10.0)),
                      ckpt_dir=Path(tempfile.gettempdir()), amp=amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return Trainer(model, optimizer, scheduler, batches, None, device, loop, quiet, None, 0, scaler)


# ----------------------------------------------------------------------------- timing
class Timer:
    """Median time of a callable: CUDA events on a GPU, perf_counter on the CPU (milliseconds)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[int], object], warmup: int, steps: int) -> List[float]:
        for i in range(warmup):
            fn(i)
        self.sync()
        times = []
        for i in range(steps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(warmup + i)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn(warmup + i)
                times.append((time.perf_counter() - t0) * 1e3)
        return times

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def kernel_ms(events) -> float:
    """Milliseconds of device work (kernels, copies, fills) among torch.profiler ``events``; a range
    annotation that the profiler also draws on the GPU timeline (``record_function``, the optimizer's
    step) spans kernels already counted, so it is left out."""
    return sum(e.time_range.elapsed_us() for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)) / 1e3


def device_busy_ms(step: Callable[[int], object], first: int, steps: int) -> float:
    """Kernel time per step (torch.profiler, CUDA activity only) over ``steps`` calls of ``step(first + i)``:
    the device's own work, the floor that cutting host work can reach (the step runs on one stream)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(first + i)
        torch.cuda.synchronize()
    return kernel_ms(prof.events()) / steps


def bench_row(row: str, batches: list, dataset, device, amp: bool, warmup: int, steps: int,
              device_steps: int = 0) -> dict:
    cfg = row_config(row)
    if cfg is None:
        return {"row": row, "skipped": "pcdet_rmae_ts/losses.py or the phase2 config does not exist"}
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(row, cfg, dataset).to(device).train()
    trainer = make_trainer(model, cfg, batches, device, amp,
                           epochs=-(-(warmup + steps + device_steps) // len(batches)))
    state = TrainState()
    losses = []

    def step(i: int):
        tb = trainer.train_step(batches[i % len(batches)], state)
        state.it += 1
        losses.append(tb["loss"])

    times = Timer(device)(step, warmup, steps)
    median = statistics.median(times)
    batch_size = int(batches[0]["batch_size"])
    result = {"row": row, "median_ms": median, "min_ms": min(times), "max_ms": max(times), "steps": steps,
              "frames_per_s": batch_size * 1e3 / median,
              "final_loss": float(losses[-1]), "losses_finite": bool(all(np.isfinite([float(v) for v in losses])))}
    if device.type == "cuda":
        result["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20
        result["peak_mem_abs_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if device_steps and device.type == "cuda":
        result["device_ms"] = device_busy_ms(step, warmup + steps, device_steps)
    if row != "baseline":
        mask = model.backbone_3d.forward_ret_dict.get("mask")
        result["student_voxel_fraction"] = float(mask.keep.float().mean()) if mask is not None else None
    return result


def bench_masking(batches: list, dataset, device, warmup: int, steps: int) -> dict:
    """Masker + occupancy targets on the step's batches (what the step pays before the student encoder)."""
    model = build_model("ema", row_config("ema"), dataset).to(device)
    bb = model.backbone_3d
    timer = Timer(device)

    def mask_and_targets(i: int):
        coords = batches[i % len(batches)]["voxel_coords"]
        b = int(batches[i % len(batches)]["batch_size"])
        bb.masker(coords, b)
        occupancy_targets(coords, b, bb.sparse_shape, bb.occupancy_cfg.stride)

    def masked_cells(i: int):
        coords = batches[i % len(batches)]["voxel_coords"]
        b = int(batches[i % len(batches)]["batch_size"])
        masked_sector_cells(bb.masker(coords, b), b, bb.occupancy_shape[1:], bb.occupancy_cfg.stride,
                            bb.voxel_size, bb.point_cloud_range)

    def issue_ms(i: int) -> float:  # host time to issue the work (no sync inside the timed region)
        timer.sync()
        start = time.perf_counter()
        mask_and_targets(i)
        return (time.perf_counter() - start) * 1e3

    out = {"masking_plus_targets_ms": statistics.median(timer(mask_and_targets, warmup, steps)),
           "masking_plus_targets_host_issue_ms": statistics.median([issue_ms(i) for i in range(steps)]),
           "masking_plus_masked_cells_ms": statistics.median(timer(masked_cells, warmup, steps))}
    out["masked_cells_ms"] = out["masking_plus_masked_cells_ms"] - out["masking_plus_targets_ms"]
    return out


def profile_steps(step: Callable[[int], object], first: int, device: torch.device, out: Path,
                  steps: int = 3) -> None:
    """torch.profiler tables (top ops by device time, then by CPU time) over ``steps`` calls of
    ``step(first + i)``, written to ``out``."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(first + i)
        Timer(device).sync()
    averages = prof.key_averages()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(averages.table(sort_by=key, row_limit=40) + "\n\nby CPU total:\n"
                   + averages.table(sort_by="cpu_time_total", row_limit=30))


def profile_row(row: str, batches: list, dataset, device, amp: bool, out_path: Path) -> None:
    """Profiler tables of 3 steps of a row, after 3 warm-up steps."""
    cfg = row_config(row)
    torch.manual_seed(0)
    model = build_model(row, cfg, dataset).to(device).train()
    trainer = make_trainer(model, cfg, batches, device, amp, epochs=-(-6 // len(batches)))
    state = TrainState()

    def step(i: int) -> None:
        trainer.train_step(batches[i % len(batches)], state)
        state.it += 1

    for i in range(3):
        step(i)
    profile_steps(step, 3, device, out_path)


# ----------------------------------------------------------------------------- convergence
def loss_curves(device, steps: int, data_root: Path, workers: int) -> dict:
    """Demo config: the same init, batches and masks in fp32 and in AMP; loss per step of both."""
    cfg = cfg_from_yaml_file(DEMO_CFG)
    path = write_frames(data_root / "demo", int(cfg.DATA_CONFIG.SYNTHETIC.FRAMES), "demo")
    cfg.DATA_CONFIG.DATA_PATH = str(path)
    cfg.DATA_CONFIG.DATA_SPLIT = {"train": "train", "test": "train"}
    cfg.MODEL.BACKBONE_3D.MASKING_SEED = 0
    dataset, batches = stage_batches(cfg.DATA_CONFIG, int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU), device, workers,
                                     10 ** 6)
    torch.manual_seed(0)
    init = PretrainModel.from_config(cfg, dataset).state_dict()
    curves = {}
    for name, amp in (("fp32", False), ("amp", True)):
        torch.manual_seed(0)
        model = PretrainModel.from_config(cfg, dataset)
        model.load_state_dict(init)
        model.to(device).train()
        epochs = -(-steps // len(batches))
        trainer = make_trainer(model, cfg, batches, device, amp, epochs=epochs)
        state = TrainState()
        losses = []
        for i in range(steps):
            losses.append(float(trainer.train_step(batches[i % len(batches)], state)["loss"]))
            state.it += 1
        curves[name] = losses
    window = max(steps // 10, 1)
    summary = {k: {"first_mean": float(np.mean(v[:window])), "last_mean": float(np.mean(v[-window:]))}
               for k, v in curves.items()}
    diff = np.abs(np.array(curves["fp32"]) - np.array(curves["amp"]))
    return {"steps": steps, "batches": len(batches), "window": window, "summary": summary,
            "max_abs_diff": float(diff.max()), "mean_abs_diff_last_window": float(diff[-window:].mean()),
            "curves": curves}


# ----------------------------------------------------------------------------- report
def table(rows: list) -> str:
    lines = [f"{'batch':>5} {'prec':>5} {'row':<12}{'median ms':>10}{'frames/s':>10}{'x row1':>8}"
             f"{'peak MB':>10}{'mem x1':>8}{'student':>8}{'device ms':>10}{'dev x1':>8}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['batch']:>5} {r['precision']:>5} {r['row']:<12} skipped: {r['skipped']}")
            continue
        mem = f"{r['peak_mem_mb']:>10.0f}{r['mem_ratio']:>8.2f}" if "peak_mem_mb" in r else f"{'-':>10}{'-':>8}"
        frac = r.get("student_voxel_fraction")
        lines.append(f"{r['batch']:>5} {r['precision']:>5} {r['row']:<12}{r['median_ms']:>10.1f}"
                     f"{r['frames_per_s']:>10.1f}{r['time_ratio']:>8.2f}{mem}"
                     f"{(f'{frac:.2f}' if frac is not None else '-'):>8}"
                     + (f"{r['device_ms']:>10.1f}{r['device_ratio']:>8.2f}" if "device_ms" in r else ""))
    return "\n".join(lines)


def add_ratios(rows: list) -> None:
    base = {(r["batch"], r["precision"]): r for r in rows if r["row"] == "baseline"}
    for r in rows:
        b = base.get((r["batch"], r["precision"]))
        if "skipped" in r or b is None:
            continue
        r["time_ratio"] = r["median_ms"] / b["median_ms"]
        if "device_ms" in r:  # this row's kernel time against the baseline's whole step: its floor
            r["device_ratio"] = r["device_ms"] / b["median_ms"]
        if "peak_mem_mb" in r:
            r["mem_ratio"] = r["peak_mem_mb"] / b["peak_mem_mb"]


def environment(device: torch.device) -> dict:
    import spconv
    env = {"torch": torch.__version__, "spconv": getattr(spconv, "__version__", "?"),
           "python": platform.python_version(), "device": str(device), "cpu_count": os.cpu_count(), "argv": sys.argv}
    if device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    parser.add_argument("--quick", action="store_true", help="reduced grid and steps (CPU check)")
    parser.add_argument("--data", default=None, help="folder for the generated frames (default: a temp folder)")
    parser.add_argument("--frames", type=int, default=None, help="frames to generate (default 32; quick 4)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 4 8 (quick: 2)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "amp"], default=None)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--warmup", type=int, default=None, help="default 5 (quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps, default 20 (quick 3)")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[4],
                        help="worker counts of the loader benchmark (0: skip)")
    parser.add_argument("--loader-batch", type=int, default=None, help="default 8 (quick: 2)")
    parser.add_argument("--curves", type=int, default=0, help="fp32-vs-AMP demo loss curves over N steps")
    parser.add_argument("--device-steps", type=int, default=0,
                        help="after each row's timing, sum its kernel time over N more steps (torch.profiler; "
                             "CUDA only): the 'device ms' column, and 'dev x1' = it / the baseline's step")
    parser.add_argument("--profile", default=None, help="write a torch.profiler table of 'ema' (largest batch) here; "
                        "a folder: pretrain_<card>_ema_b<batch>_<precision>_<date>.txt in it "
                        "(the repository's: benchmarks/results/profiles/)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = args.quick
    args.frames = args.frames or (4 if quick else 32)
    args.batch_sizes = args.batch_sizes or ([2] if quick else [4, 8])
    args.loader_batch = args.loader_batch or (2 if quick else 8)
    args.precisions = args.precisions or (["fp32"] if args.device.type == "cpu" else ["fp32", "amp"])
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.steps = args.steps or (3 if quick else 20)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("bench_pretrain.quiet").setLevel(logging.WARNING)
    device = args.device
    if "amp" in args.precisions and device.type != "cuda":
        raise SystemExit("--precisions amp needs CUDA (autocast fp16 + GradScaler)")
    root = Path(args.data) if args.data else Path(tempfile.gettempdir()) / "pcdet_rmae_ts_bench"
    profile = "demo" if args.quick else "dense"
    data = write_frames(root / f"{profile}_{args.frames}", args.frames, profile)
    cfg = data_cfg(data, args.quick)
    card = card_name(device)
    out = results_path(args.out, "pretrain", card)
    run_id = None
    results: Dict[str, object] = {"env": environment(device), "grid": {
        "point_cloud_range": cfg.POINT_CLOUD_RANGE, "voxel_size": cfg.DATA_PROCESSOR[-1]["VOXEL_SIZE"],
        "profile": profile, "frames": args.frames}, "rows": [], "masking": {}}
    staged = {}
    for b in args.batch_sizes:
        t0 = time.perf_counter()
        staged[b] = stage_batches(cfg, b, device, min(8, os.cpu_count() or 1), max_batches=4)
        n = [int(x["voxel_coords"].shape[0]) for x in staged[b][1]]
        _LOG.info("batch %d: %d batches staged in %.1f s, voxels/batch %s", b, len(n), time.perf_counter() - t0, n)
        results["grid"][f"voxels_per_batch_{b}"] = n
    dataset = staged[args.batch_sizes[0]][0]
    results["grid"]["grid_size"] = [int(g) for g in dataset.grid_size]
    for b in args.batch_sizes:
        batches = staged[b][1]
        for prec in args.precisions:
            for row in args.rows:
                try:
                    r = bench_row(row, batches, dataset, device, prec == "amp", args.warmup, args.steps,
                                  args.device_steps)
                except Exception as err:  # a row under development must not cost the others
                    _LOG.exception("row %s failed", row)
                    r = {"row": row, "skipped": f"failed: {type(err).__name__}: {err}"}
                r.update(batch=b, precision=prec)
                results["rows"].append(r)
                _LOG.info("%s", {k: v for k, v in r.items()})
                if out:  # partial results survive a run cut off by a time limit (the run is replaced later)
                    run_id = append_run(out, "pretrain", card, results, label=args.label, run_id=run_id)
        results["masking"][str(b)] = bench_masking(batches, dataset, device, args.warmup, args.steps)
    add_ratios(results["rows"])
    for key, m in results["masking"].items():
        for r in results["rows"]:
            if r["row"] == "ema" and str(r["batch"]) == key and "median_ms" in r:
                m[f"share_of_ema_step_{r['precision']}"] = m["masking_plus_targets_ms"] / r["median_ms"]
    if any(w > 0 for w in args.loader_workers):
        results["loader"] = bench_loaders(cfg, [w for w in args.loader_workers if w > 0], args.loader_batch, device)
    profile_file = None
    if args.profile:
        bmax = max(args.batch_sizes)
        amp = "amp" in args.precisions
        profile_file = Path(args.profile)
        if args.profile.endswith(("/", os.sep)) or profile_file.is_dir():
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            profile_file /= f"pretrain_{card_slug(card)}_ema_b{bmax}_{'amp' if amp else 'fp32'}_{stamp}.txt"
        profile_row("ema", staged[bmax][1], dataset, device, amp, profile_file)
    if args.curves and device.type == "cuda":
        results["curves"] = loss_curves(device, args.curves, root, min(8, os.cpu_count() or 1))
    report = [f"{results['env']}", f"grid {results['grid']}", table(results["rows"])]
    for key, m in results["masking"].items():
        report.append(f"batch {key}: masking + occupancy targets {m['masking_plus_targets_ms']:.2f} ms; "
                      + ", ".join(f"{k} {v:.3%}" for k, v in m.items() if k.startswith("share")))
    for lo in results.get("loader", {}).get("rows", []):
        report.append(f"loader ({lo['voxelization']}): {lo['workers']} workers, batch {lo['batch_size']}: "
                      f"{lo['frames_per_s']:.1f} frames/s")
    if "loader" in results:
        report.append(f"device voxelisation of a batch of {args.loader_batch}: "
                      f"{results['loader']['device_voxelize_ms_per_batch']:.2f} ms")
    if "curves" in results:
        c = results["curves"]
        report.append(f"curves over {c['steps']} demo steps: {c['summary']}; max |fp32-amp| {c['max_abs_diff']:.4f}")
    print("\n".join(report))  # the table is this tool's output
    if out:
        extra = {"profile": str(profile_file)} if profile_file else {}
        append_run(out, "pretrain", card, results, label=args.label, run_id=run_id, **extra)
        _LOG.info("Added the run to %s", out)
    return results


if __name__ == "__main__":
    main()
