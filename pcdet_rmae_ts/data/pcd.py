"""Reader for PCL ``.pcd`` point-cloud files (DATA ascii, binary and binary_compressed).

Only the parts of the format that LiDAR exports use: one ``FIELDS`` row per point, numeric
fields of COUNT >= 1. ``binary_compressed`` is LZF-decompressed in pure Python (slow for large
clouds: convert once with ``pcl_convert_pcd_ascii_binary in.pcd out.pcd 1``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_TYPE_CHARS = {"F": "f", "I": "i", "U": "u"}
_HEADER_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")


class PcdFormatError(ValueError):
    """A ``.pcd`` file that cannot be parsed; the message says what is wrong."""


def _parse_header(raw: bytes) -> tuple[dict[str, list[str]], int]:
    """Return the header fields and the byte offset where the DATA section starts."""
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise PcdFormatError("header ends before the DATA line")
        line = raw[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        key = key.upper()
        if key not in _HEADER_KEYS:
            raise PcdFormatError(f"unexpected header line {line!r}")
        header[key] = rest.split()
        if key == "DATA":
            return header, offset


def _dtype_from_header(header: dict[str, list[str]]) -> tuple[np.dtype, list[str]]:
    fields = header.get("FIELDS")
    sizes = header.get("SIZE")
    types = header.get("TYPE")
    if not fields or not sizes or not types:
        raise PcdFormatError("header lacks FIELDS, SIZE or TYPE")
    counts = header.get("COUNT", ["1"] * len(fields))
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise PcdFormatError("FIELDS, SIZE, TYPE and COUNT have different lengths")
    names, formats, columns = [], [], []
    for field, size, typ, count in zip(fields, sizes, types, counts):
        if typ.upper() not in _TYPE_CHARS:
            raise PcdFormatError(f"field {field!r} has unknown TYPE {typ!r}")
        fmt = np.dtype("<" + _TYPE_CHARS[typ.upper()] + size)
        count_i = int(count)
        names.append(field)
        formats.append((fmt, (count_i,)) if count_i > 1 else fmt)
        columns += [field] if count_i == 1 else [f"{field}_{k}" for k in range(count_i)]
    return np.dtype({"names": names, "formats": formats}), columns


def _structured_to_float32(records: np.ndarray) -> np.ndarray:
    parts = []
    for name in records.dtype.names:
        column = records[name]
        parts.append(column.reshape(len(records), -1).astype(np.float32))
    return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0), np.float32)


def lzf_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress an LZF stream (the liblzf format used by PCL) into ``expected_size`` bytes."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            run = ctrl + 1
            if i + run > n:
                raise PcdFormatError("LZF literal run past the end of the compressed data")
            out += data[i:i + run]
            i += run
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise PcdFormatError("truncated LZF back-reference")
            length += data[i]
            i += 1
        if i >= n:
            raise PcdFormatError("truncated LZF back-reference")
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        if ref < 0:
            raise PcdFormatError("LZF back-reference before the start of the output")
        for _ in range(length + 2):  # byte by byte: references may overlap the output end
            out.append(out[ref])
            ref += 1
    if len(out) != expected_size:
        raise PcdFormatError(f"LZF data decompressed to {len(out)} bytes, header says {expected_size}")
    return bytes(out)


def _read_binary_compressed(body: bytes, dtype: np.dtype, num_points: int) -> np.ndarray:
    if len(body) < 8:
        raise PcdFormatError("binary_compressed section lacks its two size words")
    compressed_size, raw_size = np.frombuffer(body[:8], dtype="<u4")
    payload = body[8:8 + int(compressed_size)]
    if len(payload) != compressed_size:
        raise PcdFormatError(f"binary_compressed payload truncated ({len(payload)} of {compressed_size} bytes)")
    raw = lzf_decompress(payload, int(raw_size))
    if raw_size != dtype.itemsize * num_points:
        raise PcdFormatError(f"decompressed size {raw_size} != {num_points} points x {dtype.itemsize} bytes")
    records = np.empty(num_points, dtype=dtype)
    offset = 0
    for name in dtype.names:  # compressed data is stored field by field (column-major)
        field_dtype = dtype.fields[name][0]
        nbytes = field_dtype.itemsize * num_points
        records[name] = np.frombuffer(raw[offset:offset + nbytes], dtype=field_dtype.base).reshape(
            records[name].shape)
        offset += nbytes
    return records


def read_pcd(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read a ``.pcd`` file into float32 (N, C) and its column names (fields, COUNT expanded).

    Raises PcdFormatError on anything malformed or truncated.
    """
    raw = Path(path).read_bytes()
    header, offset = _parse_header(raw)
    dtype, columns = _dtype_from_header(header)
    if "POINTS" in header:
        num_points = int(header["POINTS"][0])
    else:
        num_points = int(header.get("WIDTH", ["0"])[0]) * int(header.get("HEIGHT", ["1"])[0])
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    body = raw[offset:]
    if mode == "ascii":
        rows = [line.split() for line in body.decode("ascii", errors="replace").splitlines() if line.strip()]
        if len(rows) != num_points:
            raise PcdFormatError(f"DATA ascii has {len(rows)} rows, header says POINTS {num_points}")
        if rows and any(len(r) != len(columns) for r in rows):
            raise PcdFormatError(f"DATA ascii rows do not all have {len(columns)} values")
        try:
            return np.asarray(rows, dtype=np.float64).astype(np.float32).reshape(-1, len(columns)), columns
        except ValueError as err:
            raise PcdFormatError(f"non-numeric value in DATA ascii: {err}") from err
    if mode == "binary":
        need = dtype.itemsize * num_points
        if len(body) < need:
            raise PcdFormatError(f"DATA binary has {len(body)} bytes, {num_points} points need {need}")
        records = np.frombuffer(body[:need], dtype=dtype)
    elif mode == "binary_compressed":
        records = _read_binary_compressed(body, dtype, num_points)
    else:
        raise PcdFormatError(f"unknown DATA mode {mode!r} (expected ascii, binary or binary_compressed)")
    return _structured_to_float32(records), columns
