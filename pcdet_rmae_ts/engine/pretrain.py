"""Pretraining job: config -> data -> model -> optimizer -> (resume) -> train -> checkpoints.

``tools/train_rmae_cmae_phase1.py`` is a thin CLI over :func:`run_pretraining`.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from easydict import EasyDict

from ..config import cfg_from_list, cfg_from_yaml_file, log_config_to_file
from ..seeding import seed_everything
from .checkpoint import (
    check_resume_shapes,
    load_checkpoint,
    load_newest_checkpoint,
    load_weights_report,
    set_rng_state,
    unwrap,
)
from .dist import get_rank, init_dist_pytorch, wrap_ddp
from .logging_utils import create_logger
from .run_lock import RunLock
from .trainer import LoopConfig, Trainer, TrainState

# At the user's grid OpenPCDet's default of 4 loader workers does not feed an AMP pretraining step
# (measurements in benchmarks/README.md).
MAX_DEFAULT_WORKERS = 8


def default_workers(processes_per_node: int) -> int:
    """Loader workers per process when --workers is not given: min(8, CPUs per process), at least 1."""
    return max(1, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) // max(processes_per_node, 1)))


def _int_at_least(low: int):
    """argparse type: an int >= ``low`` (0 epochs or a batch of 0 would otherwise mean 'config value')."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="R-MAE + teacher-student pretraining of a VoxelNeXt backbone")
    parser.add_argument("--cfg_file", type=str, required=True, help="pretraining config (YAML)")
    parser.add_argument("--batch_size", type=_int_at_least(1), default=None,
                        help="batch size per GPU, >= 1 (default: OPTIMIZATION.BATCH_SIZE_PER_GPU)")
    parser.add_argument("--epochs", type=_int_at_least(1), default=None,
                        help="epochs, >= 1 (default: OPTIMIZATION.NUM_EPOCHS)")
    parser.add_argument("--workers", type=_int_at_least(0), default=None,
                        help=f"data loader workers per process (default: min({MAX_DEFAULT_WORKERS}, CPUs per process))")
    parser.add_argument("--extra_tag", type=str, default="default", help="run name under the output folder")
    parser.add_argument("--ckpt", type=str, default=None, help="resume from this checkpoint")
    parser.add_argument("--pretrained_model", type=str, default=None, help="initialise weights from this file")
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none")
    parser.add_argument("--tcp_port", type=int, default=18888, help="rendezvous port if MASTER_PORT is unset")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="ignored; read from LOCAL_RANK")
    parser.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across processes")
    parser.add_argument("--fix_random_seed", action="store_true", help="seed everything with --seed")
    parser.add_argument("--seed", type=int, default=666)
    parser.add_argument("--ckpt_save_interval", type=_int_at_least(1), default=1, help="epochs between checkpoints")
    parser.add_argument("--ckpt_save_time_interval", type=float, default=300.0,
                        help="seconds between mid-epoch latest_model.pth saves")
    parser.add_argument("--max_ckpt_save_num", type=_int_at_least(1), default=30, help="epoch checkpoints to keep")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; an error on the CPU)")
    parser.add_argument("--output_dir", type=str, default="output", help="root of the output folders")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow loading pickled (non weights_only) checkpoints you trust")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER,
                        help="override config keys: --set KEY VALUE [KEY VALUE ...]; may come before other "
                             "flags and be given more than once")
    return parser


def split_set_args(argv: Sequence[str], parser: argparse.ArgumentParser) -> tuple:
    """Take the ``--set KEY VALUE ...`` pairs out of ``argv``; returns (other arguments, set list).

    A ``--set`` list ends at the first of the parser's flags in a KEY (or VALUE) position, so flags may
    follow it; values are taken verbatim otherwise (``-40,-40,-3,40,40,5`` is a value, not a flag)."""
    flags = {flag for action in parser._actions for flag in action.option_strings}
    rest, set_cfgs = [], []
    i = 0
    while i < len(argv):
        if argv[i] != "--set":
            rest.append(argv[i])
            i += 1
            continue
        i += 1
        while i < len(argv) and argv[i] not in flags:
            set_cfgs.append(argv[i])  # KEY
            i += 1
            if i == len(argv) or argv[i] in flags:
                break  # a key without a value: cfg_from_list names it
            set_cfgs.append(argv[i])  # VALUE, verbatim
            i += 1
    return rest, set_cfgs


def parse_args(argv: Optional[Sequence[str]] = None,
               parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """The pretraining flags (``argv``: default sys.argv[1:]); ``--set`` pairs go to ``args.set_cfgs``.
    ``parser``: default build_arg_parser() (a caller that reports its own flag errors passes its own)."""
    parser = parser or build_arg_parser()
    rest, set_cfgs = split_set_args(list(sys.argv[1:] if argv is None else argv), parser)
    args = parser.parse_args(rest)
    args.set_cfgs = set_cfgs or None
    return args


def prepare_data_path(cfg, logger: logging.Logger) -> None:
    """Create the built-in synthetic dataset when the config asks for it (demo configs)."""
    synthetic = cfg.DATA_CONFIG.get("SYNTHETIC")
    if not synthetic or get_rank() != 0:
        return
    from ..data.synthetic import ensure_dataset

    ensure_dataset(cfg.DATA_CONFIG.DATA_PATH, frames=int(synthetic.get("FRAMES", 20)),
                   seed=int(synthetic.get("SEED", 0)), profile=str(synthetic.get("PROFILE", "demo")),
                   logger=logger, features=list(cfg.DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list))


def _output_dirs(cfg, args) -> dict:
    root = Path(args.output_dir) / cfg.EXP_GROUP_PATH / cfg.TAG / args.extra_tag
    dirs = {"root": root, "ckpt": root / "ckpt", "tensorboard": root / "tensorboard"}
    return dirs


def _resume(args, model, optimizer, scheduler, scaler, ckpt_dir: Path, logger) -> TrainState:
    """--ckpt, else the newest checkpoint of this run's folder that loads (corrupt ones are moved aside)."""
    if args.ckpt:
        path = Path(args.ckpt)
        ckpt = load_checkpoint(path, trust_pickle=args.trust_checkpoint)
    else:
        path, ckpt = load_newest_checkpoint(ckpt_dir, logger, trust_pickle=args.trust_checkpoint)
    if path is None:
        return TrainState()
    logger.info("Resuming from %s", path)
    check_resume_shapes(model, ckpt["model_state"], path)
    unwrap(model).load_state_dict(ckpt["model_state"])
    if ckpt.get("optimizer_state") is not None:
        optimizer.load_state_dict(ckpt["optimizer_state"])
    if ckpt.get("scheduler_state") is not None:
        scheduler.load_state_dict(ckpt["scheduler_state"])
    if ckpt.get("scaler_state") is not None:
        scaler.load_state_dict(ckpt["scaler_state"])
    if ckpt.get("rng_state") is not None:
        set_rng_state(ckpt["rng_state"])
    unwrap(model).load_extra_state(ckpt)
    state = TrainState(epoch=int(ckpt["epoch"]), it=int(ckpt["it"]), skip_batches=int(ckpt.get("skip_batches", 0)))
    logger.info("Resumed at epoch %d, iteration %d", state.epoch, state.it)
    return state


@dataclass
class Job:
    """What the set-up decided: config, process placement, output folders, logger."""

    args: argparse.Namespace
    cfg: EasyDict
    device: torch.device
    distributed: bool
    world_size: int
    rank: int
    local_rank: int
    dirs: dict
    logger: logging.Logger
    lock: Optional[RunLock] = None  # rank 0's hold on the output folder


def setup_job(argv: Optional[Sequence[str]] = None) -> Job:
    """Parse flags, load the config, start torch.distributed, create the output folders and the log."""
    parser = build_arg_parser()
    args = parse_args(argv, parser)
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.amp and device_type != "cuda":
        parser.error("--amp (mixed precision) needs a CUDA device, and this run is on the CPU; "
                     "drop --amp to train in fp32 on the CPU")
    cfg = cfg_from_yaml_file(args.cfg_file)
    if args.set_cfgs:
        cfg_from_list(args.set_cfgs, cfg)
    distributed = args.launcher == "pytorch"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    world_size, rank, local_rank = 1, 0, 0
    if distributed:
        world_size, rank, local_rank = init_dist_pytorch("nccl" if device_type == "cuda" else "gloo", args.tcp_port)
    device = torch.device(f"cuda:{local_rank}" if device_type == "cuda" else "cpu")
    if args.fix_random_seed:
        seed_everything(args.seed + rank)
    dirs = _output_dirs(cfg, args)
    lock = None
    if rank == 0:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        lock = RunLock(dirs["root"]).acquire()  # before the log file: a refused run writes nothing there
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logger = create_logger(dirs["root"] / f"log_train_{stamp}.txt", rank)
    logging.getLogger("pcdet_rmae_ts").handlers[:] = logger.handlers
    logger.info("**********************Start logging**********************")
    if lock is not None and lock.stale_owner:
        logger.warning("Took over %s left by a run that is no longer running (PID %s on %s, started %s).",
                       lock.path, lock.stale_owner.get("pid"), lock.stale_owner.get("host"),
                       lock.stale_owner.get("started", "?"))
    logger.info("CUDA_VISIBLE_DEVICES=%s  device=%s  world_size=%d", os.environ.get("CUDA_VISIBLE_DEVICES", "ALL"),
                device, world_size)
    for key, value in vars(args).items():
        logger.info("%-24s %s", key, value)
    log_config_to_file(cfg, logger=logger)
    return Job(args, cfg, device, distributed, world_size, rank, local_rank, dirs, logger, lock)


def build_trainer(job: Job):
    """Data, model, optimizer, schedule, resume state and the Trainer; returns (trainer, state, tb_writer)."""
    from ..data import build_dataloader
    from ..models.pretrain_model import PretrainModel
    from ..optim import build_scheduler, create_optimizer_with_differential_lr

    args, cfg, logger, device = job.args, job.cfg, job.logger, job.device
    optim_cfg = cfg.OPTIMIZATION
    batch_size = args.batch_size or int(optim_cfg.BATCH_SIZE_PER_GPU)
    epochs = args.epochs or int(optim_cfg.NUM_EPOCHS)
    prepare_data_path(cfg, logger)
    if job.distributed:
        torch.distributed.barrier()
    workers = args.workers if args.workers is not None else default_workers(
        int(os.environ.get("LOCAL_WORLD_SIZE", job.world_size)))
    logger.info("Data loader: %d workers per process%s", workers, "" if args.workers is not None else
                " (default: min(%d, CPUs per process); set --workers to change)" % MAX_DEFAULT_WORKERS)
    dataset, loader, sampler = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size, dist=job.distributed,
                                                workers=workers, seed=args.seed, training=True, logger=logger,
                                                as_tensors=True)
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training frames are fewer than one batch of {batch_size} per process "
                         f"x {job.world_size} processes; lower --batch_size or add data.")
    model = PretrainModel.from_config(cfg, dataset)
    if args.sync_bn and job.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.pretrained_model:
        load_weights_report(model, load_checkpoint(Path(args.pretrained_model),
                                                   args.trust_checkpoint)["model_state"], logger)
    optimizer = create_optimizer_with_differential_lr(model, optim_cfg, logger=logger)
    scheduler, _ = build_scheduler(optimizer, len(loader), epochs, -1, optim_cfg)
    amp = bool(args.amp)  # setup_job refused --amp without CUDA
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = _resume(args, model, optimizer, scheduler, scaler, job.dirs["ckpt"], logger)
    if job.distributed:
        model = wrap_ddp(model, device, job.local_rank)
    tb_writer = None
    if job.rank == 0:
        from tensorboardX import SummaryWriter
        tb_writer = SummaryWriter(log_dir=str(job.dirs["tensorboard"]))
    loop = LoopConfig(total_epochs=epochs, grad_norm_clip=float(optim_cfg.get("GRAD_NORM_CLIP", 10.0)),
                      ckpt_dir=job.dirs["ckpt"], ckpt_save_interval=args.ckpt_save_interval,
                      max_ckpt_save_num=args.max_ckpt_save_num,
                      ckpt_save_time_interval=args.ckpt_save_time_interval, amp=amp,
                      vis_interval=int(optim_cfg.get("VIS_INTERVAL", 0)))
    voxelizer = None
    if dataset.voxelize_on_device:
        from ..data.device_voxelizer import BatchVoxelizer
        voxelizer = BatchVoxelizer.from_dataset(dataset)
        logger.info("Voxelising each batch on %s (DATA_CONFIG.VOXELIZE_ON_DEVICE)", device)
    trainer = Trainer(model, optimizer, scheduler, loader, sampler, device, loop, logger, tb_writer, job.rank,
                      scaler, voxelizer=voxelizer)
    return trainer, state, tb_writer


def run_pretraining(argv: Optional[Sequence[str]] = None) -> Path:
    """Run a pretraining job; returns the output folder."""
    job = setup_job(argv)
    tb_writer = None
    try:
        trainer, state, tb_writer = build_trainer(job)
        job.logger.info("**********************Start training %s/%s(%s)**********************",
                        job.cfg.EXP_GROUP_PATH, job.cfg.TAG, job.args.extra_tag)
        trainer.train(state)
    finally:
        if tb_writer is not None:
            tb_writer.close()
        if job.lock is not None:
            job.lock.release()
    job.logger.info("**********************End training; checkpoints in %s**********************", job.dirs["ckpt"])
    if job.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return job.dirs["root"]
