"""Per-class 3-D and BEV average precision (R40) of lidar detections, overall and per distance bin.

Replaces OpenPCDet's CustomDataset evaluation (which maps classes to KITTI names and needs
fake 2-D boxes): classes keep their own names and IoU thresholds, no camera is involved.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from pcdet_rmae_ts.config import nearest_key
from pcdet_rmae_ts.evaluation.average_precision import average_precision, match_detections
from pcdet_rmae_ts.evaluation.iou import as_boxes, bev_iou, iou_3d
from pcdet_rmae_ts.evaluation.settings import EvaluationConfig, parse_evaluation_config

logger = logging.getLogger(__name__)

METRICS = {"AP_3D": iou_3d, "AP_BEV": bev_iou}


@dataclass
class _FrameClass:
    """One frame's boxes of one class: scores ``(D,)``, centre ranges ``(D,)`` / ``(G,)`` in metres,
    and per metric the ``(D, G)`` IoU matrix."""

    scores: np.ndarray
    det_range: np.ndarray
    gt_range: np.ndarray
    ious: Dict[str, np.ndarray]


def _centre_range(boxes: np.ndarray) -> np.ndarray:
    return np.hypot(boxes[:, 0], boxes[:, 1])


def _frame_boxes(anno: Mapping, box_key: str, *, frame: int, kind: str) -> tuple:
    """``(names (N,) str, boxes (N, 7))`` of one annotation dict, with a clear error when malformed."""
    if "name" not in anno or box_key not in anno:
        raise ValueError(f"{kind} frame {frame}: needs keys 'name' and '{box_key}', has {sorted(anno)}")
    names = np.asarray(anno["name"]).astype(str).reshape(-1)
    boxes = as_boxes(anno[box_key])
    if len(boxes) != len(names):
        raise ValueError(f"{kind} frame {frame}: {len(names)} names but {len(boxes)} boxes in '{box_key}'")
    return names, boxes


def _check_frames(gt_annos: Sequence[Mapping], det_annos: Sequence[Mapping]) -> None:
    if len(gt_annos) != len(det_annos):
        raise ValueError(f"{len(gt_annos)} ground-truth frames but {len(det_annos)} detection frames; "
                         "det_annos must hold one entry per ground-truth frame, in the same order")
    for index, (gt, det) in enumerate(zip(gt_annos, det_annos)):
        if "frame_id" in gt and "frame_id" in det and str(gt["frame_id"]) != str(det["frame_id"]):
            raise ValueError(f"frame {index}: ground truth is frame_id '{gt['frame_id']}' but the detections "
                             f"are frame_id '{det['frame_id']}'; give det_annos in the order of gt_annos")


def _frame_classes(gt: Mapping, det: Mapping, class_names: Sequence[str], frame: int) -> List[_FrameClass]:
    """Split one frame by class and compute its IoU matrices; other classes (and DontCare) are dropped."""
    gt_names, gt_boxes = _frame_boxes(gt, "gt_boxes_lidar", frame=frame, kind="ground-truth")
    det_names, det_boxes = _frame_boxes(det, "boxes_lidar", frame=frame, kind="detection")
    scores = np.asarray(det.get("score", np.zeros(0)), dtype=np.float64).reshape(-1)
    if len(scores) != len(det_boxes):
        raise ValueError(f"detection frame {frame}: {len(det_boxes)} boxes but {len(scores)} scores")
    items = []
    for name in class_names:
        g, d = gt_boxes[gt_names == name], det_boxes[det_names == name]
        items.append(_FrameClass(scores=scores[det_names == name], det_range=_centre_range(d),
                                 gt_range=_centre_range(g), ious={m: fn(d, g) for m, fn in METRICS.items()}))
    return items


def _in_bin(ranges: np.ndarray, bounds: Optional[tuple]) -> np.ndarray:
    if bounds is None:
        return np.ones(len(ranges), dtype=bool)
    return (ranges >= bounds[0]) & (ranges < bounds[1])


def _class_ap(items: Sequence[_FrameClass], metric: str, threshold: float, bounds: Optional[tuple]) -> tuple:
    """``(AP in percent or NaN, #gt)`` of one class over all frames, restricted to a distance bin."""
    scores, hits, num_gt = [], [], 0
    for item in items:
        dets, gts = _in_bin(item.det_range, bounds), _in_bin(item.gt_range, bounds)
        frame_scores = item.scores[dets]
        hits.append(match_detections(item.ious[metric][np.ix_(dets, gts)], frame_scores, threshold))
        scores.append(frame_scores)
        num_gt += int(gts.sum())
    return average_precision(np.concatenate(scores), np.concatenate(hits), num_gt), num_gt


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _summary(per_class: Dict[str, List[_FrameClass]], cfg: EvaluationConfig, bounds: Optional[tuple]) -> dict:
    """``{'AP_3D': {cls: AP}, 'AP_BEV': {...}, 'mAP_3D', 'mAP_BEV', 'num_gt': {cls: n}}`` for one bin."""
    out: dict = {}
    for metric in METRICS:
        results = {name: _class_ap(items, metric, cfg.threshold(name), bounds) for name, items in per_class.items()}
        out[metric] = {name: ap for name, (ap, _) in results.items()}
        out["num_gt"] = {name: n for name, (_, n) in results.items()}
    for metric in METRICS:
        out["m" + metric] = _nanmean(out[metric].values())
    return out


def bin_label(lo: float, hi: float) -> str:
    """``'0-30'``, ``'50-70.4'``: the key of a distance bin in the result."""
    return f"{lo:g}-{hi:g}"


def _warn_unused_thresholds(cfg: EvaluationConfig, class_names: Sequence[str]) -> None:
    for name in cfg.iou_thresholds:
        if name not in class_names:
            near = nearest_key(name, class_names)
            hint = f" (did you mean '{near}'?)" if near else ""
            logger.warning("EVALUATION.IOU_THRESHOLDS has '%s', which is not an evaluated class%s; "
                           "evaluated classes: %s", name, hint, list(class_names))


def evaluate_detections(gt_annos: Sequence[Mapping], det_annos: Sequence[Mapping], class_names: Sequence[str],
                        config: Union[Mapping, EvaluationConfig, None] = None) -> dict:
    """Per-class AP (R40, percent) in 3-D and BEV, overall and per distance bin.

    Args:
        gt_annos: one dict per frame, ``{'name': (N,) str, 'gt_boxes_lidar': (N, 7)}`` (OpenPCDet
            CustomDataset ``info['annos']``). Classes not in ``class_names`` (and ``DontCare``)
            are ignored.
        det_annos: one dict per frame, same order, ``{'name': (D,), 'score': (D,), 'boxes_lidar':
            (D, 7)}`` (OpenPCDet's det_annos; other keys ignored). If both dicts of a frame have
            ``frame_id``, they must agree.
        class_names: classes to evaluate.
        config: the ``EVALUATION`` section (mapping), an :class:`EvaluationConfig`, or None (defaults).
    Returns:
        A JSON-able dict: ``AP_3D`` / ``AP_BEV`` ({class: AP}), ``mAP_3D`` / ``mAP_BEV`` (mean over
        classes with ground truth), ``range`` ({'0-30': {AP_3D, AP_BEV, mAP_3D, mAP_BEV, num_gt}, ...}),
        ``iou_thresholds``, ``num_gt`` and ``num_det`` ({class: int}). A class without ground truth
        (overall, or in a bin) has AP NaN and is left out of that mean.
    """
    cfg = parse_evaluation_config(config)
    class_names = [str(name) for name in class_names]
    _warn_unused_thresholds(cfg, class_names)
    _check_frames(gt_annos, det_annos)
    per_class: Dict[str, List[_FrameClass]] = {name: [] for name in class_names}
    for frame, (gt, det) in enumerate(zip(gt_annos, det_annos)):
        for name, item in zip(class_names, _frame_classes(gt, det, class_names, frame)):
            per_class[name].append(item)
    overall = _summary(per_class, cfg, None)
    result = {key: overall[key] for key in ("AP_3D", "AP_BEV", "mAP_3D", "mAP_BEV")}
    result["range"] = {bin_label(lo, hi): _summary(per_class, cfg, (lo, hi)) for lo, hi in cfg.bins()}
    result["iou_thresholds"] = {name: cfg.threshold(name) for name in class_names}
    result["num_gt"] = overall["num_gt"]
    result["num_det"] = {name: int(sum(len(item.scores) for item in items)) for name, items in per_class.items()}
    return result
