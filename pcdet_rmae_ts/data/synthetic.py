"""Deterministic synthetic construction-site LiDAR in OpenPCDet CustomDataset layout (built-in demo data).

A spinning multi-beam LiDAR at the origin (ground 1.8 m below) is ray-cast against a sloped ground
plane, solid oriented boxes of the four classes (dumptruck, excavator, grader, roller) and clutter
(stockpiles as half-buried ellipsoids, shipping containers); nearest hit wins, so objects cast
occlusion shadows. Range noise, intensity (reflectivity x incidence) and random dropout follow.

Profiles: 'demo' (32 beams, 0.4 deg azimuth, 40 m; ~20k points and ~15k voxels per frame, about
0.07 s per frame) and 'dense' (128 beams, Pandar128-like elevations, 0.1 deg azimuth, 70 m; ~330k
points, ~1.1 s per frame). Voxels per dense frame, measured for rng seeds 0-4 at POINT_CLOUD_RANGE
[-70.4, -70.4, -6, 70.4, 70.4, 10], VOXEL_SIZE [0.1, 0.1, 0.2]: 103k-133k (mean 117k), below
MAX_NUMBER_OF_VOXELS 150000.

CLI: ``python -m pcdet_rmae_ts.data.synthetic --out data/demo --frames 20 [--seed 0] [--profile demo]``.
Points files have columns x, y, z, intensity, so configs use
``src_feature_list: ['x', 'y', 'z', 'intensity']`` (``used_feature_list`` may drop intensity).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .raycast import Ground, Shape, cast, ray_directions

_LOG = logging.getLogger(__name__)
CLASS_NAMES = ("dumptruck", "excavator", "grader", "roller")
# (length, width, height) ranges in metres per class
CLASS_SIZES = {
    "dumptruck": ((8.0, 10.0), (3.5, 4.0), (3.5, 4.5)),
    "excavator": ((9.0, 10.0), (3.0, 3.5), (3.0, 3.5)),
    "grader": ((8.0, 9.0), (2.5, 3.0), (3.0, 3.5)),
    "roller": ((5.0, 6.0), (2.0, 2.5), (2.8, 3.2)),
}
SENSOR_HEIGHT = 1.8
MARKER = ".synthetic_complete.json"


@dataclass(frozen=True)
class LidarProfile:
    """Sensor and scene parameters of one profile (angles in degrees, distances in metres)."""

    elevation_bands: tuple[tuple[float, float, int], ...]  # (low, high, beams) per band, degrees
    azimuth_step_deg: float
    max_range: float
    range_noise_std: float
    dropout: float
    num_objects: tuple[int, int]
    num_clutter: tuple[int, int]
    placement_radius: tuple[float, float]
    terrain_roughness: float

    def elevations(self) -> np.ndarray:
        """Beam elevations (degrees), ascending."""
        return np.concatenate([np.linspace(lo, hi, n) for lo, hi, n in self.elevation_bands])


PROFILES = {
    "demo": LidarProfile(elevation_bands=((-22.0, 8.0, 32),), azimuth_step_deg=0.4, max_range=40.0,
                         range_noise_std=0.02, dropout=0.05, num_objects=(4, 7), num_clutter=(2, 4),
                         placement_radius=(6.0, 32.0), terrain_roughness=0.3),
    # Pandar128-like: 0.125 deg beam spacing around the horizon, sparser above and below.
    "dense": LidarProfile(elevation_bands=((-25.0, -6.125, 40), (-6.0, 1.875, 64), (2.0, 15.0, 24)),
                          azimuth_step_deg=0.1, max_range=70.0,
                          range_noise_std=0.03, dropout=0.03, num_objects=(12, 18), num_clutter=(16, 24),
                          placement_radius=(6.0, 64.0), terrain_roughness=0.5),
}


def get_profile(profile: str | LidarProfile) -> LidarProfile:
    if isinstance(profile, LidarProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[profile]


def _random_ground(rng: np.random.Generator, roughness: float) -> Ground:
    """Tilted plane (up to ~0.6 deg) plus a few gentle waves of 6-40 m wavelength."""
    slope = rng.uniform(-0.01, 0.01, size=2)
    k = 2 * np.pi / rng.uniform(6.0, 40.0, size=4)
    angle = rng.uniform(0, np.pi, size=4)
    waves = np.stack([k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, 4),
                      roughness * rng.uniform(0.3, 1.0, 4) / 2], axis=1)
    return Ground(SENSOR_HEIGHT, (float(slope[0]), float(slope[1])), waves)


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]],
           radius_range: tuple[float, float], tries: int = 200) -> tuple[float, float] | None:
    """Random BEV centre whose circle does not overlap any placed circle (or the sensor)."""
    lo, hi = radius_range
    for _ in range(tries):
        r = np.sqrt(rng.uniform(lo * lo, hi * hi))  # uniform in area
        a = rng.uniform(-np.pi, np.pi)
        x, y = r * np.cos(a), r * np.sin(a)
        if r - radius < 3.0:
            continue
        if all(np.hypot(x - px, y - py) > radius + pr + 0.5 for px, py, pr in placed):
            placed.append((x, y, radius))
            return x, y
    return None


def _scene(rng: np.random.Generator, prof: LidarProfile, ground: Ground) -> tuple[list[Shape], list[str]]:
    """Objects first (one of each class, then random classes), then clutter; no BEV overlaps."""
    count = int(rng.integers(prof.num_objects[0], prof.num_objects[1] + 1))
    classes = list(rng.permutation(CLASS_NAMES)) + list(rng.choice(CLASS_NAMES, max(count - 4, 0)))
    placed: list[tuple[float, float, float]] = []
    shapes: list[Shape] = []
    names: list[str] = []
    for name in classes[:max(count, 4)]:
        dims = np.array([rng.uniform(*r) for r in CLASS_SIZES[name]])
        spot = _place(rng, float(np.hypot(dims[0], dims[1]) / 2), placed, prof.placement_radius)
        if spot is None:
            continue
        z = float(ground.z(spot[0], spot[1])) + dims[2] / 2
        heading = rng.uniform(-np.pi, np.pi)
        shapes.append(Shape("box", np.array([spot[0], spot[1], z, *dims, heading]), rng.uniform(0.5, 0.9)))
        names.append(name)
    for _ in range(int(rng.integers(prof.num_clutter[0], prof.num_clutter[1] + 1))):
        if rng.random() < 0.5:  # stockpile: half-buried flattened ellipsoid
            radii = np.array([rng.uniform(3.0, 8.0), rng.uniform(3.0, 8.0), rng.uniform(1.5, 4.0)])
            spot = _place(rng, float(radii[:2].max()), placed, prof.placement_radius)
            if spot is not None:
                shapes.append(Shape("ellipsoid", np.array([*spot, float(ground.z(*spot)), *radii]),
                                    rng.uniform(0.15, 0.35)))
        else:  # 20 ft shipping container
            dims = np.array([6.06, 2.44, 2.59])
            spot = _place(rng, float(np.hypot(dims[0], dims[1]) / 2), placed, prof.placement_radius)
            if spot is not None:
                z = float(ground.z(*spot)) + dims[2] / 2
                shapes.append(Shape("box", np.array([*spot, z, *dims, rng.uniform(-np.pi, np.pi)]),
                                    rng.uniform(0.4, 0.7)))
    return shapes, names


def generate_frame(rng: np.random.Generator, profile: str | LidarProfile = "demo",
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: points (N, 4) float32 [x, y, z, intensity] (metres, intensity in [0, 1]),
    boxes (M, 7) float32 [x, y, z, dx, dy, dz, heading] (centre, full size, yaw in [-pi, pi)),
    names (M,) str. The first len(names) shapes of the scene are the labelled objects."""
    prof = get_profile(profile)
    ground = _random_ground(rng, prof.terrain_roughness)
    shapes, names = _scene(rng, prof, ground)
    azimuth = np.arange(0.0, 360.0, prof.azimuth_step_deg)
    azimuth = np.deg2rad(azimuth + rng.uniform(0.0, prof.azimuth_step_deg))
    elevation = prof.elevations()
    dirs = ray_directions(elevation, azimuth)
    t, cos, hit_id = cast(dirs, azimuth, shapes, ground)
    reflect = np.array([0.25] + [s.reflectivity for s in shapes])[hit_id + 1]
    keep = np.isfinite(t) & (t <= prof.max_range) & (t >= 1.0) & (rng.random(t.shape) >= prof.dropout)
    t_noisy = t[keep] + rng.normal(0.0, prof.range_noise_std, size=int(keep.sum()))
    xyz = dirs[keep] * t_noisy[:, None]
    intensity = np.clip(reflect[keep] * (0.3 + 0.7 * cos[keep]) + rng.normal(0.0, 0.02, len(xyz)), 0.0, 1.0)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    boxes = np.array([s.params for s in shapes[:len(names)]], dtype=np.float64).reshape(-1, 7)
    boxes[:, 6] = (boxes[:, 6] + np.pi) % (2 * np.pi) - np.pi
    return points, boxes.astype(np.float32), np.array(names, dtype=str)


def format_labels(boxes: np.ndarray, names: Sequence[str]) -> str:
    """OpenPCDet custom label lines: ``x y z dx dy dz heading class_name`` (single spaces)."""
    return "".join(" ".join(f"{v:.4f}" for v in box) + f" {name}\n" for box, name in zip(boxes, names))


def _frame_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def write_dataset(out: str | Path, frames: int, seed: int = 0, profile: str = "demo",
                  val_fraction: float = 0.2) -> Path:
    """Write ``frames`` frames to ``out`` (points/, labels/, ImageSets/train.txt and val.txt).

    The last round(frames * val_fraction) ids (at least 1 when frames >= 2) go to val. Returns ``out``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    get_profile(profile)
    out = Path(out)
    for sub in ("points", "labels", "ImageSets"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if (out / MARKER).exists():  # an interrupted rewrite must not look complete
        (out / MARKER).unlink()
    ids = [f"{i:06d}" for i in range(frames)]
    for i, frame_id in enumerate(tqdm(ids, desc=f"synthetic {profile} frames", unit="frame")):
        points, boxes, names = generate_frame(_frame_rng(seed, i), profile)
        np.save(out / "points" / f"{frame_id}.npy", points)
        (out / "labels" / f"{frame_id}.txt").write_text(format_labels(boxes, names))
    num_val = round(frames * val_fraction)
    num_val = max(num_val, 1) if frames >= 2 and val_fraction > 0 else num_val
    (out / "ImageSets" / "train.txt").write_text("".join(f"{i}\n" for i in ids[:frames - num_val]))
    (out / "ImageSets" / "val.txt").write_text("".join(f"{i}\n" for i in ids[frames - num_val:]))
    meta = {"frames": frames, "seed": seed, "profile": profile, "val_fraction": val_fraction}
    (out / MARKER).write_text(json.dumps(meta, sort_keys=True))
    return out


def ensure_dataset(path: str | Path, frames: int = 20, seed: int = 0, profile: str = "demo",
                   logger: logging.Logger | None = None, val_fraction: float = 0.2) -> Path:
    """Create the synthetic dataset at ``path`` unless a complete one with the same parameters exists."""
    logger = logger or _LOG
    path = Path(path)
    meta = {"frames": frames, "seed": seed, "profile": profile, "val_fraction": val_fraction}
    marker = path / MARKER
    if marker.is_file():
        try:
            same = json.loads(marker.read_text()) == meta
        except ValueError:
            same = False
        ids = [f"{i:06d}" for i in range(frames)]
        if same and all((path / "points" / f"{i}.npy").is_file() for i in ids):
            logger.info("Synthetic dataset at %s is complete (%d %s frames, seed %d)", path, frames, profile, seed)
            return path
    logger.info("Writing synthetic %s dataset: %d frames, seed %d -> %s", profile, frames, seed, path)
    return write_dataset(path, frames, seed, profile, val_fraction)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic construction-site LiDAR dataset "
                                                 "(OpenPCDet CustomDataset layout).")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/demo")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    write_dataset(args.out, args.frames, args.seed, args.profile, args.val_fraction)
    _LOG.info("Wrote %d frames to %s", args.frames, args.out)


if __name__ == "__main__":
    main()
