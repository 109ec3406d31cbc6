"""Point-cloud file readers (``.npy``, KITTI-style ``.bin``, PCL ``.pcd``) with strict checks.

Every problem with a file raises :class:`BadSampleError` naming the file and what is wrong, so the
dataset can either stop or skip it (``ON_BAD_SAMPLE``) instead of training on a broken batch.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .pcd import PcdFormatError, read_pcd

SUPPORTED_SUFFIXES = (".npy", ".bin", ".pcd")
DEFAULT_BIN_COLUMNS = 4
COLUMNS_KEY = "DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list"
# Column counts tried when a .bin looks misread. The check reads LAYOUT_PROBE_BLOCKS blocks of
# 840 = lcm(3..8) floats spread over the file, so every candidate width sees whole rows.
CANDIDATE_COLUMNS = range(3, 9)
LAYOUT_BLOCK_FLOATS = 840
LAYOUT_PROBE_BLOCKS = 40
MIN_LAYOUT_ROWS = 100


class BadSampleError(ValueError):
    """A point-cloud sample that cannot be used; the message names the file and the problem.

    A DataLoader worker's error reaches the main process re-created from its formatted traceback
    (``Caught BadSampleError in DataLoader worker process 1`` + ~30 lines); the constructor keeps
    only the sample's own message from it, and the worker number."""

    def __init__(self, message: object = "") -> None:
        super().__init__(_unwrap_worker_message(str(message)))


_WORKER_PREFIX = re.compile(r"^Caught BadSampleError (in DataLoader worker process \d+)")


def _unwrap_worker_message(message: str) -> str:
    """``'Caught BadSampleError in DataLoader worker process N. Original Traceback ... BadSampleError: msg'``
    -> ``'msg (in DataLoader worker process N)'``; other messages unchanged."""
    match = _WORKER_PREFIX.match(message)
    if not match:
        return message
    marker = "BadSampleError: "
    last = message.rstrip().rfind(marker)
    own = message[last + len(marker):].strip() if last >= 0 else message
    return f"{own} ({match.group(1)})"


def _unreadable(path: Path, err: OSError) -> BadSampleError:
    """The error for a file the OS will not give us (permissions, I/O error): not a format problem."""
    reason = err.strerror or type(err).__name__
    fix = ("make it readable by this user (e.g. chmod a+r, or fix the owner)" if isinstance(err, PermissionError)
           else "check the disk or the network mount it is on")
    return BadSampleError(f"{path}: cannot read the file ({reason}); {fix}")


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (PermissionError, IsADirectoryError) as err:
        raise _unreadable(path, err) from err
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
    try:
        flat = np.fromfile(path, dtype=np.float32)
    except OSError as err:
        raise _unreadable(path, err) from err
    check_bin_layout(flat, num_columns, path)
    return flat.reshape(-1, num_columns)


def column_separation(flat: np.ndarray, num_columns: int) -> float:
    """How distinct the columns are when ``flat`` is read as ``num_columns`` columns.

    Each field of a LiDAR point (x, y, z, intensity, ring, ...) has its own spread; read with the
    right width, every column holds one field, and the spreads (median absolute deviations) differ
    by orders of magnitude (z ~1 m, x/y ~20 m, intensity ~0.1). Read with a wrong width, each column
    cycles through all fields in the same proportions, whatever the point order, so all columns
    have the same spread. Returns the standard deviation of log(MAD) over the columns: ~0 for a
    misread, > 1 for real clouds."""
    rows = len(flat) // num_columns
    table = flat[:rows * num_columns].reshape(rows, num_columns).astype(np.float64)
    table = table[np.isfinite(table).all(axis=1)]
    if len(table) < MIN_LAYOUT_ROWS:
        return 0.0
    mad = np.median(np.abs(table - np.median(table, axis=0)), axis=0)
    return float(np.std(np.log(mad + 1e-6)))


def _layout_probe(flat: np.ndarray) -> np.ndarray:
    """Evenly spaced whole blocks of ``flat`` (all of it when small): ~40k floats whatever the file size."""
    blocks = len(flat) // LAYOUT_BLOCK_FLOATS
    if blocks <= LAYOUT_PROBE_BLOCKS:
        return flat
    pick = np.linspace(0, blocks - 1, LAYOUT_PROBE_BLOCKS).astype(np.int64)
    return flat[:blocks * LAYOUT_BLOCK_FLOATS].reshape(blocks, LAYOUT_BLOCK_FLOATS)[pick].ravel()


def likely_bin_columns(flat: np.ndarray, num_columns: int) -> int | None:
    """The column count a ``.bin`` was most likely written with, if clearly not ``num_columns``."""
    if len(flat) // num_columns < MIN_LAYOUT_ROWS:
        return None
    probe = _layout_probe(flat)
    own = column_separation(probe, num_columns)
    if own >= 2.0:
        return None  # clearly separated columns (real clouds score 2-3.5): the usual, cheap case
    scores = {c: column_separation(probe, c) for c in CANDIDATE_COLUMNS
              if len(flat) % c == 0 and c % num_columns != 0}
    if not scores:
        return None
    best = max(scores.values())
    if best < 1.0 or own >= 0.5 * best:
        return None
    # a multiple of the true width separates as well as the width itself: take the smallest
    return min(c for c, score in scores.items() if score >= 0.8 * best)


def check_bin_layout(flat: np.ndarray, num_columns: int, path: Path) -> None:
    """Raise BadSampleError when a ``.bin`` cloud reshaped to ``num_columns`` is evidently misread
    (an N x 5 file whose size happens to be a multiple of 4 x 4 bytes, a KITTI N x 4 file read as 3)."""
    likely = likely_bin_columns(flat, num_columns)
    if likely is None:
        return
    rows = flat[:(len(flat) // num_columns) * num_columns].reshape(-1, num_columns)[:, :3]
    lo, hi = np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
    spans = ", ".join(f"{axis} {a:.3g}..{b:.3g}" for axis, a, b in zip("xyz", lo, hi))
    raise BadSampleError(
        f"{path}: read as {num_columns} float32 columns the points look scrambled (every column has the "
        f"same mixture of values; {spans}); the file most likely has {likely} columns per point. Set "
        f"{COLUMNS_KEY} to the file's {likely} fields (e.g. ['x', 'y', 'z', ...] with {likely} names)")


def _read_pcd(path: Path) -> np.ndarray:
    """x, y, z first (in that order), then the other fields in file order."""
    try:
        points, columns = read_pcd(path)
    except OSError as err:
        raise _unreadable(path, err) from err
    except (PcdFormatError, ValueError) as err:
        raise BadSampleError(f"{path}: bad .pcd file: {err}") from err
    names = [str(c).lower() for c in columns]
    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        raise BadSampleError(f"{path}: .pcd file has no {'/'.join(missing)} field (FIELDS {' '.join(columns)}); "
                             "point clouds need x, y, z in metres: re-export with FIELDS x y z ...")
    xyz = [names.index(axis) for axis in "xyz"]
    order = xyz + [i for i in range(len(names)) if i not in xyz]
    return points if order == list(range(len(names))) else np.ascontiguousarray(points[:, order])


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
