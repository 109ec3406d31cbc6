"""Presentation of an :func:`evaluate_detections` result: a text table, flat scalars, strict JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List


def _ap(value: float) -> str:
    return "    n/a" if math.isnan(value) else f"{value:7.2f}"


def format_results(result: dict) -> str:
    """A readable table: one row per class (IoU threshold, #gt, #det, 3-D and BEV AP), the
    mean, then mAP per distance bin. ``n/a`` marks a class without ground truth."""
    names = list(result["AP_3D"])
    width = max([len("class")] + [len(n) for n in names] + [len("mean")])
    lines: List[str] = [f"{'class':<{width}}  IoU thr    #gt   #det    AP_3D   AP_BEV"]
    for name in names:
        lines.append(f"{name:<{width}}  {result['iou_thresholds'][name]:7.2f} {result['num_gt'][name]:6d} "
                     f"{result['num_det'][name]:6d}  {_ap(result['AP_3D'][name])}  {_ap(result['AP_BEV'][name])}")
    lines.append(f"{'mean':<{width}}  {'':7} {'':6} {'':6}  {_ap(result['mAP_3D'])}  {_ap(result['mAP_BEV'])}")
    lines.append("")
    lines.append(f"{'range (m)':<{width}}  {'':7} {'#gt':>6} {'':6}  mAP_3D  mAP_BEV")
    for label, part in result["range"].items():
        lines.append(f"{label:<{width}}  {'':7} {sum(part['num_gt'].values()):6d} {'':6}  "
                     f"{_ap(part['mAP_3D'])}  {_ap(part['mAP_BEV'])}")
    lines.append("AP: R40 (percent); n/a: no ground truth of that class, left out of the mean.")
    return "\n".join(lines)


def flatten_results(result: dict) -> Dict[str, float]:
    """Scalars for tensorboard: ``AP_3D/<class>``, ``AP_BEV/<class>``, ``mAP_3D``, ``mAP_BEV``,
    ``range_<lo>-<hi>/mAP_3D``, ``range_<lo>-<hi>/AP_3D/<class>``, ... (NaN values left out)."""
    flat: Dict[str, float] = {}

    def add(prefix: str, part: dict) -> None:
        for metric in ("AP_3D", "AP_BEV"):
            for name, value in part[metric].items():
                flat[f"{prefix}{metric}/{name}"] = value
            flat[f"{prefix}m{metric}"] = part[f"m{metric}"]

    add("", result)
    for label, part in result["range"].items():
        add(f"range_{label}/", part)
    return {key: float(value) for key, value in flat.items() if not math.isnan(value)}


def to_json_compatible(value: Any) -> Any:
    """``value`` with NaN floats replaced by None (so ``json.dumps(allow_nan=False)`` writes null)."""
    if isinstance(value, dict):
        return {key: to_json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_results_json(result: dict, path: "str | Path") -> Path:
    """Write ``result`` as strict JSON (NaN as null) to ``path``, creating its folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json_compatible(result), indent=2, allow_nan=False), encoding="utf-8")
    return path
