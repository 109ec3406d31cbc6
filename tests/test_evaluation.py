"""Tests of pcdet_rmae_ts.evaluation: rotated IoU against a slow polygon-clipping reference, AP on
hand-computed cases, config validation, label folders, the CLI, and agreement with OpenPCDet's
KITTI evaluation (where pcdet is importable)."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pcdet_rmae_ts.evaluation import (
    average_precision,
    bev_corners,
    bev_intersection_area,
    bev_iou,
    evaluate_detections,
    flatten_results,
    format_results,
    iou_3d,
    load_label_dir,
    match_detections,
    parse_evaluation_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]


# ----------------------------------------------------------------------------- helpers

def random_boxes(rng: np.random.Generator, count: int, spread: float = 3.0) -> np.ndarray:
    """(count, 7) boxes near the origin (many overlaps), random sizes and headings."""
    centre = rng.uniform(-spread, spread, (count, 3))
    size = rng.uniform(0.5, 5.0, (count, 3))
    heading = rng.uniform(-np.pi, np.pi, (count, 1))
    return np.concatenate([centre, size, heading], axis=1)


def shifted_along_heading(boxes: np.ndarray, fraction: float) -> np.ndarray:
    """Boxes moved by ``fraction * dx`` along their heading: 3-D and BEV IoU = (1-f)/(1+f)."""
    out = boxes.copy()
    out[:, 0] += fraction * boxes[:, 3] * np.cos(boxes[:, 6])
    out[:, 1] += fraction * boxes[:, 3] * np.sin(boxes[:, 6])
    return out


def scene(rng: np.random.Generator, names, ranges=None) -> np.ndarray:
    """Well separated boxes (one per 60-degree sector and given range), so only a box and its own copy overlap."""
    count = len(names)
    ranges = rng.uniform(5.0, 65.0, count) if ranges is None else np.asarray(ranges, dtype=float)
    angle = np.arange(count) * (2 * np.pi / max(count, 6)) + rng.uniform(-0.1, 0.1, count)
    size = rng.uniform([2.0, 1.5, 1.5], [6.0, 3.0, 3.5], (count, 3))
    return np.column_stack([ranges * np.cos(angle), ranges * np.sin(angle), rng.uniform(-1, 1, count), size,
                            rng.uniform(-np.pi, np.pi, count)])


def gt_frame(names, boxes, **extra) -> dict:
    return {"name": np.array(names, dtype=str).reshape(-1), "gt_boxes_lidar": np.asarray(boxes).reshape(-1, 7),
            **extra}


def det_frame(names, boxes, scores, **extra) -> dict:
    return {"name": np.array(names, dtype=str).reshape(-1), "boxes_lidar": np.asarray(boxes).reshape(-1, 7),
            "score": np.asarray(scores, dtype=float).reshape(-1), **extra}


# ----------------------------------------------------------------------------- slow IoU reference

def _clip(polygon, a, b):
    """Sutherland-Hodgman: keep the part of ``polygon`` left of the directed line a->b."""
    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for i in range(len(polygon)):
        cur, nxt = polygon[i], polygon[(i + 1) % len(polygon)]
        s_cur, s_nxt = side(cur), side(nxt)
        if s_cur >= 0:
            out.append(cur)
        if (s_cur >= 0) != (s_nxt >= 0):
            t = s_cur / (s_cur - s_nxt)
            out.append((cur[0] + t * (nxt[0] - cur[0]), cur[1] + t * (nxt[1] - cur[1])))
    return out


def _polygon_area(polygon):
    return 0.5 * abs(sum(polygon[i][0] * polygon[(i + 1) % len(polygon)][1]
                         - polygon[(i + 1) % len(polygon)][0] * polygon[i][1] for i in range(len(polygon))))


def _slow_corners(box):
    """CCW corners of one box, written independently of bev_corners."""
    x, y, _, dx, dy, _, h = box
    c, s = math.cos(h), math.sin(h)
    local = [(dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2)]
    return [(x + u * c - v * s, y + u * s + v * c) for u, v in local]


def slow_bev_intersection(a, b):
    polygon = _slow_corners(a)
    clip = _slow_corners(b)
    for i in range(4):
        if not polygon:
            return 0.0
        polygon = _clip(polygon, clip[i], clip[(i + 1) % 4])
    return _polygon_area(polygon) if len(polygon) >= 3 else 0.0


def slow_iou(boxes_a, boxes_b, three_d: bool):
    out = np.zeros((len(boxes_a), len(boxes_b)))
    for i, a in enumerate(boxes_a):
        for j, b in enumerate(boxes_b):
            inter = slow_bev_intersection(a, b)
            size_a, size_b = a[3] * a[4], b[3] * b[4]
            if three_d:
                dz = min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2)
                inter *= max(dz, 0.0)
                size_a, size_b = size_a * a[5], size_b * b[5]
            out[i, j] = inter / (size_a + size_b - inter)
    return out


def special_boxes(rng: np.random.Generator) -> tuple:
    """(A, B) rows pairing identical, disjoint, contained, 90-degree-rotated and corner-touching boxes."""
    base = random_boxes(rng, 5)
    contained = base.copy()
    contained[:, 3:5] = base[:, 3:5].min(axis=1, keepdims=True) * 0.3  # half-diagonal < half of min side
    contained[:, 6] = rng.uniform(-np.pi, np.pi, 5)
    rotated = base.copy()
    rotated[:, 6] += np.pi / 2
    disjoint = base.copy()
    disjoint[:, 0] += 20.0
    touching = base.copy()  # shares exactly one edge
    touching[:, 0] += base[:, 3] * np.cos(base[:, 6])
    touching[:, 1] += base[:, 3] * np.sin(base[:, 6])
    return base, np.concatenate([base, contained, rotated, disjoint, touching])


# ----------------------------------------------------------------------------- IoU tests

@pytest.mark.parametrize("seed", SEEDS)
def test_bev_iou_matches_polygon_clipping_reference(seed):
    rng = np.random.default_rng(seed)
    boxes_a, boxes_b = random_boxes(rng, 14), random_boxes(rng, 11)
    specials_a, specials_b = special_boxes(rng)
    boxes_a, boxes_b = np.concatenate([boxes_a, specials_a]), np.concatenate([boxes_b, specials_b])
    expected = slow_iou(boxes_a, boxes_b, three_d=False)
    assert (expected > 0).mean() > 0.2  # the random part really overlaps
    np.testing.assert_allclose(bev_iou(boxes_a, boxes_b), expected, atol=1e-9)
    areas = [[slow_bev_intersection(a, b) for b in boxes_b] for a in boxes_a]
    np.testing.assert_allclose(bev_intersection_area(boxes_a, boxes_b), areas, atol=1e-9)
    np.testing.assert_allclose(iou_3d(boxes_a, boxes_b), slow_iou(boxes_a, boxes_b, three_d=True), atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_special_pairs_have_known_bev_values(seed):
    base, specials = special_boxes(np.random.default_rng(seed))
    iou = bev_iou(base, specials)
    count = len(base)
    idx = np.arange(count)
    np.testing.assert_allclose(iou[idx, idx], 1.0, atol=1e-12)  # identical
    inner = specials[count:2 * count]
    np.testing.assert_allclose(iou[idx, idx + count],
                               inner[:, 3] * inner[:, 4] / (base[:, 3] * base[:, 4]), rtol=1e-9)  # contained
    np.testing.assert_allclose(iou[idx, idx + 3 * count], 0.0)  # disjoint
    np.testing.assert_allclose(iou[idx, idx + 4 * count], 0.0, atol=1e-9)  # touching along one edge
    dx, dy = base[:, 3], base[:, 4]
    square = np.minimum(dx, dy) ** 2  # a box and its 90-degree copy share a min(dx,dy)^2 square
    np.testing.assert_allclose(iou[idx, idx + 2 * count], square / (2 * dx * dy - square), rtol=1e-9)


def test_bev_corners_put_dx_along_heading():
    corners = bev_corners(np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 1.0, np.pi / 2]]))[0]
    # heading 90 degrees: the 4 m side lies along y, the 2 m side along x.
    np.testing.assert_allclose(np.ptp(corners[:, 1]), 4.0, atol=1e-12)
    np.testing.assert_allclose(np.ptp(corners[:, 0]), 2.0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_iou_3d_analytic_cases(seed):
    box = random_boxes(np.random.default_rng(seed), 1)
    assert iou_3d(box, box)[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert iou_3d(box, shifted_along_heading(box, 0.5))[0, 0] == pytest.approx(1 / 3, abs=1e-12)
    lifted = box.copy()
    lifted[0, 2] += box[0, 5] * 1.01  # z-disjoint, same BEV footprint
    assert bev_iou(box, lifted)[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert iou_3d(box, lifted)[0, 0] == 0.0
    half_up = box.copy()
    half_up[0, 2] += box[0, 5] / 2
    assert iou_3d(box, half_up)[0, 0] == pytest.approx(1 / 3, abs=1e-12)


def test_iou_of_empty_sets_has_empty_shape():
    assert bev_iou(np.zeros((0, 7)), random_boxes(np.random.default_rng(0), 3)).shape == (0, 3)
    assert iou_3d(random_boxes(np.random.default_rng(0), 2), np.zeros((0, 7))).shape == (2, 0)


# ----------------------------------------------------------------------------- AP tests

def test_average_precision_r40_hand_values():
    # 4 ground truths; ranking FP, TP, TP, FP, FP, TP, TP.
    # Precision after each TP: 1/2, 2/3, 3/6, 4/7 at recall 1/4, 2/4, 3/4, 1.
    # Best precision at recall >= r: 2/3 for r <= 1/2 (20 positions), 4/7 for r > 1/2 (20 positions).
    # AP = (20 * 2/3 + 20 * 4/7) / 40 = 13/21 = 61.905 %.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    is_tp = np.array([False, True, True, False, False, True, True])
    assert average_precision(scores, is_tp, 4) == pytest.approx(100 * 13 / 21)
    assert average_precision(scores[::-1], is_tp[::-1], 4) == pytest.approx(100 * 13 / 21)  # order-free
    # 3 ground truths, one found: recall 1/3 covers positions 1..13 of 40.
    assert average_precision(np.array([0.5]), np.array([True]), 3) == pytest.approx(100 * 13 / 40)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 2) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_match_detections_is_greedy_by_score_and_uses_each_ground_truth_once():
    # Score order: row 1 takes gt 0 (its best); row 2 finds gt 0 taken and takes gt 1 (0.55), although
    # gt 0 was its best; row 0 (lowest score) finds both taken: a false positive despite IoU 0.9.
    ious = np.array([[0.9, 0.6],
                     [0.8, 0.0],
                     [0.95, 0.55]])
    scores = np.array([0.1, 0.9, 0.5])
    np.testing.assert_array_equal(match_detections(ious, scores, 0.5), [False, True, True])
    np.testing.assert_array_equal(match_detections(ious, scores, 0.7), [False, True, False])


@pytest.mark.parametrize("seed", SEEDS)
def test_perfect_predictions_give_100(seed):
    rng = np.random.default_rng(seed)
    classes = ["dumptruck", "excavator", "grader", "roller"]
    gts, dets = [], []
    for _ in range(5):
        names = rng.choice(classes, 6)
        boxes = scene(rng, names)
        gts.append(gt_frame(names, boxes))
        dets.append(det_frame(names, boxes, rng.uniform(0.1, 1.0, 6)))
    result = evaluate_detections(gts, dets, classes)
    present = [c for c in classes if result["num_gt"][c] > 0]
    for metric in ("AP_3D", "AP_BEV"):
        assert all(result[metric][c] == pytest.approx(100.0) for c in present)
        assert result["m" + metric] == pytest.approx(100.0)
    assert sum(result["num_gt"].values()) == 30 and result["num_det"] == result["num_gt"]


@pytest.mark.parametrize("seed", SEEDS)
def test_boxes_shifted_past_threshold_give_0(seed):
    rng = np.random.default_rng(seed)
    names = ["excavator"] * 6
    boxes = scene(rng, names)
    shifted = shifted_along_heading(boxes, 0.6)  # IoU (1 - 0.6) / (1 + 0.6) = 0.25 < 0.5
    result = evaluate_detections([gt_frame(names, boxes)], [det_frame(names, shifted, rng.uniform(size=6))],
                                 ["excavator"])
    assert result["AP_3D"]["excavator"] == 0.0 and result["AP_BEV"]["excavator"] == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_half_found_with_top_scores_gives_50(seed):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(4):
        names = ["roller"] * 6
        boxes = scene(rng, names)
        gts.append(gt_frame(names, boxes))
        found = rng.permutation(6)[:3]  # half of each frame found, the rest missed
        far = shifted_along_heading(boxes[:2], 5.0)  # low-score false positives after every hit
        dets.append(det_frame(["roller"] * 5, np.concatenate([boxes[found], far]),
                              np.concatenate([rng.uniform(0.5, 1.0, 3), rng.uniform(0.0, 0.4, 2)])))
    result = evaluate_detections(gts, dets, ["roller"])
    assert result["AP_3D"]["roller"] == pytest.approx(50.0)
    assert result["AP_BEV"]["roller"] == pytest.approx(50.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_false_positive_ranked_first_over_frames(seed):
    # Same ranking as test_average_precision_r40_hand_values, spread over two frames:
    # FP (0.9, frame 0), TP (0.8, f1), TP (0.7, f0), FP (0.6, f1), FP (0.5, f0), TP (0.4, f1), TP (0.3, f0).
    # Expected R40 AP = 100 * 13/21.
    rng = np.random.default_rng(seed)
    boxes = [scene(rng, ["grader"] * 2), scene(rng, ["grader"] * 2)]
    far = [shifted_along_heading(b, 4.0) for b in boxes]
    dets = [det_frame(["grader"] * 4, np.concatenate([far[0][:1], boxes[0], far[0][1:]]), [0.9, 0.7, 0.3, 0.5]),
            det_frame(["grader"] * 4, np.concatenate([boxes[1], far[1]]), [0.8, 0.4, 0.6, 0.05])]
    dets[1]["name"][3] = "roller"  # a detection of another class: ignored
    result = evaluate_detections([gt_frame(["grader"] * 2, b) for b in boxes], dets, ["grader"])
    assert result["AP_3D"]["grader"] == pytest.approx(100 * 13 / 21)
    assert result["num_det"]["grader"] == 7


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_thresholds(seed):
    rng = np.random.default_rng(seed)
    names = ["excavator", "excavator", "dumptruck", "dumptruck"]
    boxes = scene(rng, names)
    shifted = shifted_along_heading(boxes, 0.25)  # IoU (1 - 0.25) / (1 + 0.25) = 0.6
    np.testing.assert_allclose(np.diag(iou_3d(boxes, shifted)), 0.6, atol=1e-9)
    config = {"IOU_THRESHOLDS": {"excavator": 0.5, "dumptruck": 0.7}}
    result = evaluate_detections([gt_frame(names, boxes)], [det_frame(names, shifted, rng.uniform(size=4))],
                                 ["excavator", "dumptruck", "roller"], config)
    assert result["AP_3D"] == {"excavator": pytest.approx(100.0), "dumptruck": 0.0, "roller": pytest.approx(math.nan,
                                                                                                          nan_ok=True)}
    assert result["iou_thresholds"] == {"excavator": 0.5, "dumptruck": 0.7, "roller": 0.5}
    assert result["mAP_3D"] == pytest.approx(50.0)  # roller (no ground truth) is left out of the mean


def test_iou_equal_to_the_threshold_counts():
    # Axis-aligned 4 x 2 x 2 m boxes 1 m apart: IoU = 12 / 20 = 0.6 exactly (dyadic numbers).
    box = np.array([[12.5, 5.0, 0.5, 4.0, 2.0, 2.0, 0.0]])
    det = box + np.array([[1.0, 0, 0, 0, 0, 0, 0]])
    assert iou_3d(box, det)[0, 0] == 0.6 and bev_iou(box, det)[0, 0] == 0.6
    result = evaluate_detections([gt_frame(["roller"], box)], [det_frame(["roller"], det, [0.5])], ["roller"],
                                 {"IOU_THRESHOLDS": {"roller": 0.6}})
    assert result["AP_3D"]["roller"] == pytest.approx(100.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_3d_ap_sees_height_and_bev_ap_does_not(seed):
    rng = np.random.default_rng(seed)
    names = ["grader"] * 3
    boxes = scene(rng, names)
    lifted = boxes.copy()
    lifted[:, 2] += boxes[:, 5] / 2  # same footprint, half the height above: 3-D IoU 1/3
    result = evaluate_detections([gt_frame(names, boxes)], [det_frame(names, lifted, rng.uniform(size=3))], names[:1])
    assert result["AP_BEV"]["grader"] == pytest.approx(100.0)
    assert result["AP_3D"]["grader"] == 0.0


def test_range_bins_filter_ground_truth_and_detections():
    rng = np.random.default_rng(0)
    names = ["roller"] * 4
    boxes = scene(rng, names, ranges=[10.0, 30.0, 45.0, 60.0])
    boxes[1, :2] = [0.0, 30.0]  # exactly 30 m: lies in [30, 50), not in [0, 30)
    dets = det_frame(names[:2], boxes[:2], [0.9, 0.8])
    result = evaluate_detections([gt_frame(names, boxes)], [dets], ["roller"],
                                 {"RANGE_BINS": [0, 30, 50, 70.4]})
    assert set(result["range"]) == {"0-30", "30-50", "50-70.4"}
    assert result["range"]["0-30"]["AP_3D"]["roller"] == pytest.approx(100.0)
    assert result["range"]["0-30"]["num_gt"]["roller"] == 1 and result["range"]["30-50"]["num_gt"]["roller"] == 2
    # 30-50: 2 ground truths, the one at 30 m found with the only detection: recall 1/2 -> 50.
    assert result["range"]["30-50"]["AP_3D"]["roller"] == pytest.approx(50.0)
    assert result["range"]["50-70.4"]["AP_3D"]["roller"] == 0.0
    assert result["range"]["50-70.4"]["num_gt"]["roller"] == 1
    # Overall: 2 of 4 found with the top scores -> 50.
    assert result["AP_3D"]["roller"] == pytest.approx(50.0)


def test_detection_and_ground_truth_on_both_sides_of_a_bin_edge():
    box = scene(np.random.default_rng(0), ["roller"], ranges=[30.05])
    det = box.copy()
    det[0, :2] *= 29.95 / 30.05  # 0.1 m closer: still IoU > 0.5, but in the 0-30 bin
    result = evaluate_detections([gt_frame(["roller"], box)], [det_frame(["roller"], det, [0.5])], ["roller"])
    assert result["AP_BEV"]["roller"] == pytest.approx(100.0)
    assert math.isnan(result["range"]["0-30"]["AP_BEV"]["roller"])  # no ground truth there: NaN
    assert result["range"]["30-50"]["AP_BEV"]["roller"] == 0.0


def test_other_classes_and_dontcare_are_ignored():
    rng = np.random.default_rng(3)
    names = ["excavator", "dozer", "DontCare", "excavator"]
    boxes = scene(rng, names)
    det_names = ["excavator", "dozer", "excavator", "excavator"]
    det_boxes = boxes.copy()
    det_boxes[2] = shifted_along_heading(boxes[2:3], 0.05)[0]  # an excavator on the DontCare box: a false positive
    result = evaluate_detections([gt_frame(names, boxes)],
                                 [det_frame(det_names, det_boxes, [0.9, 0.99, 0.1, 0.8])], ["excavator", "grader"])
    assert result["num_gt"] == {"excavator": 2, "grader": 0}
    assert result["num_det"] == {"excavator": 3, "grader": 0}
    assert result["AP_3D"]["excavator"] == pytest.approx(100.0)  # the FP ranks last
    assert set(result["AP_3D"]) == {"excavator", "grader"}


def test_frame_id_mismatch_and_length_mismatch_raise():
    boxes = scene(np.random.default_rng(0), ["roller"])
    gt = gt_frame(["roller"], boxes, frame_id="000001")
    with pytest.raises(ValueError, match="000002"):
        evaluate_detections([gt], [det_frame(["roller"], boxes, [1.0], frame_id="000002")], ["roller"])
    with pytest.raises(ValueError, match="1 ground-truth frames but 2"):
        evaluate_detections([gt], [det_frame([], np.zeros((0, 7)), [])] * 2, ["roller"])
    empty = evaluate_detections([gt], [det_frame([], np.zeros((0, 7)), [], frame_id="000001")], ["roller"])
    assert empty["AP_3D"]["roller"] == 0.0


def test_format_and_flatten():
    rng = np.random.default_rng(0)
    names = ["roller", "grader"]
    boxes = scene(rng, names, ranges=[10.0, 40.0])
    result = evaluate_detections([gt_frame(names, boxes)], [det_frame(names, boxes, [0.5, 0.6])],
                                 ["roller", "grader", "excavator"])
    table = format_results(result)
    assert "roller" in table and "n/a" in table and "30-50" in table
    flat = flatten_results(result)
    assert flat["AP_3D/roller"] == pytest.approx(100.0) and flat["mAP_3D"] == pytest.approx(100.0)
    assert flat["range_0-30/mAP_3D"] == pytest.approx(100.0)
    assert "AP_3D/excavator" not in flat and "range_50-70.4/mAP_3D" not in flat  # NaN values left out
    assert all(isinstance(v, float) and not math.isnan(v) for v in flat.values())


# ----------------------------------------------------------------------------- config

def test_config_defaults_and_validation():
    cfg = parse_evaluation_config(None)
    assert cfg.threshold("anything") == 0.5 and cfg.range_bins == (0.0, 30.0, 50.0, 70.4)
    with pytest.raises(ValueError, match="RANGE_BINS"):
        parse_evaluation_config({"RANGE_BIN": [0, 10]})
    with pytest.raises(ValueError, match="IOU_THRESHOLDS.excavator.*1.5"):
        parse_evaluation_config({"IOU_THRESHOLDS": {"excavator": 1.5}})
    with pytest.raises(ValueError, match="IOU_THRESHOLDS.roller"):
        parse_evaluation_config({"IOU_THRESHOLDS": {"roller": 0}})
    with pytest.raises(ValueError, match=r"RANGE_BINS\[2\]"):
        parse_evaluation_config({"RANGE_BINS": [0, 30, 30, 70]})
    assert parse_evaluation_config({"IOU_THRESHOLDS": {"roller": 1}}).threshold("roller") == 1.0


# ----------------------------------------------------------------------------- label folders and CLI

def write_labels(folder: Path, frames: dict, with_score: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame_id, (names, boxes, scores) in frames.items():
        lines = []
        for i, name in enumerate(names):
            numbers = " ".join(f"{v:.6f}" for v in boxes[i])
            lines.append(f"{numbers} {name}" + (f" {scores[i]:.4f}" if with_score else ""))
        (folder / f"{frame_id}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def test_load_label_dir_reads_and_reports_bad_lines(tmp_path):
    boxes = scene(np.random.default_rng(0), ["roller", "grader"])
    write_labels(tmp_path, {"000002": (["roller", "grader"], boxes, None), "000001": ([], boxes[:0], None)}, False)
    annos = load_label_dir(tmp_path)
    assert [a["frame_id"] for a in annos] == ["000001", "000002"]
    assert annos[0]["gt_boxes_lidar"].shape == (0, 7)
    np.testing.assert_allclose(annos[1]["gt_boxes_lidar"], boxes, atol=1e-6)
    assert list(annos[1]["name"]) == ["roller", "grader"]
    with open(tmp_path / "000002.txt", "a") as stream:
        stream.write("1 2 3 4 5 6 roller\n")
    with pytest.raises(ValueError, match="000002.txt:3"):
        load_label_dir(tmp_path)
    with pytest.raises(ValueError, match="000002.txt:1"):
        load_label_dir(tmp_path, ids=["000002"], with_score=True)
    with pytest.raises(FileNotFoundError, match="000009"):
        load_label_dir(tmp_path, ids=["000009"])


def _load_cli():
    path = REPO_ROOT / "tools" / "evaluate_detections.py"
    spec = importlib.util.spec_from_file_location("evaluate_detections_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gt, pred = {}, {}
    for index in range(4):
        names = ["excavator", "dumptruck", "excavator"]
        boxes = scene(rng, names, ranges=[10.0, 40.0, 60.0])
        gt[f"{index:06d}"] = (names, boxes, None)
        if index < 3:  # frame 000003 has no prediction file: its 3 objects are missed
            pred[f"{index:06d}"] = (names, shifted_along_heading(boxes, 0.25), rng.uniform(0.2, 1.0, 3))
    write_labels(tmp_path / "labels", gt, False)
    write_labels(tmp_path / "preds", pred, True)
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("000000\n000001\n000002\n000003\n")
    (tmp_path / "dataset.yaml").write_text("CLASS_NAMES: [dumptruck, excavator]\n"
                                           "EVALUATION:\n  IOU_THRESHOLDS: {dumptruck: 0.7}\n")
    (tmp_path / "model.yaml").write_text("DATA_CONFIG:\n  _BASE_CONFIG_: dataset.yaml\n")
    out = tmp_path / "result" / "result.json"
    cli = _load_cli()
    status = cli.main(["--gt_dir", str(tmp_path / "labels"), "--pred_dir", str(tmp_path / "preds"),
                       "--classes", "dumptruck", "excavator", "grader", "--cfg_file", str(tmp_path / "model.yaml"),
                       "--ids_file", str(tmp_path / "ImageSets" / "val.txt"), "--out", str(out)])
    assert status == 0
    assert "excavator" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result) == {"AP_3D", "AP_BEV", "mAP_3D", "mAP_BEV", "range", "iou_thresholds", "num_gt", "num_det"}
    assert result["iou_thresholds"] == {"dumptruck": 0.7, "excavator": 0.5, "grader": 0.5}
    assert result["num_gt"] == {"dumptruck": 4, "excavator": 8, "grader": 0}
    assert result["num_det"] == {"dumptruck": 3, "excavator": 6, "grader": 0}
    # IoU 0.6: excavator counts (3 of 4 frames found, recall 3/4 -> 30 positions), dumptruck does not.
    assert result["AP_3D"]["excavator"] == pytest.approx(75.0, abs=1e-3)
    assert result["AP_3D"]["dumptruck"] == 0.0 and result["AP_3D"]["grader"] is None
    assert result["mAP_3D"] == pytest.approx(37.5, abs=1e-3)
    assert set(result["range"]) == {"0-30", "30-50", "50-70.4"}
    assert result["range"]["0-30"]["AP_3D"]["excavator"] == pytest.approx(75.0, abs=1e-3)


def test_cli_errors_without_any_prediction_file(tmp_path, capsys):
    boxes = scene(np.random.default_rng(0), ["roller"])
    write_labels(tmp_path / "labels", {"000000": (["roller"], boxes, None)}, False)
    (tmp_path / "preds").mkdir()
    status = _load_cli().main(["--gt_dir", str(tmp_path / "labels"), "--pred_dir", str(tmp_path / "preds"),
                               "--classes", "roller"])
    assert status == 1
    assert "none of the 1 frames has a prediction file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- agreement with OpenPCDet

def kitti_agreement_case(seed: int) -> tuple:
    """Car-like scenes where KITTI's evaluation and ours must agree.

    Objects lie far apart and every IoU is far from 0.7 (KITTI needs IoU > 0.7, we >= 0.7), so
    both matching rules give the same true positives. 160 objects, exactly 40 missed: the final
    recall, 3/4, lies on a recall position. (KITTI's ``get_thresholds`` always keeps the lowest
    true-positive score as one more threshold, which credits a final recall between two positions
    with the next position: up to 2.5 points more than the R40 definition; and it takes the
    precision at the recall *nearest* to k/40 rather than >= k/40, which with 160 objects moves
    the AP by a few tenths at most.)
    """
    rng = np.random.default_rng(seed)
    kinds = rng.permutation(np.repeat(["good", "poor", "none"], [120, 20, 20])).reshape(16, 10)
    gts, dets = [], []
    for kind in kinds:
        cells = rng.permutation(np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2))[:13]
        centre = np.column_stack([8.0 + 10.0 * cells[:, 0], -30.0 + 10.0 * cells[:, 1]]) + rng.uniform(-2, 2, (13, 2))
        size = rng.uniform([3.5, 1.6, 1.4], [5.0, 2.0, 1.8], (13, 3))
        boxes = np.column_stack([centre, rng.uniform(-1.2, -0.6, 13), size, rng.uniform(-np.pi, np.pi, 13)])
        gt_boxes, count = boxes[:10], int(np.sum(kind == "good"))
        noise = np.concatenate([rng.normal(0, 0.04, (count, 3)), np.zeros((count, 3)),
                                rng.normal(0, 0.02, (count, 1))], axis=1)
        good = gt_boxes[kind == "good"] + noise
        poor = shifted_along_heading(gt_boxes[kind == "poor"], 0.3)  # IoU 0.54: a false positive and a miss
        det_boxes = np.concatenate([good, poor, boxes[10:]])  # boxes[10:]: false positives in empty cells
        scores = np.concatenate([rng.uniform(0.3, 1.0, count), rng.uniform(0.0, 0.8, len(det_boxes) - count)])
        gts.append({"name": np.array(["Car"] * 10), "gt_boxes_lidar": gt_boxes})
        dets.append({"name": np.array(["Car"] * len(det_boxes)), "boxes_lidar": det_boxes, "score": scores})
    return gts, dets


@pytest.mark.parametrize("seed", SEEDS)
def test_kitti_agreement_case_is_unambiguous(seed):
    """The agreement case stays away from the IoU threshold, so both matching rules give one answer."""
    gts, dets = kitti_agreement_case(seed)
    for gt, det in zip(gts, dets):
        for fn in (iou_3d, bev_iou):
            ious = fn(det["boxes_lidar"], gt["gt_boxes_lidar"])
            assert np.all(np.abs(ious - 0.7) > 0.03)
            assert np.all((ious > 0).sum(axis=1) <= 1)  # a detection overlaps at most one object
    result = evaluate_detections(gts, dets, ["Car"], {"IOU_THRESHOLDS": {"Car": 0.7}})
    assert 40.0 < result["AP_3D"]["Car"] < 90.0 and result["num_gt"]["Car"] == 160


@pytest.mark.parametrize("seed", SEEDS)
def test_agrees_with_openpcdet_kitti_eval(seed, monkeypatch):
    """Our AP at IoU 0.7 equals OpenPCDet's KITTI R40 'Car' moderate AP (all objects are 'easy':
    fake 2-D boxes of height 50 px, truncation 0, occlusion 0, as CustomDataset's evaluation sets them)."""
    if not hasattr(np, "row_stack"):  # numpy >= 2.x removed it; numba-cuda still asks for it (README: troubleshooting)
        monkeypatch.setattr(np, "row_stack", np.vstack, raising=False)
    kitti_eval = pytest.importorskip("pcdet.datasets.kitti.kitti_object_eval_python.eval",
                                     reason="OpenPCDet (pcdet) is not importable here; run on a machine with pcdet")
    kitti_utils = pytest.importorskip("pcdet.datasets.kitti.kitti_utils", reason="OpenPCDet (pcdet) not importable")
    numba_cuda = pytest.importorskip("numba.cuda", reason="OpenPCDet's KITTI eval needs numba.cuda")
    if not numba_cuda.is_available():
        pytest.skip("OpenPCDet's KITTI eval computes rotated IoU with numba.cuda: needs a CUDA GPU")
    gts, dets = kitti_agreement_case(seed)
    ours = evaluate_detections(gts, dets, ["Car"], {"IOU_THRESHOLDS": {"Car": 0.7}})
    kitti_gts = kitti_utils.transform_annotations_to_kitti_format(copy.deepcopy(gts), map_name_to_kitti={"Car": "Car"})
    kitti_dets = kitti_utils.transform_annotations_to_kitti_format(copy.deepcopy(dets),
                                                                   map_name_to_kitti={"Car": "Car"})
    _, theirs = kitti_eval.get_official_eval_result(kitti_gts, kitti_dets, ["Car"])
    assert ours["AP_3D"]["Car"] == pytest.approx(theirs["Car_3d/moderate_R40"], abs=0.5)
    assert ours["AP_BEV"]["Car"] == pytest.approx(theirs["Car_bev/moderate_R40"], abs=0.5)
