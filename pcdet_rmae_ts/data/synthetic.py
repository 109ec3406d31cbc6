"""Deterministic synthetic construction-site LiDAR in OpenPCDet CustomDataset layout (built-in demo data).

A spinning multi-beam LiDAR at the origin (ground 1.8 m below) is ray-cast against a sloped ground
plane, solid oriented boxes of the four classes (dumptruck, excavator, grader, roller) and clutter
(stockpiles as half-buried ellipsoids, shipping containers); nearest hit wins, so objects cast
occlusion shadows. Range noise, intensity (reflectivity x incidence) and random dropout follow.

Profiles (rng seeds (0, 0)-(0, 7); voxels at the ISARC grid, POINT_CLOUD_RANGE
[-70.4, -70.4, -6, 70.4, 70.4, 10], VOXEL_SIZE [0.1, 0.1, 0.2]; generation times in
benchmarks/README.md):

* 'demo': 32 beams, 0.4 deg azimuth, 40 m; ~21k points, 14.3k-15.8k voxels.
* 'dense': 128 beams (Pandar128-like elevations), 0.1 deg azimuth, 70 m, 12-18 objects; ~340k
  points, 89k-134k voxels (mean 117k, below MAX_NUMBER_OF_VOXELS 150000).
* 'hard': the dense sensor, for label-efficiency experiments: 14-22 objects anywhere from 5 to
  68 m (uniform in area, so most are far and sparse), sizes jittered 10 % beyond the class ranges,
  random heading; about a third of the objects get an occluder on their line of sight (partly
  visible); 30-44 clutter and unlabelled distractors, among them machine-sized boxes whose size
  falls outside every class range, 20/40 ft containers (a third stacked) and site walls. Objects
  with fewer than 5 returns are not labelled (9-15 labels per frame, farthest at 68 m). ~363k
  points, 82k-108k voxels (mean 100k).

``--workers N`` generates frames in N processes; the files are the same as with one.

Every frame has at least one labelled object (OpenPCDet's CustomDataset.get_label cannot read an
empty label file): a scene without one is drawn again from the same frame generator.

CLI: ``python -m pcdet_rmae_ts.data.synthetic --out DIR [--frames 20] [--seed 0]
[--profile demo|dense|hard] [--val-fraction 0.2] [--features x,y,z | --cfg_file CFG] [--workers N]``.
Point files hold the columns of ``--features`` (default x, y, z, intensity) or of the config's
``POINT_FEATURE_ENCODING.src_feature_list``. The generator only writes into a missing or empty
folder or into one that carries its marker file (``.synthetic_complete.json``); it refuses any
other folder, so a mistyped ``--out`` or ``DATA_PATH`` never overwrites a real dataset.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..config import ConfigError, cfg_from_yaml_file
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
KNOWN_FEATURES = ("x", "y", "z", "intensity")  # the columns generate_frame produces, in order
DEFAULT_FEATURES = KNOWN_FEATURES
_SUBFOLDERS = ("points", "labels", "ImageSets")
_FRAME_FILE = re.compile(r"^(\d{6,})\.(npy|txt)$")
_MAX_SCENE_DRAWS = 20
CONTAINER_SIZES = ((6.06, 2.44, 2.59), (12.19, 2.44, 2.59))  # 20 ft and 40 ft ISO containers

class ForeignFolderError(FileExistsError):
    """The output folder holds files this generator did not write (it has no marker file)."""


@dataclass(frozen=True)
class LidarProfile:
    """Sensor and scene parameters of one profile (angles in degrees, distances in metres).

    ``size_jitter`` widens every class size range by that fraction on both ends;
    ``occluded_fraction`` of the objects get an occluder on their line of sight;
    ``num_distractors`` unlabelled machine-like boxes, containers and walls are added;
    objects with fewer than ``min_label_points`` returns are left unlabelled.
    """

    elevation_bands: tuple[tuple[float, float, int], ...]  # (low, high, beams) per band, degrees
    azimuth_step_deg: float
    max_range: float
    range_noise_std: float
    dropout: float
    num_objects: tuple[int, int]
    num_clutter: tuple[int, int]
    placement_radius: tuple[float, float]
    terrain_roughness: float
    size_jitter: float = 0.0
    occluded_fraction: float = 0.0
    num_distractors: tuple[int, int] = (0, 0)
    min_label_points: int = 0

    def elevations(self) -> np.ndarray:
        """Beam elevations (degrees), ascending."""
        return np.concatenate([np.linspace(lo, hi, n) for lo, hi, n in self.elevation_bands])


# Pandar128-like: 0.125 deg beam spacing around the horizon, sparser above and below.
_PANDAR128 = ((-25.0, -6.125, 40), (-6.0, 1.875, 64), (2.0, 15.0, 24))
PROFILES = {
    "demo": LidarProfile(elevation_bands=((-22.0, 8.0, 32),), azimuth_step_deg=0.4, max_range=40.0,
                         range_noise_std=0.02, dropout=0.05, num_objects=(4, 7), num_clutter=(2, 4),
                         placement_radius=(6.0, 32.0), terrain_roughness=0.3),
    "dense": LidarProfile(elevation_bands=_PANDAR128, azimuth_step_deg=0.1, max_range=70.0,
                          range_noise_std=0.03, dropout=0.03, num_objects=(12, 18), num_clutter=(16, 24),
                          placement_radius=(6.0, 64.0), terrain_roughness=0.5),
    "hard": LidarProfile(elevation_bands=_PANDAR128, azimuth_step_deg=0.1, max_range=70.0,
                         range_noise_std=0.03, dropout=0.03, num_objects=(14, 22), num_clutter=(18, 26),
                         placement_radius=(5.0, 68.0), terrain_roughness=0.5, size_jitter=0.1,
                         occluded_fraction=0.35, num_distractors=(12, 18), min_label_points=5),
}


def get_profile(profile: str | LidarProfile) -> LidarProfile:
    if isinstance(profile, LidarProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[profile]


def parse_features(features: str | Sequence[str]) -> tuple[str, ...]:
    """Column names of the written point files: ``"x,y,z"`` or a sequence of names.

    They must start with x, y, z (OpenPCDet's absolute_coordinates_encoding reads those as the first
    three columns) and may add 'intensity'. Raises ValueError naming the known features otherwise.
    """
    names = [f.strip() for f in features.split(",")] if isinstance(features, str) else [str(f) for f in features]
    known = ", ".join(KNOWN_FEATURES)
    unknown = [n for n in names if n not in KNOWN_FEATURES]
    if unknown:
        raise ValueError(f"unknown point feature(s) {unknown} in {names}: the synthetic generator knows {known}")
    if names[:3] != ["x", "y", "z"] or len(set(names)) != len(names):
        raise ValueError(f"point features {names} must start with x, y, z and name each feature once "
                         f"(known: {known}), e.g. x,y,z or x,y,z,intensity")
    return tuple(names)


def features_from_config(cfg_file: str | os.PathLike) -> tuple[str, ...]:
    """``POINT_FEATURE_ENCODING.src_feature_list`` of a model config (under DATA_CONFIG, with
    ``_BASE_CONFIG_`` resolved) or of a dataset config (top level)."""
    cfg = cfg_from_yaml_file(cfg_file)
    section = cfg.DATA_CONFIG if "DATA_CONFIG" in cfg else cfg
    encoding = section.get("POINT_FEATURE_ENCODING") or {}
    if "src_feature_list" not in encoding:
        key = ("DATA_CONFIG." if "DATA_CONFIG" in cfg else "") + "POINT_FEATURE_ENCODING.src_feature_list"
        raise ConfigError("missing: the synthetic generator writes the columns it lists", key=key, file=cfg_file,
                          fix="give a model or dataset config that sets it, or pass --features x,y,z[,intensity]")
    return parse_features(list(encoding["src_feature_list"]))


def _random_ground(rng: np.random.Generator, roughness: float) -> Ground:
    """Tilted plane (up to ~0.6 deg) plus a few gentle waves of 6-40 m wavelength."""
    slope = rng.uniform(-0.01, 0.01, size=2)
    k = 2 * np.pi / rng.uniform(6.0, 40.0, size=4)
    angle = rng.uniform(0, np.pi, size=4)
    waves = np.stack([k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, 4),
                      roughness * rng.uniform(0.3, 1.0, 4) / 2], axis=1)
    return Ground(SENSOR_HEIGHT, (float(slope[0]), float(slope[1])), waves)


def _free(x: float, y: float, radius: float, placed: list[tuple[float, float, float]]) -> bool:
    """The BEV circle keeps 0.5 m from every placed circle."""
    return all(np.hypot(x - px, y - py) > radius + pr + 0.5 for px, py, pr in placed)


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]],
           radius_range: tuple[float, float], tries: int = 200) -> tuple[float, float] | None:
    """Random BEV centre whose circle does not overlap any placed circle (or the sensor)."""
    lo, hi = radius_range
    for _ in range(tries):
        r = np.sqrt(rng.uniform(lo * lo, hi * hi))  # uniform in area
        a = rng.uniform(-np.pi, np.pi)
        x, y = r * np.cos(a), r * np.sin(a)
        if r - radius >= 3.0 and _free(x, y, radius, placed):  # 3 m clear of the sensor
            placed.append((x, y, radius))
            return x, y
    return None


def _box_on_ground(ground: Ground, x: float, y: float, dims: np.ndarray, heading: float,
                   reflectivity: float, lift: float = 0.0) -> Shape:
    z = float(ground.z(x, y)) + lift + dims[2] / 2
    return Shape("box", np.array([x, y, z, *dims, heading]), reflectivity)


def _objects(rng: np.random.Generator, prof: LidarProfile, ground: Ground,
             placed: list[tuple[float, float, float]]) -> tuple[list[Shape], list[str]]:
    """Labelled machines: one of each class, then random classes; sizes jittered by size_jitter."""
    count = int(rng.integers(prof.num_objects[0], prof.num_objects[1] + 1))
    classes = list(rng.permutation(CLASS_NAMES)) + list(rng.choice(CLASS_NAMES, max(count - 4, 0)))
    shapes: list[Shape] = []
    names: list[str] = []
    j = prof.size_jitter
    for name in classes[:max(count, 4)]:
        dims = np.array([rng.uniform(lo * (1 - j), hi * (1 + j)) for lo, hi in CLASS_SIZES[name]])
        spot = _place(rng, float(np.hypot(dims[0], dims[1]) / 2), placed, prof.placement_radius)
        if spot is None:
            continue
        heading = rng.uniform(-np.pi, np.pi)
        shapes.append(_box_on_ground(ground, spot[0], spot[1], dims, heading, rng.uniform(0.5, 0.9)))
        names.append(name)
    return shapes, names


def _occluders(rng: np.random.Generator, prof: LidarProfile, ground: Ground, targets: Sequence[Shape],
               placed: list[tuple[float, float, float]]) -> list[Shape]:
    """For ``occluded_fraction`` of the targets, a short wall or a stockpile part-way along the line
    of sight, shifted sideways by up to the target's half-diagonal, so the target is partly hidden."""
    shapes: list[Shape] = []
    for target in targets:
        if rng.random() >= prof.occluded_fraction:
            continue
        x, y, reach = target.params[0], target.params[1], target.bev_radius()
        bearing, dist = np.arctan2(y, x), np.hypot(x, y) * rng.uniform(0.4, 0.75)
        side = rng.uniform(-1.0, 1.0) * reach
        ox, oy = dist * np.cos(bearing) - side * np.sin(bearing), dist * np.sin(bearing) + side * np.cos(bearing)
        if rng.random() < 0.6:  # wall segment across the line of sight
            dims = np.array([rng.uniform(2.0, 5.0), 0.3, rng.uniform(1.5, 3.0)])
            radius = float(np.hypot(dims[0], dims[1]) / 2)
            shape = _box_on_ground(ground, ox, oy, dims, bearing + np.pi / 2, rng.uniform(0.2, 0.5))
        else:  # small stockpile
            radii = np.array([rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0)])
            radius = float(radii[:2].max())
            shape = Shape("ellipsoid", np.array([ox, oy, float(ground.z(ox, oy)), *radii]), rng.uniform(0.15, 0.35))
        if np.hypot(ox, oy) - radius >= 3.0 and _free(ox, oy, radius, placed):
            placed.append((ox, oy, radius))
            shapes.append(shape)
    return shapes


def _machine_like_dims(rng: np.random.Generator, jitter: float, margin: float = 0.25) -> np.ndarray:
    """A machine-sized box (L 4-12, W 2-4.5, H 1.5-5 m) outside every class's jittered size range by
    more than ``margin`` in at least one dimension, so a detector can still tell it apart."""
    while True:
        dims = np.array([rng.uniform(4.0, 12.0), rng.uniform(2.0, 4.5), rng.uniform(1.5, 5.0)])
        inside = [all(lo * (1 - jitter) - margin <= v <= hi * (1 + jitter) + margin
                      for v, (lo, hi) in zip(dims, CLASS_SIZES[name])) for name in CLASS_NAMES]
        if not any(inside):
            return dims


def _distractors(rng: np.random.Generator, prof: LidarProfile, ground: Ground,
                 placed: list[tuple[float, float, float]]) -> list[Shape]:
    """Unlabelled objects that resemble machines: machine-sized boxes, containers (a third stacked
    two high) and 8-20 m site walls."""
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(prof.num_distractors[0], prof.num_distractors[1] + 1))):
        kind = rng.random()
        if kind < 0.4:
            dims = _machine_like_dims(rng, prof.size_jitter)
        elif kind < 0.75:
            dims = np.array(CONTAINER_SIZES[int(rng.integers(2))])
        else:
            dims = np.array([rng.uniform(8.0, 20.0), 0.3, rng.uniform(2.0, 2.5)])
        spot = _place(rng, float(np.hypot(dims[0], dims[1]) / 2), placed, prof.placement_radius)
        if spot is None:
            continue
        heading, reflect = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.8)
        shapes.append(_box_on_ground(ground, spot[0], spot[1], dims, heading, reflect))
        if 0.4 <= kind < 0.75 and rng.random() < 1 / 3:
            shapes.append(_box_on_ground(ground, spot[0], spot[1], dims, heading, reflect, lift=float(dims[2])))
    return shapes


def _clutter(rng: np.random.Generator, prof: LidarProfile, ground: Ground,
             placed: list[tuple[float, float, float]]) -> list[Shape]:
    """Stockpiles (half-buried flattened ellipsoids) and 20 ft containers."""
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(prof.num_clutter[0], prof.num_clutter[1] + 1))):
        if rng.random() < 0.5:
            radii = np.array([rng.uniform(3.0, 8.0), rng.uniform(3.0, 8.0), rng.uniform(1.5, 4.0)])
            spot = _place(rng, float(radii[:2].max()), placed, prof.placement_radius)
            if spot is not None:
                shapes.append(Shape("ellipsoid", np.array([*spot, float(ground.z(*spot)), *radii]),
                                    rng.uniform(0.15, 0.35)))
        else:
            dims = np.array(CONTAINER_SIZES[0])
            spot = _place(rng, float(np.hypot(dims[0], dims[1]) / 2), placed, prof.placement_radius)
            if spot is not None:
                shapes.append(_box_on_ground(ground, spot[0], spot[1], dims, rng.uniform(-np.pi, np.pi),
                                             rng.uniform(0.4, 0.7)))
    return shapes


def _scene(rng: np.random.Generator, prof: LidarProfile, ground: Ground) -> tuple[list[Shape], list[str]]:
    """Labelled objects first, then occluders, distractors and clutter; no BEV overlaps.
    The first len(names) shapes are the labelled objects."""
    placed: list[tuple[float, float, float]] = []
    shapes, names = _objects(rng, prof, ground, placed)
    if prof.occluded_fraction > 0:
        shapes += _occluders(rng, prof, ground, list(shapes), placed)
    if prof.num_distractors[1] > 0:
        shapes += _distractors(rng, prof, ground, placed)
    return shapes + _clutter(rng, prof, ground, placed), names


def _render(rng: np.random.Generator, prof: LidarProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scan of one random scene; labels of objects with fewer than min_label_points returns dropped."""
    ground = _random_ground(rng, prof.terrain_roughness)
    shapes, names = _scene(rng, prof, ground)
    azimuth = np.arange(0.0, 360.0, prof.azimuth_step_deg)
    azimuth = np.deg2rad(azimuth + rng.uniform(0.0, prof.azimuth_step_deg))
    dirs = ray_directions(prof.elevations(), azimuth)
    t, cos, hit_id = cast(dirs, azimuth, shapes, ground)
    reflect = np.array([0.25] + [s.reflectivity for s in shapes])[hit_id + 1]
    keep = np.isfinite(t) & (t <= prof.max_range) & (t >= 1.0) & (rng.random(t.shape) >= prof.dropout)
    t_noisy = t[keep] + rng.normal(0.0, prof.range_noise_std, size=int(keep.sum()))
    xyz = dirs[keep] * t_noisy[:, None]
    intensity = np.clip(reflect[keep] * (0.3 + 0.7 * cos[keep]) + rng.normal(0.0, 0.02, len(xyz)), 0.0, 1.0)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    returns = np.bincount(hit_id[keep] + 1, minlength=len(shapes) + 1)[1:len(names) + 1]
    labelled = np.nonzero(returns >= prof.min_label_points)[0]
    boxes = np.array([shapes[k].params for k in labelled], dtype=np.float64).reshape(-1, 7)
    boxes[:, 6] = (boxes[:, 6] + np.pi) % (2 * np.pi) - np.pi
    return points, boxes.astype(np.float32), np.array([names[k] for k in labelled], dtype=str)


def generate_frame(rng: np.random.Generator, profile: str | LidarProfile = "demo",
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: points (N, 4) float32 [x, y, z, intensity] (metres, intensity in [0, 1]),
    boxes (M, 7) float32 [x, y, z, dx, dy, dz, heading] (centre, full size, yaw in [-pi, pi)),
    names (M,) str, M >= 1: a scene without a labelled object is drawn again from ``rng``."""
    prof = get_profile(profile)
    for _ in range(_MAX_SCENE_DRAWS):
        points, boxes, names = _render(rng, prof)
        if len(names):
            return points, boxes, names
    raise RuntimeError(f"no labelled object in {_MAX_SCENE_DRAWS} scenes of profile {prof}: "
                       "lower min_label_points or raise num_objects")


def format_labels(boxes: np.ndarray, names: Sequence[str]) -> str:
    """OpenPCDet custom label lines: ``x y z dx dy dz heading class_name`` (single spaces)."""
    return "".join(" ".join(f"{v:.4f}" for v in box) + f" {name}\n" for box, name in zip(boxes, names))


def _frame_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def default_workers(frames: int) -> int:
    """Processes used when ``workers`` is None: min(8, CPU count), at most one per 16 frames (each
    process imports torch through the package, a few seconds, so small sets are faster in one)."""
    return max(1, min(8, os.cpu_count() or 1, -(-frames // 16)))


def _write_frame(job: tuple[str, int, int, str | LidarProfile, tuple[str, ...]]) -> int:
    """Generate and write frame ``index`` (pool task; the frame's rng comes from (seed, index)).
    Returns its number of labelled objects."""
    out, index, seed, profile, features = job
    points, boxes, names = generate_frame(_frame_rng(seed, index), profile)
    if features != KNOWN_FEATURES:
        points = np.ascontiguousarray(points[:, [KNOWN_FEATURES.index(f) for f in features]])
    np.save(Path(out) / "points" / f"{index:06d}.npy", points)
    (Path(out) / "labels" / f"{index:06d}.txt").write_text(format_labels(boxes, names))
    return len(names)


def check_writable(out: str | Path) -> None:
    """Raise ForeignFolderError unless ``out`` is missing, empty, or carries this generator's marker."""
    out = Path(out)
    if not out.exists() or (out / MARKER).is_file():
        return
    if not out.is_dir():
        raise ForeignFolderError(f"synthetic dataset output {out} exists and is not a folder. "
                                 "Pick a new folder (--out or DATA_CONFIG.DATA_PATH).")
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ForeignFolderError(
            f"refusing to write synthetic frames into {out}: it is not empty (it holds {shown}) "
            f"and has no {MARKER}, so this generator did not make it and it may hold your own "
            "dataset. Pick an empty or new folder (--out, or DATA_CONFIG.DATA_PATH), or, to train on the "
            "data in this folder, remove the DATA_CONFIG.SYNTHETIC key from the config.")


def _claim(out: Path, meta: dict, logger: logging.Logger) -> None:
    """Mark ``out`` as ours and incomplete, create the subfolders, drop frames past the new count."""
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, {**meta, "complete": False})  # an interrupted write must not look complete
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (*_SUBFOLDERS, MARKER))
    if foreign:
        logger.warning("%s also holds %s, not written by the synthetic generator: they describe the old "
                       "frames; rebuild them (e.g. OpenPCDet's info files) after this rewrite", out, foreign)
    for sub in _SUBFOLDERS:
        (out / sub).mkdir(exist_ok=True)
    for sub in ("points", "labels"):
        for path in (out / sub).iterdir():
            match = _FRAME_FILE.match(path.name)
            if match and int(match.group(1)) >= meta["frames"]:
                path.unlink()


def _write_marker(out: Path, content: dict) -> None:
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(content, sort_keys=True))
    os.replace(tmp, out / MARKER)


def _dataset_meta(frames: int, seed: int, profile: str, val_fraction: float, features: Sequence[str]) -> dict:
    return {"frames": int(frames), "seed": int(seed), "profile": str(profile), "val_fraction": float(val_fraction),
            "features": list(features)}


def write_dataset(out: str | Path, frames: int, seed: int = 0, profile: str = "demo", val_fraction: float = 0.2,
                  features: str | Sequence[str] = DEFAULT_FEATURES, workers: int | None = None,
                  logger: logging.Logger | None = None) -> Path:
    """Write ``frames`` frames to ``out`` (points/, labels/, ImageSets/train.txt and val.txt, marker).

    Points files hold the ``features`` columns (float32). Frames are generated by ``workers``
    processes (None: :func:`default_workers`); the files do not depend on it. The last
    round(frames * val_fraction) ids (at least 1 when frames >= 2) go to val. Refuses a folder
    this generator did not make (:func:`check_writable`). Returns ``out``.
    """
    logger = logger or _LOG
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    workers = default_workers(frames) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    get_profile(profile)
    features = parse_features(features)
    out = Path(out)
    meta = _dataset_meta(frames, seed, profile, val_fraction, features)
    _claim(out, meta, logger)
    jobs = [(str(out), i, seed, profile, features) for i in range(frames)]
    workers = min(workers, frames)
    progress = dict(total=frames, desc=f"synthetic {profile} frames", unit="frame")
    if workers == 1:
        for job in tqdm(jobs, **progress):
            _write_frame(job)
    else:  # spawn: the caller may hold threads (NCCL, loaders) that fork would copy mid-state
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(_write_frame, jobs), **progress):
                pass
    ids = [f"{i:06d}" for i in range(frames)]
    num_val = round(frames * val_fraction)
    num_val = max(num_val, 1) if frames >= 2 and val_fraction > 0 else num_val
    (out / "ImageSets" / "train.txt").write_text("".join(f"{i}\n" for i in ids[:frames - num_val]))
    (out / "ImageSets" / "val.txt").write_text("".join(f"{i}\n" for i in ids[frames - num_val:]))
    _write_marker(out, {**meta, "complete": True})
    return out


def _is_complete(path: Path, meta: dict) -> bool:
    try:
        found = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if found != {**meta, "complete": True}:
        return False
    ids = [f"{i:06d}" for i in range(meta["frames"])]
    return (all((path / "points" / f"{i}.npy").is_file() and (path / "labels" / f"{i}.txt").is_file() for i in ids)
            and all((path / "ImageSets" / f"{s}.txt").is_file() for s in ("train", "val")))


def ensure_dataset(path: str | Path, frames: int = 20, seed: int = 0, profile: str = "demo",
                   logger: logging.Logger | None = None, val_fraction: float = 0.2,
                   features: str | Sequence[str] = DEFAULT_FEATURES, workers: int | None = None) -> Path:
    """Create the synthetic dataset at ``path`` unless a complete one with the same parameters exists.

    A folder with other parameters (frames, seed, profile, split, features) or an incomplete one is
    rewritten only if this generator made it; any other non-empty folder raises ForeignFolderError.
    """
    logger = logger or _LOG
    path = Path(path)
    meta = _dataset_meta(frames, seed, profile, val_fraction, parse_features(features))
    if _is_complete(path, meta):
        logger.info("Synthetic dataset at %s is complete (%d %s frames, seed %d, features %s)",
                    path, frames, profile, seed, ",".join(meta["features"]))
        return path
    check_writable(path)  # before the log line below, which would suggest a write
    logger.info("Writing synthetic %s dataset: %d frames, seed %d, features %s -> %s",
                profile, frames, seed, ",".join(meta["features"]), path)
    return write_dataset(path, frames, seed, profile, val_fraction, meta["features"], workers, logger)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic construction-site LiDAR dataset "
                                                 "(OpenPCDet CustomDataset layout).")
    parser.add_argument("--out", required=True, help="output folder: missing, empty, or made by this tool")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    columns = parser.add_mutually_exclusive_group()
    columns.add_argument("--features", default=",".join(DEFAULT_FEATURES),
                         help=f"point columns, comma-separated (known: {','.join(KNOWN_FEATURES)}; "
                              "default %(default)s)")
    columns.add_argument("--cfg_file", default=None,
                         help="take the columns from this model or dataset config's "
                              "POINT_FEATURE_ENCODING.src_feature_list")
    parser.add_argument("--workers", type=int, default=None,
                        help="generator processes (default: min(8, CPUs), at most one per 16 frames); "
                             "the files do not depend on it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        features = features_from_config(args.cfg_file) if args.cfg_file else parse_features(args.features)
        write_dataset(args.out, args.frames, args.seed, args.profile, args.val_fraction, features, args.workers)
    except (ValueError, FileExistsError) as error:  # ConfigError is a ValueError
        parser.error(str(error))
    _LOG.info("Wrote %d %s frames (columns %s) to %s", args.frames, args.profile, ",".join(features), args.out)


if __name__ == "__main__":
    main()
