"""Exact rotated IoU of OpenPCDet lidar boxes, in bird's-eye view and in 3-D, vectorised over pairs.

The intersection of two convex quadrilaterals is the convex hull of (corners of A inside B,
corners of B inside A, crossings of A's and B's edges); its area is computed with numpy for
all candidate pairs at once, without a Python loop over pairs.
"""
from __future__ import annotations

import numpy as np

# Tolerance (m^2 for cross products, unit-less for edge parameters): corners on an edge count as
# inside, so identical and touching boxes keep their shared corners.
_EPS = 1e-9

# Corner offsets in units of the half sizes, counter-clockwise from the front-left corner.
_CORNER_SIGNS = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a float64 ``(N, 7)`` array ``x y z dx dy dz heading`` (extra columns dropped).

    Raises ValueError for fewer than 7 columns. An empty input gives ``(0, 7)``.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 7))
    if array.ndim != 2 or array.shape[1] < 7:
        raise ValueError(f"boxes must have shape (N, 7) [x y z dx dy dz heading], got {array.shape}")
    return array[:, :7]


def bev_corners(boxes) -> np.ndarray:
    """Corners of the boxes in bird's-eye view.

    Args:
        boxes: ``(N, 7)`` lidar boxes ``x y z dx dy dz heading`` (metres, radians; ``dx`` lies
            along the heading, heading is the yaw around z).
    Returns:
        ``(N, 4, 2)`` float64 corner ``x y`` in metres, counter-clockwise.
    """
    boxes = as_boxes(boxes)
    local = _CORNER_SIGNS[None] * (boxes[:, None, 3:5] / 2.0)
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[:, 0:1]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[:, 1:2]
    return np.stack([x, y], axis=-1)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z component of the cross product of ``(..., 2)`` vectors."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """``(P, K)`` bool: point k of pair p lies in (or on) the CCW quadrilateral ``corners[p]``."""
    edges = np.roll(corners, -1, axis=1) - corners  # (P, 4, 2)
    rel = points[:, :, None, :] - corners[:, None, :, :]  # (P, K, 4, 2)
    return np.all(_cross(edges[:, None], rel) >= -_EPS, axis=-1)


def _edge_crossings(corners_a: np.ndarray, corners_b: np.ndarray) -> tuple:
    """Crossings of every edge of A with every edge of B: ``(P, 16, 2)`` points, ``(P, 16)`` valid."""
    p = corners_a[:, :, None, :]
    r = (np.roll(corners_a, -1, axis=1) - corners_a)[:, :, None, :]
    q = corners_b[:, None, :, :]
    s = (np.roll(corners_b, -1, axis=1) - corners_b)[:, None, :, :]
    denom = _cross(r, s)  # (P, 4, 4); 0 for parallel edges, which add no crossing
    nonparallel = np.abs(denom) > _EPS
    safe = np.where(nonparallel, denom, 1.0)
    t = _cross(q - p, s) / safe
    u = _cross(q - p, r) / safe
    valid = nonparallel & (t >= -_EPS) & (t <= 1 + _EPS) & (u >= -_EPS) & (u <= 1 + _EPS)
    points = p + t[..., None] * r
    count = corners_a.shape[0]
    return points.reshape(count, 16, 2), valid.reshape(count, 16)


def _convex_area(points: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Area (m^2) of the convex hull of the valid points of each pair; ``(P, K, 2)``, ``(P, K)`` -> ``(P,)``.

    The valid points are the vertices (possibly repeated) of a convex polygon, so sorting them
    by angle around their mean orders them along the boundary; invalid slots are replaced by
    the first sorted vertex, which adds zero-length edges to the shoelace sum.
    """
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    centre = (points * valid[..., None]).sum(axis=1, keepdims=True) / count[..., None]
    rel = points - centre
    angle = np.where(valid, np.arctan2(rel[..., 1], rel[..., 0]), np.inf)
    order = np.argsort(angle, axis=1)
    rel = np.take_along_axis(rel, order[..., None], axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    rel = np.where(valid[..., None], rel, rel[:, :1])
    return 0.5 * np.abs(_cross(rel, np.roll(rel, -1, axis=1)).sum(axis=1))


def _pair_intersection(corners_a: np.ndarray, corners_b: np.ndarray) -> np.ndarray:
    """Intersection area (m^2) of paired quadrilaterals ``(P, 4, 2)`` and ``(P, 4, 2)`` -> ``(P,)``."""
    crossings, crossing_valid = _edge_crossings(corners_a, corners_b)
    points = np.concatenate([corners_a, corners_b, crossings], axis=1)
    valid = np.concatenate([_inside(corners_a, corners_b), _inside(corners_b, corners_a), crossing_valid], axis=1)
    return _convex_area(points, valid)


def bev_intersection_area(boxes_a, boxes_b) -> np.ndarray:
    """Bird's-eye-view intersection areas of all pairs.

    Args:
        boxes_a: ``(M, 7)`` lidar boxes; boxes_b: ``(N, 7)`` lidar boxes.
    Returns:
        ``(M, N)`` float64 areas in m^2. Only pairs whose circumscribed circles meet are clipped.
    """
    boxes_a, boxes_b = as_boxes(boxes_a), as_boxes(boxes_b)
    area = np.zeros((len(boxes_a), len(boxes_b)))
    if area.size == 0:
        return area
    radius_a = np.hypot(boxes_a[:, 3], boxes_a[:, 4]) / 2
    radius_b = np.hypot(boxes_b[:, 3], boxes_b[:, 4]) / 2
    distance = np.hypot(boxes_a[:, None, 0] - boxes_b[None, :, 0], boxes_a[:, None, 1] - boxes_b[None, :, 1])
    rows, cols = np.nonzero(distance <= radius_a[:, None] + radius_b[None, :] + _EPS)
    if rows.size:
        area[rows, cols] = _pair_intersection(bev_corners(boxes_a)[rows], bev_corners(boxes_b)[cols])
    return area


def _ratio(intersection: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """``intersection / (size_a + size_b - intersection)``, 0 where the union is empty."""
    union = size_a[:, None] + size_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def bev_iou(boxes_a, boxes_b) -> np.ndarray:
    """Rotated bird's-eye-view IoU of all pairs: ``(M, 7)``, ``(N, 7)`` lidar boxes -> ``(M, N)`` in [0, 1]."""
    boxes_a, boxes_b = as_boxes(boxes_a), as_boxes(boxes_b)
    inter = bev_intersection_area(boxes_a, boxes_b)
    return _ratio(inter, boxes_a[:, 3] * boxes_a[:, 4], boxes_b[:, 3] * boxes_b[:, 4])


def iou_3d(boxes_a, boxes_b) -> np.ndarray:
    """3-D IoU of all pairs (boxes upright, z is the box centre): ``(M, 7)``, ``(N, 7)`` -> ``(M, N)`` in [0, 1].

    Intersection volume = BEV intersection area x overlap of the z extents; union = sum of the
    volumes minus the intersection.
    """
    boxes_a, boxes_b = as_boxes(boxes_a), as_boxes(boxes_b)
    top = np.minimum(boxes_a[:, None, 2] + boxes_a[:, None, 5] / 2, boxes_b[None, :, 2] + boxes_b[None, :, 5] / 2)
    bottom = np.maximum(boxes_a[:, None, 2] - boxes_a[:, None, 5] / 2, boxes_b[None, :, 2] - boxes_b[None, :, 5] / 2)
    inter = bev_intersection_area(boxes_a, boxes_b) * np.clip(top - bottom, 0.0, None)
    return _ratio(inter, np.prod(boxes_a[:, 3:6], axis=1), np.prod(boxes_b[:, 3:6], axis=1))
