"""The pretraining loop: one optimizer step per batch, EMA teacher update after it,
scalars to tensorboard, progress (tqdm on a terminal, log lines otherwise), periodic and
time-based checkpoints, and a resumable checkpoint on Ctrl-C."""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .batch import model_batch
from .checkpoint import LATEST_NAME, checkpoint_state, prune_checkpoints, save_checkpoint, unwrap


@dataclass
class TrainState:
    epoch: int = 0          # completed epochs
    it: int = 0             # optimizer steps so far
    skip_batches: int = 0   # batches of the current epoch already done (mid-epoch resume)


@dataclass
class LoopConfig:
    total_epochs: int
    grad_norm_clip: float
    ckpt_dir: Path
    ckpt_save_interval: int = 1
    max_ckpt_save_num: int = 30
    ckpt_save_time_interval: float = 300.0
    log_interval: int = 1
    amp: bool = False
    vis_interval: int = 0   # OPTIMIZATION.VIS_INTERVAL: BEV masking image to tensorboard every N epochs; 0 = off


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) stopped training after a completed step; the message says what was saved."""


PROGRESS_LINES_PER_EPOCH = 5     # without a terminal: progress log lines per epoch ...
PROGRESS_LOG_SECONDS = 60.0      # ... and at least one a minute


def _progress_bars(rank: int) -> bool | None:
    """tqdm's ``disable``: off on other ranks; None (= only on a terminal) on rank 0."""
    return True if rank != 0 else None


class SkipFirst(torch.utils.data.Sampler):
    """The sampler's order for this epoch minus the first ``n`` batches' worth of indices."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, n

    def __iter__(self):
        for i, item in enumerate(iter(self.sampler)):
            if i >= self.n:
                yield item

    def __len__(self):
        return max(len(self.sampler) - self.n, 0)


class Trainer:
    def __init__(self, model: nn.Module, optimizer, scheduler, loader, sampler, device: torch.device,
                 loop: LoopConfig, logger: logging.Logger, tb_writer=None, rank: int = 0, scaler=None,
                 voxelizer=None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loader, self.sampler, self.device = loader, sampler, device
        self.loop, self.logger, self.tb, self.rank = loop, logger, tb_writer, rank
        self.scaler = scaler
        self.voxelizer = voxelizer  # BatchVoxelizer when DATA_CONFIG.VOXELIZE_ON_DEVICE
        self.iters_per_epoch = len(loader)
        self.total_iters = self.iters_per_epoch * loop.total_epochs
        self._last_time_ckpt = time.time()
        self._interrupted = False  # first Ctrl-C: stop after the current step
        self._aborted = False      # second Ctrl-C: stop at once, do not save
        # tqdm draws bars on a terminal only; a redirected log gets plain progress lines instead
        self._bars_disabled = _progress_bars(rank)
        self._log_progress = rank == 0 and not sys.stderr.isatty()
        self._last_progress_log = time.time()

    # ------------------------------------------------------------------ public
    def train(self, state: TrainState) -> TrainState:
        """Train until ``loop.total_epochs``. On Ctrl-C, finish the current step, save
        latest_model.pth (resumed mid-epoch by the same command) and raise TrainingInterrupted."""
        with self._stop_on_sigint():
            try:
                return self._train_epochs(state)
            except BaseException:
                if not self._interrupted:
                    raise
                if self._aborted:
                    raise TrainingInterrupted(
                        f"Interrupted twice (Ctrl-C) in epoch {state.epoch + 1}; stopped at once without saving. "
                        f"Run the same command to resume from the newest checkpoint in {self.loop.ckpt_dir}.") from None
                # The flag is only acted on between steps, so ``state`` describes the last finished
                # step (a loader worker that died of the same Ctrl-C ends up here too).
                path = self.loop.ckpt_dir / LATEST_NAME
                self._save(path, state)
                raise TrainingInterrupted(
                    f"Interrupted (Ctrl-C) in epoch {state.epoch + 1} after iteration {state.it}; saved {path}. "
                    f"Run the same command to resume from there.") from None

    @contextlib.contextmanager
    def _stop_on_sigint(self):
        """While training, the first SIGINT only sets a flag (checked after each step); a second one
        interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._interrupted:
                self._aborted = True
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self._interrupted = True  # no logging here: a signal handler may not take the log's lock

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _check_interrupt(self) -> None:
        if self._interrupted:
            raise KeyboardInterrupt

    def _train_epochs(self, state: TrainState) -> TrainState:
        bar = tqdm(total=self.loop.total_epochs, initial=state.epoch, desc="epochs", dynamic_ncols=True,
                   disable=self._bars_disabled, leave=True)
        while state.epoch < self.loop.total_epochs:
            self._check_interrupt()
            self.train_one_epoch(state)
            state.epoch += 1
            state.skip_batches = 0
            bar.update(1)
            self._log_mask_image(state)
            self._sync_buffers()
            self._epoch_checkpoint(state)
        bar.close()
        return state

    def _sync_buffers(self) -> None:
        """Under DDP, give every rank rank 0's buffers (BN statistics of student and EMA teacher).

        DDP broadcasts buffers at the start of each forward, but the EMA update copies each rank's
        own student statistics into the teacher after the last step; without this the ranks would
        end an epoch (and training) with different teacher buffers."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for buffer in unwrap(self.model).buffers():
                torch.distributed.broadcast(buffer, src=0)

    def train_one_epoch(self, state: TrainState) -> None:
        self.sampler.set_epoch(state.epoch)
        loader = self._epoch_loader(state.skip_batches)
        bar = tqdm(total=self.iters_per_epoch, initial=state.skip_batches, desc=f"epoch {state.epoch + 1}",
                   dynamic_ncols=True, disable=self._bars_disabled, leave=False)
        self.model.train()
        end = time.time()
        losses = []
        for batch in loader:
            data_time = time.time() - end
            tb_dict = self.train_step(batch, state)
            state.it += 1
            state.skip_batches += 1
            step_time = time.time() - end
            end = time.time()
            self._log_step(tb_dict, state, data_time, step_time, batch["batch_size"])
            losses.append(float(tb_dict["loss"]))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{self.scheduler.base_lr:.2e}")
            bar.update(1)
            self._progress_line(state, losses[-1], step_time)
            self._time_checkpoint(state)
            self._check_interrupt()
        bar.close()
        if losses:
            self.logger.info("epoch %d/%d: mean loss %.4f (first %.4f, last %.4f) over %d iterations",
                             state.epoch + 1, self.loop.total_epochs, sum(losses) / len(losses), losses[0],
                             losses[-1], len(losses))

    def train_step(self, batch: dict, state: TrainState) -> dict:
        """scheduler -> forward -> backward -> clip -> optimizer step -> model.after_optimizer_step
        (global step, EMA teacher)."""
        self.scheduler.step(state.it, state.epoch)
        batch = model_batch(batch, self.device, self.voxelizer)
        batch["global_step"] = state.it
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.loop.amp):
            loss, tb_dict = self.model(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.grad_norm_clip)
        # Checked once the backward is queued (one device sync per step), before the weights change.
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Non-finite loss {float(loss)} at iteration {state.it} "
                                     f"(frames {list(batch.get('frame_id', []))}); terms: "
                                     f"{ {k: float(v) for k, v in tb_dict.items()} }")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        after = unwrap(self.model).after_optimizer_step(progress=(state.it + 1) / max(self.total_iters, 1))
        tb_dict = dict(tb_dict)
        tb_dict["grad_norm"] = grad_norm
        tb_dict.update(after)
        return tb_dict

    # ------------------------------------------------------------------ helpers
    def _epoch_loader(self, skip: int):
        if skip == 0:
            return self.loader
        self.logger.info("Resuming epoch mid-way: skipping its first %d batches", skip)
        loader = self.loader
        sampler = SkipFirst(self.sampler, skip * loader.batch_size)
        return torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, drop_last=loader.drop_last, pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn)

    def _progress_line(self, state: TrainState, loss: float, step_time: float) -> None:
        """Without a terminal (tqdm off): a progress log line a few times per epoch and once a minute."""
        if not self._log_progress:
            return
        every = max(1, math.ceil(self.iters_per_epoch / PROGRESS_LINES_PER_EPOCH))
        if state.skip_batches % every != 0 and time.time() - self._last_progress_log < PROGRESS_LOG_SECONDS:
            return
        self._last_progress_log = time.time()
        self.logger.info("epoch %d/%d  iteration %d/%d  loss %.4f  lr %.2e  %.2f s/iteration", state.epoch + 1,
                         self.loop.total_epochs, state.skip_batches, self.iters_per_epoch, loss,
                         self.scheduler.base_lr, step_time)

    def _log_step(self, tb_dict: dict, state: TrainState, data_time: float, step_time: float,
                  batch_size: int) -> None:
        if self.tb is None or state.it % self.loop.log_interval != 0:
            return
        for key, value in tb_dict.items():
            value = float(value)
            if math.isfinite(value):
                self.tb.add_scalar(f"train/{key}", value, state.it)
        self.tb.add_scalar("meta_data/learning_rate", self.scheduler.base_lr, state.it)
        for name, lr in self.scheduler.get_group_lrs().items():
            self.tb.add_scalar(f"meta_data/learning_rate/{name}", lr, state.it)
        self.tb.add_scalar("meta_data/frames_per_second", batch_size / max(step_time, 1e-9), state.it)
        self.tb.add_scalar("meta_data/data_time", data_time, state.it)

    def _log_mask_image(self, state: TrainState) -> None:
        """Every ``vis_interval`` epochs: the BEV masking picture of the epoch's last batch (sample 0)."""
        if self.tb is None or self.loop.vis_interval <= 0 or state.epoch % self.loop.vis_interval != 0:
            return
        from ..viz import figure_to_array, snapshot_mask_figure

        fig = snapshot_mask_figure(unwrap(self.model).masking_snapshot(), 0, f"epoch {state.epoch}")
        if fig is not None:
            self.tb.add_image("masking/bev", figure_to_array(fig), state.it, dataformats="HWC")

    def _save(self, path: Path, state: TrainState) -> None:
        if self.rank != 0:
            return
        extra = {"skip_batches": int(state.skip_batches)}
        save_checkpoint(checkpoint_state(self.model, self.optimizer, self.scheduler, self.scaler,
                                         epoch=state.epoch, it=state.it, extra=extra), path)

    def _epoch_checkpoint(self, state: TrainState) -> None:
        if state.epoch % self.loop.ckpt_save_interval != 0 and state.epoch != self.loop.total_epochs:
            return
        path = self.loop.ckpt_dir / f"checkpoint_epoch_{state.epoch}.pth"
        self._save(path, state)
        if self.rank == 0:
            prune_checkpoints(self.loop.ckpt_dir, self.loop.max_ckpt_save_num)
            latest = self.loop.ckpt_dir / LATEST_NAME
            if latest.exists():
                latest.unlink()
            self.logger.info("Saved %s", path)
        self._last_time_ckpt = time.time()

    def _time_checkpoint(self, state: TrainState) -> None:
        if time.time() - self._last_time_ckpt < self.loop.ckpt_save_time_interval:
            return
        if state.skip_batches >= self.iters_per_epoch:
            return  # the epoch checkpoint follows
        self._save(self.loop.ckpt_dir / LATEST_NAME, state)
        self._last_time_ckpt = time.time()
