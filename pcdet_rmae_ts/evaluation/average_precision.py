"""Greedy detection-to-ground-truth matching and KITTI-style R40 average precision.

R40 (Simonelli et al., "Disentangling Monocular 3D Object Detection", ICCV 2019): the mean,
over the recall positions 1/40, 2/40, ..., 1, of the best precision reached at that recall or
above (0 where that recall is never reached).
"""
from __future__ import annotations

import numpy as np

NUM_RECALL_POSITIONS = 40


def match_detections(ious: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Which detections of one frame and class are true positives.

    Detections are taken from the highest score down; each one takes the still unmatched
    ground-truth box with the highest IoU if that IoU is >= ``threshold``, else it is a false
    positive. The loop runs over detections only (IoUs come precomputed).

    Args:
        ious: ``(D, G)`` IoU of detection d with ground truth g.
        scores: ``(D,)`` detection scores.
        threshold: IoU needed for a match, in (0, 1].
    Returns:
        ``(D,)`` bool, in the order of ``scores``.
    """
    ious = np.asarray(ious, dtype=np.float64)
    is_tp = np.zeros(len(scores), dtype=bool)
    if ious.size == 0:
        return is_tp
    free = np.ones(ious.shape[1], dtype=bool)
    for det in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = np.where(free, ious[det], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= threshold:
            is_tp[det] = True
            free[best] = False
    return is_tp


def precision_recall(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> tuple:
    """Cumulative true positives and precision along the score ranking of all frames.

    Args:
        scores: ``(D,)`` scores of all detections of one class; is_tp: ``(D,)`` bool.
        num_gt: number of ground-truth boxes of the class (> 0).
    Returns:
        ``(cum_tp, precision)``: ``(D,)`` int64 and ``(D,)`` float64, ordered by decreasing score
        (ties keep the input order). Recall is ``cum_tp / num_gt``.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(is_tp, dtype=bool)[order]
    cum_tp = np.cumsum(hits, dtype=np.int64)
    precision = cum_tp / np.arange(1, len(hits) + 1)
    return cum_tp, precision


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int,
                      num_recall_positions: int = NUM_RECALL_POSITIONS) -> float:
    """AP in percent (0-100) at ``num_recall_positions`` equally spaced recalls (R40 by default).

    Args:
        scores: ``(D,)`` detection scores of one class over all frames.
        is_tp: ``(D,)`` bool, from :func:`match_detections`.
        num_gt: number of ground-truth boxes of the class.
    Returns:
        The AP; NaN when ``num_gt`` is 0 (AP is undefined without ground truth).
    """
    if num_gt <= 0:
        return float("nan")
    cum_tp, precision = precision_recall(scores, is_tp, num_gt)
    if len(cum_tp) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this rank or later
    positions = np.arange(1, num_recall_positions + 1)
    # Recall k/R is reached at the first rank with cum_tp * R >= k * num_gt (integers: no rounding).
    needed_tp = -(-positions * num_gt // num_recall_positions)
    first_rank = np.searchsorted(cum_tp, needed_tp, side="left")
    reached = first_rank < len(cum_tp)
    best = np.where(reached, envelope[np.minimum(first_rank, len(cum_tp) - 1)], 0.0)
    return float(100.0 * best.mean())
