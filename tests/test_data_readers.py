"""Readers: round trips for .npy/.bin/.pcd (ascii, binary, binary_compressed) and bad-file errors."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pcdet_rmae_ts.data.pcd import lzf_decompress
from pcdet_rmae_ts.data.readers import BadSampleError, read_points


def _cloud(seed: int, n: int = 50, c: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-30, 30, size=(n, c)).astype(np.float32)


def _pcd_header(n: int, data: str, fields=("x", "y", "z", "intensity")) -> bytes:
    k = len(fields)
    return ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
            f"FIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * k)}\nTYPE {' '.join(['F'] * k)}\n"
            f"COUNT {' '.join(['1'] * k)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
            f"POINTS {n}\nDATA {data}\n").encode("ascii")


def _lzf_literals(raw: bytes) -> bytes:
    """Valid LZF stream made of literal runs only (max 32 bytes each)."""
    out = bytearray()
    for i in range(0, len(raw), 32):
        chunk = raw[i:i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_npy_and_bin_round_trip(tmp_path, seed):
    pts = _cloud(seed)
    np.save(tmp_path / "a.npy", pts)
    pts.tofile(tmp_path / "a.bin")
    np.testing.assert_array_equal(read_points(tmp_path / "a.npy"), pts)
    np.testing.assert_array_equal(read_points(tmp_path / "a.bin"), pts)
    np.testing.assert_array_equal(read_points(tmp_path / "a.bin", num_columns=4), pts)
    pts[:, :3].copy().tofile(tmp_path / "b.bin")
    np.testing.assert_array_equal(read_points(tmp_path / "b.bin", num_columns=3), pts[:, :3])


def test_npy_float64_is_cast(tmp_path):
    pts = _cloud(3).astype(np.float64)
    np.save(tmp_path / "a.npy", pts)
    out = read_points(tmp_path / "a.npy", num_columns=4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, pts, rtol=1e-6)


def test_pcd_ascii_round_trip(tmp_path):
    pts = np.round(_cloud(4), 3)
    body = "".join(" ".join(f"{v:.3f}" for v in row) + "\n" for row in pts)
    (tmp_path / "a.pcd").write_bytes(_pcd_header(len(pts), "ascii") + body.encode())
    np.testing.assert_allclose(read_points(tmp_path / "a.pcd", num_columns=4), pts, atol=1e-6)


def test_pcd_binary_round_trip_with_mixed_types(tmp_path):
    pts = _cloud(5, c=3)
    ring = np.arange(len(pts), dtype=np.uint16)
    header = ("VERSION 0.7\nFIELDS x y z ring\nSIZE 4 4 4 2\nTYPE F F F U\nCOUNT 1 1 1 1\n"
              f"WIDTH {len(pts)}\nHEIGHT 1\nPOINTS {len(pts)}\nDATA binary\n").encode()
    rec = np.zeros(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("ring", "<u2")])
    rec["x"], rec["y"], rec["z"], rec["ring"] = pts[:, 0], pts[:, 1], pts[:, 2], ring
    (tmp_path / "a.pcd").write_bytes(header + rec.tobytes())
    out = read_points(tmp_path / "a.pcd")
    np.testing.assert_array_equal(out[:, :3], pts)
    np.testing.assert_array_equal(out[:, 3], ring.astype(np.float32))


def test_pcd_binary_compressed_round_trip(tmp_path):
    pts = _cloud(6)
    columns = b"".join(np.ascontiguousarray(pts[:, k]).tobytes() for k in range(4))  # field-major
    payload = _lzf_literals(columns)
    body = struct.pack("<II", len(payload), len(columns)) + payload
    (tmp_path / "a.pcd").write_bytes(_pcd_header(len(pts), "binary_compressed") + body)
    np.testing.assert_array_equal(read_points(tmp_path / "a.pcd", num_columns=4), pts)


def test_lzf_back_references():
    assert lzf_decompress(bytes([2]) + b"abc" + bytes([32, 2]), 6) == b"abcabc"
    assert lzf_decompress(bytes([0]) + b"a" + bytes([96, 0]), 6) == b"aaaaaa"  # overlapping copy


def _bad_files(tmp_path):
    pts = _cloud(7)
    cases = {}
    cases["missing"] = tmp_path / "missing.npy"
    pts.tofile(tmp_path / "trunc.bin")
    with open(tmp_path / "trunc.bin", "r+b") as f:
        f.truncate(pts.nbytes - 6)
    cases["truncated bin"] = tmp_path / "trunc.bin"
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage that is not an array")
    cases["corrupt npy"] = tmp_path / "corrupt.npy"
    np.save(tmp_path / "cols.npy", pts[:, :3])
    cases["wrong columns"] = tmp_path / "cols.npy"
    nan = pts.copy()
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases["nan"] = tmp_path / "nan.npy"
    inf = pts.copy()
    inf[0, 2] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    cases["inf"] = tmp_path / "inf.npy"
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    cases["empty"] = tmp_path / "empty.npy"
    (tmp_path / "short.pcd").write_bytes(_pcd_header(10, "binary") + b"\x00" * 20)
    cases["truncated pcd"] = tmp_path / "short.pcd"
    return cases


@pytest.mark.parametrize("case", ["missing", "truncated bin", "corrupt npy", "wrong columns", "nan", "inf",
                                  "empty", "truncated pcd"])
def test_bad_files_raise_bad_sample_error_naming_the_file(tmp_path, case):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(BadSampleError) as info:
        read_points(path, num_columns=4)
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)


def _scan(seed: int, columns: int, rings: int = 32, steps: int = 900) -> np.ndarray:
    """A spinning-LiDAR frame in scan order: x, y, z (metres, ground at -1.73 m), then intensity
    (0..255 for nuScenes-style 5-column files, 0..1 otherwise), ring index, timestamp offset."""
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(-25.0, 3.0, rings))[:, None]
    azimuth = np.linspace(-np.pi, np.pi, steps, endpoint=False)[None, :]
    ground = 1.73 / np.maximum(np.sin(-elevation), 1e-3)
    rng_ = np.where(elevation < -0.02, ground, rng.uniform(4.0, 70.0, (rings, steps)))
    rng_ = np.minimum(rng_, 100.0) + rng.normal(0.0, 0.02, (rings, steps))
    keep = rng.random((rings, steps)) > 0.15
    x = (rng_ * np.cos(elevation) * np.cos(azimuth))[keep]
    y = (rng_ * np.cos(elevation) * np.sin(azimuth))[keep]
    z = (rng_ * np.sin(elevation) * np.ones_like(azimuth))[keep]
    intensity = rng.beta(2.0, 5.0, x.shape) * (255.0 if columns >= 5 else 1.0)
    ring = np.broadcast_to(np.arange(rings)[:, None], keep.shape)[keep].astype(np.float64)
    time = np.broadcast_to(azimuth / (2 * np.pi) * 0.1, keep.shape)[keep]
    return np.stack([x, y, z, intensity, ring, time][:columns], axis=1).astype(np.float32)


def _synthetic(seed: int) -> np.ndarray:
    from pcdet_rmae_ts.data.synthetic import generate_frame
    return generate_frame(np.random.default_rng(seed), "demo")[0]


def _trim(points: np.ndarray, multiple: int) -> np.ndarray:
    return np.ascontiguousarray(points[:len(points) // multiple * multiple])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bin_with_five_columns_read_as_four_is_refused(tmp_path, seed):
    pts = _trim(_scan(seed, 5), 4)  # 20 N bytes is a multiple of 16: the plain size check passes
    pts.tofile(tmp_path / "a.bin")
    with pytest.raises(BadSampleError, match=r"most likely has 5 columns.*src_feature_list"):
        read_points(tmp_path / "a.bin", num_columns=4)
    np.testing.assert_array_equal(read_points(tmp_path / "a.bin", num_columns=5), pts)


@pytest.mark.parametrize("source", ["scan", "synthetic"])
@pytest.mark.parametrize("seed", [0, 3])
def test_kitti_bin_read_with_three_columns_is_refused(tmp_path, source, seed):
    pts = _trim(_scan(seed, 4) if source == "scan" else _synthetic(seed), 3)
    pts.tofile(tmp_path / "a.bin")
    with pytest.raises(BadSampleError, match=r"most likely has 4 columns.*POINT_FEATURE_ENCODING\.src_feature_list"):
        read_points(tmp_path / "a.bin", num_columns=3)
    if pts.size % 5 == 0:
        with pytest.raises(BadSampleError, match="most likely has 4 columns"):
            read_points(tmp_path / "a.bin", num_columns=5)


@pytest.mark.parametrize("columns", [3, 4, 5, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_correct_bin_reads_are_not_flagged(tmp_path, columns, seed):
    pts = _trim(_scan(seed, columns), 840)  # divisible by every candidate width
    pts.tofile(tmp_path / "a.bin")
    np.testing.assert_array_equal(read_points(tmp_path / "a.bin", num_columns=columns), pts)
    synthetic = _trim(_synthetic(seed), 840)
    synthetic.tofile(tmp_path / "s.bin")
    np.testing.assert_array_equal(read_points(tmp_path / "s.bin"), synthetic)
    synthetic[:, :3].copy().tofile(tmp_path / "s3.bin")
    np.testing.assert_array_equal(read_points(tmp_path / "s3.bin", num_columns=3), synthetic[:, :3])


def test_worker_wrapped_message_is_reduced_to_the_sample_message():
    wrapped = ("Caught BadSampleError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise BadSampleError(msg)\n'
               "pcdet_rmae_ts.data.readers.BadSampleError: /d/a.bin: empty point cloud (0 points)\n")
    assert str(BadSampleError(wrapped)) == "/d/a.bin: empty point cloud (0 points) (in DataLoader worker process 1)"
    assert str(BadSampleError("/d/a.bin: plain")) == "/d/a.bin: plain"


def test_pcd_without_xyz_fields_is_refused(tmp_path):
    pts = _cloud(5)
    header = _pcd_header(len(pts), "binary", fields=("a", "b", "c", "intensity"))
    (tmp_path / "a.pcd").write_bytes(header + pts.tobytes())
    with pytest.raises(BadSampleError, match=r"a\.pcd: \.pcd file has no x/y/z field \(FIELDS a b c intensity\)"):
        read_points(tmp_path / "a.pcd")


def test_pcd_fields_are_reordered_to_xyz_first(tmp_path):
    pts = _cloud(6)
    header = _pcd_header(len(pts), "binary", fields=("intensity", "z", "x", "y"))
    (tmp_path / "a.pcd").write_bytes(header + pts.tobytes())
    np.testing.assert_array_equal(read_points(tmp_path / "a.pcd", num_columns=4), pts[:, [2, 3, 1, 0]])


@pytest.mark.parametrize("suffix, target", [(".npy", "numpy.load"), (".bin", "numpy.fromfile"),
                                            (".pcd", "pathlib.Path.read_bytes")])
def test_unreadable_file_names_permissions_not_re_export(tmp_path, monkeypatch, suffix, target):
    """Root reads any file whatever its mode, so the permission error is simulated."""
    pts = _cloud(7)
    path = tmp_path / f"a{suffix}"
    if suffix == ".npy":
        np.save(path, pts)
    elif suffix == ".bin":
        pts.tofile(path)
    else:
        path.write_bytes(_pcd_header(len(pts), "binary") + pts.tobytes())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    module, name = target.rsplit(".", 1)
    owner = {"numpy": np, "pathlib.Path": __import__("pathlib").Path}[module]
    monkeypatch.setattr(owner, name, denied)
    with pytest.raises(BadSampleError) as info:
        read_points(path, num_columns=4)
    message = str(info.value)
    assert "cannot read the file (Permission denied)" in message and "chmod" in message
    assert "re-export" not in message and "numpy.save" not in message
