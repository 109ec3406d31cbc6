"""DDP scaling of the pretraining step (EMA teacher every step, batch 8 per GPU, ISARC grid).

Run once without torchrun (one GPU, the reference), then with torchrun on N GPUs; each rank trains
its own shard of the frames with the engine's ``Trainer.train_step`` inside DistributedDataParallel,
prints its losses' finiteness and a checksum of its EMA teacher (parameters and buffers), and rank 0
compares the checksums across ranks. Usage (PYTHONPATH=.):
  python benchmarks/bench_ddp.py
  torchrun --nproc_per_node 2 benchmarks/bench_ddp.py
(rank 0 adds each run to ``benchmarks/results/ddp_<card>.json``; ``--out`` picks another file or folder).
Diagnostics for a scaling shortfall: ``--independent`` (each torchrun process trains alone, no
gradient all-reduce: what N processes on one host cost without communication), ``--same-data``
(every rank trains the same batches with the same masks: no load imbalance between ranks),
``--ddp-options '{"gradient_as_bucket_view": true}'``, ``--set-device`` (one GPU without torchrun,
with ``torch.cuda.set_device`` as torchrun runs do) and ``--profile DIR`` (a torch.profiler table per
rank over 3 more steps).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain import Timer, build_model, data_cfg, make_trainer, profile_steps, row_config, write_frames  # noqa: E402
from results_file import add_out_argument, append_run, card_name  # noqa: E402

from pcdet_rmae_ts.engine.dist import wrap_ddp  # noqa: E402
from pcdet_rmae_ts.engine.trainer import TrainState  # noqa: E402

_LOG = logging.getLogger("bench_ddp")


def checksum(module: torch.nn.Module, which: str) -> tuple:
    """(float64 sum, sha1 of the bytes) of a module's parameters or buffers, in name order."""
    items = sorted(module.named_parameters() if which == "params" else module.named_buffers())
    h = hashlib.sha1()
    total = 0.0
    for _, t in items:
        t = t.detach().cpu().contiguous()
        h.update(t.numpy().tobytes())
        total += float(t.double().sum())
    return total, h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--quick", action="store_true", help="reduced grid (CPU check, gloo)")
    parser.add_argument("--independent", action="store_true", help="under torchrun, but no DDP wrapper")
    parser.add_argument("--same-data", action="store_true", help="every rank: the same batches and masks")
    parser.add_argument("--ddp-options", default="{}", help="JSON dict of DistributedDataParallel keywords")
    parser.add_argument("--profile", default=None, help="folder for per-rank torch.profiler tables")
    parser.add_argument("--set-device", action="store_true", help="torch.cuda.set_device also without torchrun")
    add_out_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("bench_pretrain.quiet").setLevel(logging.WARNING)
    distributed = "WORLD_SIZE" in os.environ
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    rank, world, local = 0, 1, 0
    if distributed:
        local = int(os.environ["LOCAL_RANK"])
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda and args.set_device:
        torch.cuda.set_device(device)
    profile = "demo" if args.quick else "dense"
    root = Path(args.data) if args.data else Path(tempfile.gettempdir()) / "pcdet_rmae_ts_bench"
    path = root / f"{profile}_{args.frames}"
    if rank == 0:
        write_frames(path, args.frames, profile)
    if distributed:
        dist.barrier()
    cfg = data_cfg(path, args.quick)
    # each rank stages its own shard (DistributedSampler inside build_dataloader when distributed)
    from pcdet_rmae_ts.data import build_dataloader
    shard = distributed and not args.same_data
    dataset, loader, sampler = build_dataloader(cfg, ["dumptruck", "excavator", "grader", "roller"],
                                                batch_size=args.batch_size, dist=shard, workers=4,
                                                seed=0, training=True, pin_memory=False)
    from pcdet_rmae_ts.engine.batch import batch_to_device
    sampler.set_epoch(0)
    batches = [batch_to_device({k: v for k, v in b.items() if k != "points"}, device) for b in loader]
    if not shard:
        batches = batches[:max(1, len(dataset) // (args.batch_size * world))]  # as many as one shard holds
    model_cfg = row_config("ema", masking_seed=0 if args.same_data else rank)
    torch.manual_seed(0)
    model = build_model("ema", model_cfg, dataset).to(device).train()
    wrapped = distributed and not args.independent
    if wrapped:
        model = wrap_ddp(model, device, local, **json.loads(args.ddp_options))  # as the engine does
    total = args.warmup + args.steps
    trainer = make_trainer(model, model_cfg, batches, device, args.amp, epochs=-(-total // len(batches)))
    state = TrainState()
    losses = []

    def step(i: int):
        losses.append(float(trainer.train_step(batches[i % len(batches)], state)["loss"]))
        state.it += 1

    times = Timer(device)(step, args.warmup, args.steps)
    if args.profile:
        profile_steps(step, args.warmup + args.steps, device, Path(args.profile) / f"rank{rank}.txt")
    if wrapped:
        trainer._sync_buffers()  # what the engine does at each epoch end
    median = statistics.median(times)
    inner = model.module if wrapped else model
    teacher = torch.nn.ModuleDict({"encoder": inner.backbone_3d.teacher,
                                   "projector": inner.backbone_3d.teacher_projector})
    voxels = [int(b["voxel_coords"].shape[0]) for b in batches]
    mine = {"rank": rank, "median_ms": median, "frames_per_s_rank": args.batch_size * 1e3 / median,
            "mean_ms": float(np.mean(times)), "step_ms": times, "mean_voxels_per_batch": float(np.mean(voxels)),
            "losses_finite": bool(np.all(np.isfinite(losses))), "last_loss": losses[-1],
            "teacher_params": checksum(teacher, "params"), "teacher_buffers": checksum(teacher, "buffers"),
            "student_params": checksum(inner.backbone_3d, "params")}
    print(f"rank {rank}: {json.dumps(mine)}", flush=True)
    gathered = [mine]
    if distributed:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    if rank == 0:
        slowest = max(g["median_ms"] for g in gathered)
        variant = " ".join([("independent" if args.independent else "ddp" if distributed else "single")]
                           + (["same-data"] if args.same_data else []) + (["set-device"] if args.set_device else [])
                           + ([args.ddp_options] if args.ddp_options != "{}" else []))
        result = {"variant": variant, "world_size": world, "batch_per_gpu": args.batch_size, "amp": args.amp,
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
                  "card": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
                  "frames_per_s": world * args.batch_size * 1e3 / slowest, "ranks": gathered,
                  "teacher_params_identical": len({tuple(g["teacher_params"]) for g in gathered}) == 1,
                  "teacher_buffers_identical": len({tuple(g["teacher_buffers"]) for g in gathered}) == 1,
                  "losses_finite": all(g["losses_finite"] for g in gathered)}
        print(json.dumps({k: v for k, v in result.items() if k != "ranks"}), flush=True)
        append_run(args.out, "ddp", card_name(device), result, label=args.label)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
