"""Point-only global augmentations with OpenPCDet's names, keys and semantics (no boxes needed).

``random_world_flip`` / ``_rotation`` / ``_scaling`` / ``_translation`` behave like OpenPCDet's
``DataAugmentor`` methods applied to points only; randomness comes from a ``np.random.Generator``.
``gt_sampling`` needs labels and is refused in pretraining unless listed in DISABLE_AUG_LIST.
"""
from __future__ import annotations

import difflib
import functools
import logging
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import numpy as np

from ..config import check_known_keys

AugResult = Tuple[np.ndarray, Dict[str, Any]]
LABEL_AUGMENTORS = ("gt_sampling",)
_LOG = logging.getLogger(__name__)


def random_world_flip(points: np.ndarray, rng: np.random.Generator,
                      along_axis_list: Sequence[str] = ("x", "y")) -> AugResult:
    """Flip about an axis with p=0.5 each: 'x' negates y (mirror in x-axis), 'y' negates x.

    Returns the points (N, C) and ``{'flip_x': bool, 'flip_y': bool}`` for the listed axes.
    """
    points = points.copy()
    info: dict[str, Any] = {}
    for axis in along_axis_list:
        if axis not in ("x", "y"):
            raise ValueError(f"random_world_flip: ALONG_AXIS_LIST entry {axis!r} is not 'x' or 'y'")
        enable = bool(rng.random() < 0.5)
        if enable:
            column = 1 if axis == "x" else 0
            points[:, column] = -points[:, column]
        info[f"flip_{axis}"] = enable
    return points, info


def rotate_points_z(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate x, y counter-clockwise by ``angle`` radians about +z (columns >= 2 unchanged)."""
    out = points.copy()
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    out[:, 0] = x * cos - y * sin
    out[:, 1] = x * sin + y * cos
    return out


def random_world_rotation(points: np.ndarray, rng: np.random.Generator,
                          world_rot_angle: Any = (-np.pi / 4, np.pi / 4)) -> AugResult:
    """Rotate about +z by an angle ~ U(WORLD_ROT_ANGLE) radians (a scalar a means [-a, a])."""
    if np.isscalar(world_rot_angle):
        world_rot_angle = (-float(world_rot_angle), float(world_rot_angle))
    low, high = float(world_rot_angle[0]), float(world_rot_angle[1])
    angle = float(rng.uniform(low, high))
    return rotate_points_z(points, angle), {"noise_rot": angle}


def random_world_scaling(points: np.ndarray, rng: np.random.Generator,
                         world_scale_range: Sequence[float] = (0.95, 1.05)) -> AugResult:
    """Scale x, y, z by s ~ U(WORLD_SCALE_RANGE)."""
    low, high = float(world_scale_range[0]), float(world_scale_range[1])
    if low > high or low <= 0:
        raise ValueError(f"random_world_scaling: WORLD_SCALE_RANGE {list(world_scale_range)} must be 0 < lo <= hi")
    scale = float(rng.uniform(low, high))
    scaled = points * points.dtype.type(scale)  # one whole-array multiply: much faster than points[:, :3] *= s
    scaled[:, 3:] = points[:, 3:]
    return scaled, {"noise_scale": scale}


def random_world_translation(points: np.ndarray, rng: np.random.Generator,
                             noise_translate_std: Any = (0.0, 0.0, 0.0)) -> AugResult:
    """Translate x, y, z by t ~ N(0, NOISE_TRANSLATE_STD) per axis (metres; scalar = all axes)."""
    std = np.broadcast_to(np.asarray(noise_translate_std, dtype=np.float64), (3,))
    shift = rng.normal(0.0, 1.0, size=3) * std
    points = points.copy()
    points[:, :3] += shift.astype(points.dtype)
    return points, {"noise_translate": shift.astype(np.float32)}


# name -> (function, {config key: keyword})
AUGMENTORS: dict[str, tuple[Callable[..., AugResult], dict[str, str]]] = {
    "random_world_flip": (random_world_flip, {"ALONG_AXIS_LIST": "along_axis_list"}),
    "random_world_rotation": (random_world_rotation, {"WORLD_ROT_ANGLE": "world_rot_angle"}),
    "random_world_scaling": (random_world_scaling, {"WORLD_SCALE_RANGE": "world_scale_range"}),
    "random_world_translation": (random_world_translation, {"NOISE_TRANSLATE_STD": "noise_translate_std"}),
}


def _build_one(entry: Mapping[str, Any], key: str) -> Callable[..., AugResult]:
    name = entry["NAME"]
    func, keys = AUGMENTORS[name]
    check_known_keys(entry, ("NAME",) + tuple(keys), key_path=key)
    kwargs = {keys[cfg_key]: value for cfg_key, value in entry.items() if cfg_key != "NAME"}
    return functools.partial(func, **kwargs)


class PointAugmentor:
    """The DATA_AUGMENTOR queue for unlabeled points; picklable (module-level partials only).

    ``augmentor_cfg``: the DATA_AUGMENTOR section (``DISABLE_AUG_LIST``, ``AUG_CONFIG_LIST``).
    """

    def __init__(self, augmentor_cfg: Mapping[str, Any], logger: logging.Logger | None = None,
                 cfg_path: str = "DATA_CONFIG.DATA_AUGMENTOR") -> None:
        logger = logger or _LOG
        disabled = set(augmentor_cfg.get("DISABLE_AUG_LIST", None) or [])
        entries: list[Mapping[str, Any]] = list(augmentor_cfg.get("AUG_CONFIG_LIST", None) or [])
        self.names: list[str] = []
        self.queue: list[Callable[..., AugResult]] = []
        for i, entry in enumerate(entries):
            key = f"{cfg_path}.AUG_CONFIG_LIST[{i}]"
            name = entry.get("NAME") if isinstance(entry, Mapping) else None
            if not name:
                raise ValueError(f"{key}: entry has no NAME")
            if name in disabled:
                if name in LABEL_AUGMENTORS:
                    logger.info("Augmentor %s (%s) skipped: it is in DISABLE_AUG_LIST and needs labels, "
                                "which pretraining does not use", name, key)
                continue
            if name in LABEL_AUGMENTORS:
                raise ValueError(f"{key}: augmentor {name!r} needs ground-truth boxes, which pretraining "
                                 f"does not load; fix: add '{name}' to {cfg_path}.DISABLE_AUG_LIST")
            if name not in AUGMENTORS:
                close = difflib.get_close_matches(name, list(AUGMENTORS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{key}: unknown or unsupported augmentor {name!r}{hint}; supported for "
                                 f"unlabeled points: {sorted(AUGMENTORS)}; or add it to DISABLE_AUG_LIST")
            self.queue.append(_build_one(entry, key))
            self.names.append(name)

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> AugResult:
        """Apply the queue in order; returns points (N, C) and the merged info (flip_x, noise_rot, ...)."""
        info: dict[str, Any] = {}
        for augment in self.queue:
            points, part = augment(points, rng)
            info.update(part)
        return points, info
