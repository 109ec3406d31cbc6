"""Evaluation of lidar 3-D detections with the user's own classes (no OpenPCDet, no KITTI mapping).

``evaluate_detections`` gives per-class R40 AP in 3-D and BEV, overall and per distance bin;
``format_results`` / ``flatten_results`` present it; ``load_label_dir`` reads custom-format folders.
"""
from __future__ import annotations

from pcdet_rmae_ts.evaluation.average_precision import (
    NUM_RECALL_POSITIONS,
    average_precision,
    match_detections,
    precision_recall,
)
from pcdet_rmae_ts.evaluation.evaluate import bin_label, evaluate_detections
from pcdet_rmae_ts.evaluation.iou import bev_corners, bev_intersection_area, bev_iou, iou_3d
from pcdet_rmae_ts.evaluation.labels import empty_annotation, load_label_dir, read_label_file
from pcdet_rmae_ts.evaluation.report import flatten_results, format_results, to_json_compatible, write_results_json
from pcdet_rmae_ts.evaluation.settings import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_RANGE_BINS,
    EvaluationConfig,
    parse_evaluation_config,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLD",
    "DEFAULT_RANGE_BINS",
    "NUM_RECALL_POSITIONS",
    "EvaluationConfig",
    "average_precision",
    "bev_corners",
    "bev_intersection_area",
    "bev_iou",
    "bin_label",
    "empty_annotation",
    "evaluate_detections",
    "flatten_results",
    "format_results",
    "iou_3d",
    "load_label_dir",
    "match_detections",
    "parse_evaluation_config",
    "precision_recall",
    "read_label_file",
    "to_json_compatible",
    "write_results_json",
]
