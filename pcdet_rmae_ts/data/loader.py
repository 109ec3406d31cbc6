"""DataLoader construction for pretraining: epoch-carrying sampler, worker seeding, DDP sharding.

The sampler yields ``(epoch, index)`` so augmentation stays reproducible and changes every epoch
even with persistent workers (which never see a ``dataset.set_epoch`` made in the main process).
"""
from __future__ import annotations

import functools
import logging
import random
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .dataset import PretrainDataset


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``; shuffles with a (seed, epoch) RNG, or shards through
    DistributedSampler when ``dist``. Call ``set_epoch(epoch)`` before each epoch."""

    def __init__(self, dataset: PretrainDataset, shuffle: bool, seed: int = 0, dist: bool = False) -> None:
        self.dataset_len = len(dataset)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.inner = DistributedSampler(dataset, shuffle=shuffle, seed=self.seed) if dist else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.inner is not None:
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else self.dataset_len

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.inner is not None:
            order = list(self.inner)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_len).tolist()
        else:
            order = list(range(self.dataset_len))
        return iter([(self.epoch, int(i)) for i in order])


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """Seed global RNGs of a worker (the dataset itself uses per-sample generators)."""
    worker_seed = (seed + 1000 * rank + worker_id) % (2 ** 32)
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    torch.manual_seed(worker_seed)
    # Each worker voxelises one frame at a time; torch's default of one thread per core in every
    # worker oversubscribes the CPU (4 workers x 16 threads on a 16-core host).
    torch.set_num_threads(1)


def collate_as_tensors(collate: Any, batch_list: list) -> dict:
    """``collate`` (OpenPCDet's numpy layout) with numeric arrays turned into torch tensors.

    Worker processes hand tensors to the main process through shared memory, numpy arrays through
    a pickle pipe; at the user's grid a batch of 8 is ~120 MB, and the copy was the loader's
    bottleneck (measurements in benchmarks/README.md)."""
    batch = collate(batch_list)
    return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" else value
            for key, value in batch.items()}


def build_dataloader(dataset_cfg: Mapping[str, Any], class_names: Sequence[str] | None, batch_size: int,
                     dist: bool = False, workers: int = 4, seed: int = 0, training: bool = True,
                     logger: logging.Logger | None = None, root_path: Any = None, split: str | None = None,
                     pin_memory: bool | None = None, multiprocessing_context: Any = None,
                     as_tensors: bool = False) -> tuple[PretrainDataset, DataLoader, EpochSampler]:
    """Build (dataset, loader, sampler). Training drops the last incomplete batch and shuffles.

    ``pin_memory`` defaults to CUDA availability; workers persist when ``workers > 0``.
    ``as_tensors``: batches hold torch tensors instead of numpy arrays (same keys, shapes, dtypes).
    """
    dataset = PretrainDataset(dataset_cfg, class_names, training=training, root_path=root_path,
                              logger=logger, split=split, seed=seed)
    sampler = EpochSampler(dataset, shuffle=training, seed=seed, dist=dist)
    rank = torch.distributed.get_rank() if dist else 0
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=functools.partial(collate_as_tensors, dataset.collate_batch) if as_tensors
        else dataset.collate_batch, drop_last=training, shuffle=False,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank),
        persistent_workers=workers > 0, multiprocessing_context=multiprocessing_context if workers > 0 else None,
        timeout=0)
    return dataset, loader, sampler
