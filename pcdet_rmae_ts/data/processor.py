"""POINT_FEATURE_ENCODING and DATA_PROCESSOR for unlabeled points, with OpenPCDet's semantics.

Voxelisation uses spconv 2.x's real ``spconv.pytorch.utils.PointToVoxel`` on the CPU (imported
lazily, built on first use so the processor pickles into spawned DataLoader workers). Note: its CPU
hash table is a dense int32 grid (1408 x 1408 x 80 = 0.63 GB at the ISARC grid) per process.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Mapping, Sequence

import numpy as np

from .readers import BadSampleError


class PointFeatureEncoder:
    """``absolute_coordinates_encoding``: keep x, y, z then the other used features in order."""

    def __init__(self, config: Mapping[str, Any], cfg_path: str = "DATA_CONFIG.POINT_FEATURE_ENCODING") -> None:
        encoding = config.get("encoding_type", "absolute_coordinates_encoding")
        if encoding != "absolute_coordinates_encoding":
            raise ValueError(f"{cfg_path}.encoding_type: {encoding!r} is not supported "
                             "(only 'absolute_coordinates_encoding' exists in OpenPCDet)")
        self.src_feature_list: list[str] = list(config["src_feature_list"])
        self.used_feature_list: list[str] = list(config["used_feature_list"])
        if self.src_feature_list[:3] != ["x", "y", "z"]:
            raise ValueError(f"{cfg_path}.src_feature_list must start with x, y, z; got {self.src_feature_list}")
        missing = [f for f in self.used_feature_list if f not in self.src_feature_list]
        if missing:
            raise ValueError(f"{cfg_path}.used_feature_list has {missing} that are not in src_feature_list "
                             f"{self.src_feature_list}")
        extra = [f for f in self.used_feature_list if f not in ("x", "y", "z")]
        self._columns = [0, 1, 2] + [self.src_feature_list.index(f) for f in extra]

    @property
    def num_point_features(self) -> int:
        return len(self._columns)

    @property
    def num_src_features(self) -> int:
        return len(self.src_feature_list)

    def __call__(self, points: np.ndarray, source: str = "<points>") -> np.ndarray:
        """(N, len(src_feature_list)) -> (N, num_point_features) float32."""
        if points.ndim != 2 or points.shape[1] != self.num_src_features:
            raise BadSampleError(f"{source}: cloud has shape {points.shape}, expected (N, {self.num_src_features}) "
                                 f"for src_feature_list {self.src_feature_list}")
        return np.ascontiguousarray(points[:, self._columns], dtype=np.float32)


def grid_size_of(point_cloud_range: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """OpenPCDet's grid: round((max - min) / voxel_size) as int64, x, y, z order."""
    extent = np.asarray(point_cloud_range[3:6], np.float64) - np.asarray(point_cloud_range[0:3], np.float64)
    return np.round(extent / np.asarray(voxel_size, dtype=np.float64)).astype(np.int64)


def _mode_value(value: Any, mode: str, key: str) -> Any:
    if isinstance(value, Mapping):
        if mode not in value:
            raise ValueError(f"{key} has no entry for mode {mode!r} (keys: {sorted(value)})")
        return value[mode]
    return value


class DataProcessor:
    """The DATA_PROCESSOR queue: crop, shuffle and voxelise a sample dict's ``points``.

    Supported entries: mask_points_and_boxes_outside_range, shuffle_points,
    transform_points_to_voxels. ``grid_size``/``voxel_size`` are set when voxelisation is configured.
    """

    SUPPORTED = ("mask_points_and_boxes_outside_range", "shuffle_points", "transform_points_to_voxels")

    def __init__(self, processor_configs: Sequence[Mapping[str, Any]], point_cloud_range: np.ndarray,
                 training: bool, num_point_features: int, cfg_path: str = "DATA_CONFIG.DATA_PROCESSOR",
                 defer_voxelization: bool = False) -> None:
        """``defer_voxelization``: leave ``transform_points_to_voxels`` to the training process
        (``VOXELIZE_ON_DEVICE``, see ``data/device_voxelizer.py``); samples then carry points only."""
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        self.defer_voxelization = defer_voxelization
        self.training = training
        self.mode = "train" if training else "test"
        self.num_point_features = num_point_features
        self.grid_size: np.ndarray | None = None
        self.voxel_size: list[float] | None = None
        self.shuffle = False
        self.voxel_params: dict[str, Any] | None = None
        self.names: list[str] = []
        self._voxel_generator = None
        for i, entry in enumerate(processor_configs or []):
            self._configure(entry, f"{cfg_path}[{i}]")

    def _configure(self, entry: Mapping[str, Any], key: str) -> None:
        name = entry.get("NAME")
        if name not in self.SUPPORTED:
            close = difflib.get_close_matches(str(name), self.SUPPORTED, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{key}: unknown or unsupported data processor {name!r}{hint}; "
                             f"supported: {list(self.SUPPORTED)}")
        self.names.append(name)
        if name == "shuffle_points":
            self.shuffle = bool(_mode_value(entry["SHUFFLE_ENABLED"], self.mode, f"{key}.SHUFFLE_ENABLED"))
        elif name == "transform_points_to_voxels":
            self.voxel_size = [float(v) for v in entry["VOXEL_SIZE"]]
            self.grid_size = grid_size_of(self.point_cloud_range, self.voxel_size)
            self.voxel_params = {
                "max_points": int(entry["MAX_POINTS_PER_VOXEL"]),
                "max_voxels": int(_mode_value(entry["MAX_NUMBER_OF_VOXELS"], self.mode,
                                              f"{key}.MAX_NUMBER_OF_VOXELS")),
            }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_voxel_generator"] = None  # spconv objects hold C++ buffers; rebuilt in the worker
        return state

    def _generator(self):
        if self._voxel_generator is None:
            from ..compat import import_spconv

            import_spconv()
            utils = importlib.import_module("spconv.pytorch.utils")
            self._voxel_generator = utils.PointToVoxel(
                vsize_xyz=self.voxel_size, coors_range_xyz=self.point_cloud_range.tolist(),
                num_point_features=self.num_point_features, max_num_voxels=self.voxel_params["max_voxels"],
                max_num_points_per_voxel=self.voxel_params["max_points"])
        return self._voxel_generator

    def mask_points_outside_range(self, points: np.ndarray, source: str) -> np.ndarray:
        """Keep points with x, y inside the range (inclusive), like OpenPCDet's mask_points_by_range."""
        r = self.point_cloud_range
        x, y = points[:, 0], points[:, 1]
        keep = np.flatnonzero((x >= r[0]) & (x <= r[3]) & (y >= r[1]) & (y <= r[4]))
        if len(keep) == 0:
            raise BadSampleError(f"{source}: all {len(points)} points lie outside POINT_CLOUD_RANGE "
                                 f"{r.tolist()} (wrong frame or units?)")
        return points.take(keep, axis=0)  # take: faster than boolean/fancy row indexing (benchmarks/README.md)

    def voxelize(self, points: np.ndarray, source: str) -> dict[str, np.ndarray]:
        """points (N, C) float32 -> voxels (V, P, C) float32, voxel_coords (V, 3) int32 [z, y, x],
        voxel_num_points (V,) int32."""
        import torch

        voxels, coords, counts = self._generator()(torch.from_numpy(np.ascontiguousarray(points, np.float32)))
        if voxels.shape[0] == 0:
            raise BadSampleError(f"{source}: no point falls inside POINT_CLOUD_RANGE "
                                 f"{self.point_cloud_range.tolist()}, so there are no voxels")
        return {"voxels": voxels.numpy(), "voxel_coords": coords.numpy().astype(np.int32, copy=False),
                "voxel_num_points": counts.numpy().astype(np.int32, copy=False)}

    def __call__(self, data_dict: dict[str, Any], rng: np.random.Generator, source: str = "<points>") -> dict[str, Any]:
        """Run the queue on ``data_dict['points']``; adds voxels/voxel_coords/voxel_num_points."""
        for name in self.names:  # configured order, like OpenPCDet's processor queue
            points = data_dict["points"]
            if name == "mask_points_and_boxes_outside_range":
                data_dict["points"] = self.mask_points_outside_range(points, source)
            elif name == "shuffle_points" and self.shuffle:
                data_dict["points"] = points.take(rng.permutation(len(points)), axis=0)
            elif name == "transform_points_to_voxels" and self.defer_voxelization:
                self.check_voxels_exist(points, source)
            elif name == "transform_points_to_voxels":
                data_dict.update(self.voxelize(points, source))
        return data_dict

    def check_voxels_exist(self, points: np.ndarray, source: str) -> None:
        """The BadSampleError ``voxelize`` would raise, for deferred voxelisation: no point inside
        the full 3D range (upper bounds exclusive, as in the voxel grid)."""
        r = self.point_cloud_range

        def any_inside(pts: np.ndarray) -> bool:
            x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
            return bool(((x >= r[0]) & (x < r[3]) & (y >= r[1]) & (y < r[4]) & (z >= r[2]) & (z < r[5])).any())

        # a good frame almost always has a point inside among its first few thousand
        if not (any_inside(points[:4096]) or any_inside(points)):
            raise BadSampleError(f"{source}: no point falls inside POINT_CLOUD_RANGE {r.tolist()}, "
                                 f"so there are no voxels")
