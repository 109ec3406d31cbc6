"""Vectorised ray casting for the synthetic LiDAR: a sloped ground plane, oriented boxes and
axis-aligned ellipsoids, all hit from a sensor at the origin (nearest hit wins, so occlusion holds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Shape:
    """A solid: kind 'box' (params = x, y, z, dx, dy, dz, heading) or 'ellipsoid'
    (params = cx, cy, cz, rx, ry, rz); reflectivity in [0, 1]."""

    kind: str
    params: np.ndarray
    reflectivity: float

    def bev_radius(self) -> float:
        p = self.params
        return float(np.hypot(p[3], p[4]) / 2) if self.kind == "box" else float(max(p[3], p[4]))


def ray_directions(elevation_deg: np.ndarray, azimuth_rad: np.ndarray) -> np.ndarray:
    """Unit directions (B, A, 3) for B beam elevations (degrees) x A azimuths (radians)."""
    el = np.deg2rad(np.asarray(elevation_deg, np.float64))[:, None]
    az = np.asarray(azimuth_rad, np.float64)[None, :]
    return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), axis=-1)


@dataclass(frozen=True)
class Ground:
    """Terrain z = -height + sx*x + sy*y + sum_k amp_k * sin(kx_k*x + ky_k*y + phase_k).

    ``waves`` (K, 4) rows [kx, ky, phase, amp] (rad/m, rad, metres); keep amp*|k| small (gentle)."""

    height: float
    slope_xy: tuple[float, float]
    waves: np.ndarray

    def z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        z = -self.height + self.slope_xy[0] * x + self.slope_xy[1] * y
        for kx, ky, phase, amp in self.waves:
            z = z + amp * np.sin(kx * x + ky * y + phase)
        return z


def intersect_ground(dirs: np.ndarray, ground: Ground, samples: int = 16, bisections: int = 6,
                     chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """First crossing of rays from the origin with the terrain: the hit lies in the bracket where
    the ray is within the waves' total amplitude of the sloped plane; march it in ``samples`` steps,
    then bisect the first sign change. Returns range t (...,) (inf on a miss) and |cos incidence|
    (w.r.t. the plane normal).

    Only downward rays are marched (a third of a dense frame's rays point up), ``chunk`` rays at a
    time: the march is elementwise per ray, so chunks give the same numbers with small temporaries."""
    shape = dirs.shape[:-1]
    d = dirs.reshape(-1, 3)
    sx, sy = ground.slope_xy
    denom = d[:, 2] - sx * d[:, 0] - sy * d[:, 1]  # ray height gain over the plane per metre
    rows = np.nonzero(denom < -1e-6)[0]
    amp = float(np.abs(ground.waves[:, 3]).sum()) if len(ground.waves) else 0.0
    t = np.full(len(d), np.inf)
    for begin in range(0, len(rows), chunk):
        part = rows[begin:begin + chunk]
        t[part] = _march_ground(d[part], denom[part], ground, amp, samples, bisections)
    t = np.where(t > 0, t, np.inf).reshape(shape)
    normal = np.array([-sx, -sy, 1.0]) / np.sqrt(sx * sx + sy * sy + 1.0)
    return t, np.abs(dirs @ normal)


def _march_ground(d: np.ndarray, denom: np.ndarray, ground: Ground, amp: float, samples: int,
                  bisections: int) -> np.ndarray:
    """Terrain range (M,) of M downward unit rays d (M, 3); ``denom`` (M,) < 0 their height gain."""
    t_lo, t_hi = (ground.height - amp) / -denom, (ground.height + amp) / -denom
    if amp <= 0:
        return t_lo

    def above(t: np.ndarray) -> np.ndarray:  # ray height over the terrain at t (M, S)
        x, y, z = (t * d[:, k, None] for k in range(3))
        return z - ground.z(x, y)

    steps = t_lo[:, None] + (t_hi - t_lo)[:, None] * np.linspace(0.0, 1.0, samples)[None, :]
    below = above(steps) <= 0
    rows = np.arange(len(d))
    first = np.maximum(below.argmax(axis=1), 1)  # the last sample is always at/below the surface
    lo, hi = steps[rows, first - 1], steps[rows, first]
    for _ in range(bisections):
        mid = (lo + hi) / 2
        under = above(mid[:, None])[:, 0] <= 0
        lo, hi = np.where(under, lo, mid), np.where(under, mid, hi)
    f_lo, f_hi = above(lo[:, None])[:, 0], above(hi[:, None])[:, 0]
    return lo + (hi - lo) * f_lo / np.where(f_lo - f_hi > 1e-12, f_lo - f_hi, 1.0)  # secant step


def intersect_box(dirs: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays from the origin against an oriented box (x, y, z, dx, dy, dz, heading).

    dirs (M, 3) unit. Returns entry range t (M,) (inf on a miss) and |cos| with the entry face normal.
    """
    cos, sin = np.cos(box[6]), np.sin(box[6])
    rot = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])  # world -> box frame
    origin = rot @ (-box[:3])
    local = dirs @ rot.T
    half = box[3:6] / 2.0
    safe = np.where(np.abs(local) < 1e-12, 1e-12, local)
    t1, t2 = (-half - origin) / safe, (half - origin) / safe
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_in, t_out = near.max(axis=1), far.min(axis=1)
    hit = (t_out >= t_in) & (t_in > 0)
    face = near.argmax(axis=1)
    return np.where(hit, t_in, np.inf), np.abs(local[np.arange(len(local)), face])


def intersect_ellipsoid(dirs: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays from the origin against an axis-aligned ellipsoid (cx, cy, cz, rx, ry, rz); (M, 3) -> t, |cos|."""
    centre, radii = params[:3], params[3:6]
    o = -centre / radii
    d = dirs / radii
    a = (d * d).sum(axis=1)
    b = d @ o
    c = o @ o - 1.0
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > 0), t, np.inf)
    hit_local = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normal = hit_local / radii
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return t, np.abs((dirs * normal).sum(axis=1))


def cast(dirs: np.ndarray, azimuth: np.ndarray, shapes: Sequence[Shape], ground: Ground,
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of every ray. dirs (B, A, 3), azimuth (A,) radians.

    Returns t (B, A) metres (inf = no return), |cos incidence| (B, A), and the hit id (B, A):
    -1 ground, k = shapes[k]. Each shape is only tested against the azimuth columns it can cover.
    """
    t_best, cos_best = intersect_ground(dirs, ground)
    hit_id = np.full(t_best.shape, -1, dtype=np.int64)
    for k, shape in enumerate(shapes):
        cx, cy = shape.params[0], shape.params[1]
        dist = np.hypot(cx, cy)
        radius = shape.bev_radius()
        if dist <= radius:
            columns = np.arange(len(azimuth))
        else:
            half_width = np.arcsin(radius / dist) + 1e-3
            delta = np.angle(np.exp(1j * (azimuth - np.arctan2(cy, cx))))
            columns = np.nonzero(np.abs(delta) <= half_width)[0]
        if columns.size == 0:
            continue
        sub = dirs[:, columns].reshape(-1, 3)
        fn = intersect_box if shape.kind == "box" else intersect_ellipsoid
        t, cos = fn(sub, shape.params)
        t = t.reshape(len(dirs), len(columns))
        cos = cos.reshape(t.shape)
        current = t_best[:, columns]
        closer = t < current
        t_best[:, columns] = np.where(closer, t, current)
        cos_best[:, columns] = np.where(closer, cos, cos_best[:, columns])
        hit_id[:, columns] = np.where(closer, k, hit_id[:, columns])
    return t_best, cos_best, hit_id
