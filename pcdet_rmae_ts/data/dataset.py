"""Unlabeled point-cloud dataset for pretraining, with OpenPCDet's sample and batch layout.

Reads the ``points/<id>.npy`` + ``ImageSets/<split>.txt`` part of an OpenPCDet CustomDataset folder
(no labels or info pickles), or a plain folder of .npy/.bin/.pcd files. Each sample is augmented
and voxelised with an RNG seeded from (seed, epoch, index), so results do not depend on workers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple, Union

import numpy as np
import torch.utils.data

from ..config import ConfigError, config_source
from .augment import PointAugmentor
from .processor import DataProcessor, PointFeatureEncoder
from .readers import SUPPORTED_SUFFIXES, BadSampleError, read_points

_LOG = logging.getLogger(__name__)
ON_BAD_SAMPLE_CHOICES = ("error", "skip")
SKIP_HINT = ("To train on without bad files, set DATA_CONFIG.ON_BAD_SAMPLE: skip "
             "(or --set DATA_CONFIG.ON_BAD_SAMPLE skip)")
DATA_PATH_FIX = "pass --set DATA_CONFIG.DATA_PATH /path/to/dataset (or fix DATA_PATH in the dataset YAML)"

Index = Union[int, Tuple[int, int]]


@dataclass(frozen=True)
class BadSamplePolicy:
    """``ON_BAD_SAMPLE``: 'error' stops at a bad file; 'skip' logs it and uses the next good one."""

    on_bad_sample: str = "error"
    max_retries: int = 20

    @classmethod
    def from_cfg(cls, dataset_cfg: Mapping[str, Any]) -> BadSamplePolicy:
        mode = str(dataset_cfg.get("ON_BAD_SAMPLE", "error")).lower()
        if mode not in ON_BAD_SAMPLE_CHOICES:
            raise ValueError(f"DATA_CONFIG.ON_BAD_SAMPLE: {mode!r} is not one of {list(ON_BAD_SAMPLE_CHOICES)}")
        retries = int(dataset_cfg.get("MAX_BAD_SAMPLE_RETRIES", 20))
        if retries < 1:
            raise ValueError(f"DATA_CONFIG.MAX_BAD_SAMPLE_RETRIES must be >= 1, got {retries}")
        return cls(on_bad_sample=mode, max_retries=retries)


def _floats(value: Any) -> np.ndarray:
    """``value`` as a float64 array; an empty one when it is not numbers (the checks then reject its shape)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return np.zeros(0)


def check_point_cloud_range(value: Any, source: str | None = None) -> np.ndarray:
    """``POINT_CLOUD_RANGE`` as float32 [x_min, y_min, z_min, x_max, y_max, z_max] (metres), or ConfigError."""
    key, example = "DATA_CONFIG.POINT_CLOUD_RANGE", "[-75.2, -75.2, -2, 75.2, 75.2, 4]"
    pcr = _floats(value)
    if pcr.shape != (6,) or not np.isfinite(pcr).all():
        raise ConfigError(f"must be 6 finite numbers [x_min, y_min, z_min, x_max, y_max, z_max], got {value!r}",
                          key=key, file=source, fix=f"e.g. {example}")
    inverted = [axis for axis, lo, hi in zip("xyz", pcr[:3], pcr[3:]) if not lo < hi]
    if inverted:
        raise ConfigError(f"min must be below max on each axis, but not on {', '.join(inverted)} (got {value!r}; "
                          "the order is all minima, then all maxima)", key=key, file=source,
                          fix=f"e.g. {example}")
    return pcr.astype(np.float32)


def check_voxel_size(processors: Sequence[Mapping[str, Any]], point_cloud_range: np.ndarray,
                     source: str | None = None) -> None:
    """``VOXEL_SIZE`` of transform_points_to_voxels: 3 positive numbers no larger than the range."""
    for i, entry in enumerate(processors):
        if not isinstance(entry, Mapping) or entry.get("NAME") != "transform_points_to_voxels":
            continue
        key = f"DATA_CONFIG.DATA_PROCESSOR[{i}].VOXEL_SIZE"
        value = entry.get("VOXEL_SIZE")
        size = _floats(value)
        if size.shape != (3,) or not np.isfinite(size).all() or (size <= 0).any():
            raise ConfigError(f"must be 3 positive sizes [x, y, z] in metres, got {value!r}", key=key,
                              file=source, fix="e.g. [0.1, 0.1, 0.15]")
        extent = point_cloud_range[3:].astype(np.float64) - point_cloud_range[:3]
        if (size > extent).any():
            raise ConfigError(f"{value!r} is larger than the POINT_CLOUD_RANGE extent {extent.tolist()}", key=key,
                              file=source, fix="use voxels smaller than the range")


def discover_samples(root: Path, split_name: str) -> tuple[list[str], list[Path]]:
    """Return (frame ids, point files): CustomDataset layout if ``root/ImageSets`` exists, else the
    sorted .npy/.bin/.pcd files directly in ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {root} (DATA_CONFIG.DATA_PATH) does not exist; {DATA_PATH_FIX}")
    image_sets = root / "ImageSets"
    if image_sets.is_dir():
        split_file = image_sets / f"{split_name}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"Split file {split_file} is missing (DATA_CONFIG.DATA_SPLIT names {split_name!r}); "
                f"create it with one sample id per line, or {DATA_PATH_FIX}")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        return ids, [root / "points" / f"{sample_id}.npy" for sample_id in ids]
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root} has neither ImageSets/ nor {'/'.join(SUPPORTED_SUFFIXES)} files; "
                                f"{DATA_PATH_FIX}")
    return [p.stem for p in files], files


class PretrainDataset(torch.utils.data.Dataset):
    """Unlabeled LiDAR frames -> OpenPCDet sample dicts (points, voxels, voxel_coords, ...).

    ``dataset_cfg`` is the DATA_CONFIG EasyDict; ``split`` overrides the split file name that
    ``DATA_SPLIT[mode]`` gives. Indices are ints or ``(epoch, index)`` pairs (see EpochSampler).
    """

    def __init__(self, dataset_cfg: Mapping[str, Any], class_names: Sequence[str] | None, training: bool = True,
                 root_path: str | Path | None = None, logger: logging.Logger | None = None,
                 split: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.dataset_cfg = dataset_cfg
        self.class_names = list(class_names) if class_names is not None else None
        self.training = training
        self.mode = "train" if training else "test"
        self.logger = logger
        if root_path is None and not dataset_cfg.get("DATA_PATH"):
            raise ValueError(f"DATA_CONFIG.DATA_PATH is not set; {DATA_PATH_FIX}")
        self.root_path = Path(root_path if root_path is not None else dataset_cfg["DATA_PATH"])
        self.split = split or str(dict(dataset_cfg.get("DATA_SPLIT", {})).get(self.mode, self.mode))
        self.policy = BadSamplePolicy.from_cfg(dataset_cfg)
        # VOXELIZE_ON_DEVICE: workers only read, augment and crop; the training process voxelises
        # the whole batch on its device (data/device_voxelizer.py).
        self.voxelize_on_device = bool(dataset_cfg.get("VOXELIZE_ON_DEVICE", False))
        self.seed = int(seed)
        self.epoch = 0
        self.point_cloud_range = check_point_cloud_range(dataset_cfg.get("POINT_CLOUD_RANGE"),
                                                         config_source(dataset_cfg))
        check_voxel_size(dataset_cfg.get("DATA_PROCESSOR", []) or [], self.point_cloud_range,
                         config_source(dataset_cfg))
        self.point_feature_encoder = PointFeatureEncoder(dataset_cfg["POINT_FEATURE_ENCODING"])
        self.data_augmentor = (PointAugmentor(dataset_cfg.get("DATA_AUGMENTOR", {}) or {}, logger=self._log)
                               if training else None)
        self.data_processor = DataProcessor(dataset_cfg.get("DATA_PROCESSOR", []), self.point_cloud_range,
                                            training, self.point_feature_encoder.num_point_features,
                                            defer_voxelization=self.voxelize_on_device)
        self.grid_size = self.data_processor.grid_size
        self.voxel_size = self.data_processor.voxel_size
        self.depth_downsample_factor = None
        self.frame_ids, self.sample_files = discover_samples(self.root_path, self.split)
        self._log.info("PretrainDataset: %d %s frames from %s", len(self.frame_ids), self.mode, self.root_path)

    @property
    def _log(self) -> logging.Logger:
        return self.logger or _LOG

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["logger"] = None  # handlers do not pickle; workers log through the module logger
        return state

    def __len__(self) -> int:
        return len(self.frame_ids)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for int indices (in-process loading; loaders pass the epoch in the index)."""
        self.epoch = int(epoch)

    def sample_rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), int(index)]))

    def load_sample(self, index: int, epoch: int) -> dict[str, Any]:
        """Read, augment, encode and voxelise one frame; raises BadSampleError for a bad file."""
        path = self.sample_files[index]
        rng = self.sample_rng(index, epoch)
        points = read_points(path, self.point_feature_encoder.num_src_features)
        data: dict[str, Any] = {"frame_id": self.frame_ids[index]}
        # encode before augmenting (OpenPCDet does the reverse): the augmentations touch only x, y, z,
        # which the encoder keeps first, so the result is the same and they copy fewer columns
        points = self.point_feature_encoder(points, str(path))
        if self.data_augmentor is not None:
            points, info = self.data_augmentor(points, rng)
            data.update(info)
        data["points"] = points
        data["use_lead_xyz"] = True
        return self.data_processor(data, rng, source=str(path))

    def __getitem__(self, index: Index) -> dict[str, Any]:
        epoch, index = (int(index[0]), int(index[1])) if isinstance(index, tuple) else (self.epoch, int(index))
        errors = []
        for attempt in range(self.policy.max_retries):
            current = (index + attempt) % len(self)
            try:
                return self.load_sample(current, epoch)
            except BadSampleError as err:
                if self.policy.on_bad_sample == "error":
                    raise BadSampleError(f"{err}. {SKIP_HINT}") from err
                errors.append(str(err))
                self._log.warning("Skipping bad sample %s (ON_BAD_SAMPLE=skip): %s",
                                  self.sample_files[current].name, err)
        raise BadSampleError(f"{self.policy.max_retries} consecutive bad samples starting at "
                             f"{self.sample_files[index]}; last: {errors[-1]}. Check the dataset under "
                             f"{self.root_path}")

    @staticmethod
    def collate_batch(batch_list: list[dict[str, Any]], _unused: bool = False) -> dict[str, Any]:
        """OpenPCDet layout: points (ΣN, 1+C) float32 and voxel_coords (ΣV, 4) int32 [b, z, y, x]
        with the sample index first; voxels/voxel_num_points concatenated; frame_id array of str;
        other keys stacked; batch_size int."""
        batch: dict[str, Any] = {}
        for key in batch_list[0]:
            values = [sample[key] for sample in batch_list]
            if key in ("points", "voxel_coords"):
                rows = np.concatenate(values, axis=0)
                batch[key] = np.empty((len(rows), 1 + rows.shape[1]), np.float32 if key == "points" else np.int32)
                batch[key][:, 0] = np.repeat(np.arange(len(values)), [len(v) for v in values])
                batch[key][:, 1:] = rows
            elif key in ("voxels", "voxel_num_points"):
                batch[key] = np.concatenate(values, axis=0)
            elif key == "frame_id":
                batch[key] = np.array([str(v) for v in values])
            else:
                batch[key] = np.stack(values, axis=0)
        batch["batch_size"] = len(batch_list)
        return batch
