"""The ``EVALUATION`` config section: per-class IoU thresholds and distance bins, validated once.

    EVALUATION:
        IOU_THRESHOLDS: {excavator: 0.5, dumptruck: 0.7}   # others: 0.5
        RANGE_BINS: [0, 30, 50, 70.4]                      # metres, bins [lo, hi)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from pcdet_rmae_ts.config import ConfigError, check_known_keys

DEFAULT_IOU_THRESHOLD = 0.5
DEFAULT_RANGE_BINS = (0.0, 30.0, 50.0, 70.4)
SECTION_KEYS = ("IOU_THRESHOLDS", "RANGE_BINS")


@dataclass(frozen=True)
class EvaluationConfig:
    """Validated evaluation settings.

    Attributes:
        iou_thresholds: class name -> IoU threshold in (0, 1]; classes not listed use
            ``default_iou_threshold``. The same threshold applies to 3-D and BEV IoU.
        range_bins: increasing edges in metres; bin i is ``[range_bins[i], range_bins[i+1])`` of
            the horizontal centre distance ``sqrt(x^2 + y^2)``.
        default_iou_threshold: threshold of classes missing from ``iou_thresholds``.
    """

    iou_thresholds: Dict[str, float] = field(default_factory=dict)
    range_bins: Tuple[float, ...] = DEFAULT_RANGE_BINS
    default_iou_threshold: float = DEFAULT_IOU_THRESHOLD

    def threshold(self, class_name: str) -> float:
        """IoU threshold of ``class_name``."""
        return self.iou_thresholds.get(class_name, self.default_iou_threshold)

    def bins(self) -> Tuple[Tuple[float, float], ...]:
        """``((lo, hi), ...)`` pairs of consecutive bin edges, metres."""
        return tuple(zip(self.range_bins[:-1], self.range_bins[1:]))


def _number(value, *, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", key=key)
    return float(value)


def _parse_thresholds(section) -> Dict[str, float]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"must be a mapping class name -> IoU threshold, got {section!r}",
                          key="EVALUATION.IOU_THRESHOLDS", fix="write it as {excavator: 0.5, dumptruck: 0.7}")
    thresholds = {}
    for name, value in section.items():
        key = f"EVALUATION.IOU_THRESHOLDS.{name}"
        threshold = _number(value, key=key)
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"IoU threshold must be in (0, 1], got {value!r}", key=key)
        thresholds[str(name)] = threshold
    return thresholds


def _parse_bins(value) -> Tuple[float, ...]:
    key = "EVALUATION.RANGE_BINS"
    if value is None:
        return DEFAULT_RANGE_BINS
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ConfigError(f"must be a list of at least two distances in metres, got {value!r}", key=key,
                          fix="write it as [0, 30, 50, 70.4]")
    edges = tuple(_number(edge, key=f"{key}[{i}]") for i, edge in enumerate(value))
    if edges[0] < 0:
        raise ConfigError(f"distances must be >= 0, got {edges[0]!r}", key=f"{key}[0]")
    for i in range(1, len(edges)):
        if edges[i] <= edges[i - 1]:
            raise ConfigError(f"bin edges must increase, got {edges[i]!r} after {edges[i - 1]!r}",
                              key=f"{key}[{i}]", fix="sort the edges, without repeats")
    return edges


def parse_evaluation_config(section: Optional[Mapping] = None) -> EvaluationConfig:
    """Validate an ``EVALUATION`` mapping (None or empty: defaults) into an :class:`EvaluationConfig`.

    Raises ConfigError (a ValueError) naming the bad key or value: unknown keys (with the nearest
    valid key), thresholds outside (0, 1], non-increasing or negative bin edges.
    """
    if section is None:
        return EvaluationConfig()
    if isinstance(section, EvaluationConfig):
        return section
    if not isinstance(section, Mapping):
        raise ConfigError(f"must be a mapping, got {section!r}", key="EVALUATION",
                          fix="write IOU_THRESHOLDS / RANGE_BINS under EVALUATION")
    check_known_keys(section, SECTION_KEYS, key_path="EVALUATION")
    return EvaluationConfig(iou_thresholds=_parse_thresholds(section.get("IOU_THRESHOLDS")),
                            range_bins=_parse_bins(section.get("RANGE_BINS")))
