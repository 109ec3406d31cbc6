"""Point-cloud file readers (``.npy``, KITTI-style ``.bin``, PCL ``.pcd``) with strict checks.

Every problem with a file raises :class:`BadSampleError` naming the file and what is wrong, so the
dataset can either stop or skip it (``ON_BAD_SAMPLE``) instead of training on a broken batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .pcd import PcdFormatError, read_pcd

SUPPORTED_SUFFIXES = (".npy", ".bin", ".pcd")
DEFAULT_BIN_COLUMNS = 4


class BadSampleError(ValueError):
    """A point-cloud sample that cannot be used; the message names the file and the problem."""


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError/OSError/EOFError/UnpicklingError for bad files
        raise BadSampleError(f"{path}: unreadable .npy file ({type(err).__name__}: {err}); "
                             "re-export it with numpy.save(path, points.astype('float32'))") from err
    if array.ndim != 2:
        raise BadSampleError(f"{path}: .npy array has shape {array.shape}, expected (N, C)")
    if not np.issubdtype(array.dtype, np.number):
        raise BadSampleError(f"{path}: .npy array has non-numeric dtype {array.dtype}")
    return array


def _read_bin(path: Path, num_columns: int) -> np.ndarray:
    nbytes = path.stat().st_size
    row_bytes = 4 * num_columns
    if nbytes % row_bytes != 0:
        raise BadSampleError(
            f"{path}: .bin size {nbytes} bytes is not a multiple of 4 x {num_columns} columns "
            f"(truncated file, or the cloud has a different column count than the {num_columns} expected)")
    return np.fromfile(path, dtype=np.float32).reshape(-1, num_columns)


def _read_pcd(path: Path) -> np.ndarray:
    try:
        points, _ = read_pcd(path)
    except (PcdFormatError, ValueError) as err:
        raise BadSampleError(f"{path}: bad .pcd file: {err}") from err
    return points


def validate_points(points: np.ndarray, path: str | Path, num_columns: int | None) -> np.ndarray:
    """Check a loaded cloud (columns, emptiness, finiteness) and return it as float32 (N, C)."""
    if num_columns is not None and points.shape[1] != num_columns:
        raise BadSampleError(
            f"{path}: cloud has {points.shape[1]} columns but the config expects {num_columns} "
            "(DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list); fix the list or the file")
    if points.shape[0] == 0:
        raise BadSampleError(f"{path}: empty point cloud (0 points)")
    points = points.astype(np.float32, copy=False)
    finite = np.isfinite(points)
    if not finite.all():
        bad_rows = int((~finite.all(axis=1)).sum())
        bad_cols = sorted(set(np.nonzero(~finite)[1].tolist()))
        raise BadSampleError(f"{path}: {bad_rows} points have NaN/Inf values (columns {bad_cols}); "
                             "drop non-finite rows before writing the file")
    return points


def read_points(path: str | Path, num_columns: int | None = None) -> np.ndarray:
    """Read a point cloud as float32 (N, C); x, y, z in metres are the first three columns.

    ``num_columns``: expected C (``len(src_feature_list)``); ``None`` accepts any width for
    ``.npy``/``.pcd`` and means 4 for ``.bin``. Raises BadSampleError for a missing, truncated or
    corrupt file, a wrong column count, an empty cloud or NaN/Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(f"{path}: point file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        points = _read_npy(path)
    elif suffix == ".bin":
        points = _read_bin(path, num_columns or DEFAULT_BIN_COLUMNS)
    elif suffix == ".pcd":
        points = _read_pcd(path)
    else:
        raise BadSampleError(f"{path}: unsupported point-file suffix {suffix!r} "
                             f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if points.shape[1] < 3:
        raise BadSampleError(f"{path}: cloud has {points.shape[1]} columns; x, y, z are required")
    return validate_points(points, path, num_columns)
