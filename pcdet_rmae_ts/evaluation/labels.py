"""Read OpenPCDet custom-format label / prediction ``.txt`` folders into annotation dicts.

One box per line: ``x y z dx dy dz heading class`` (labels) or ``x y z dx dy dz heading class
score`` (predictions); lidar frame, metres and radians, z at the box centre.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np


def empty_annotation(frame_id: str, with_score: bool = False) -> dict:
    """A frame without boxes, in the layout :func:`read_label_file` returns."""
    if with_score:
        return {"frame_id": frame_id, "name": np.zeros(0, dtype=str), "score": np.zeros(0),
                "boxes_lidar": np.zeros((0, 7))}
    return {"frame_id": frame_id, "name": np.zeros(0, dtype=str), "gt_boxes_lidar": np.zeros((0, 7))}


def _parse_line(line: str, *, with_score: bool, where: str) -> tuple:
    fields = line.split()
    layout = "x y z dx dy dz heading class" + (" score" if with_score else "")
    if len(fields) != (9 if with_score else 8):
        raise ValueError(f"{where}: expected {9 if with_score else 8} fields '{layout}', got "
                         f"{len(fields)}: {line.strip()!r}")
    numbers = fields[:7] + fields[8:]
    try:
        values = [float(v) for v in numbers]
    except ValueError as err:
        raise ValueError(f"{where}: not a number ({err}) in {line.strip()!r}; layout is '{layout}'") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: non-finite number in {line.strip()!r}")
    return values[:7], fields[7], (values[7] if with_score else None)


def read_label_file(path: str | os.PathLike, with_score: bool = False) -> dict:
    """One ``.txt`` file as ``{'frame_id', 'name': (N,) str, 'gt_boxes_lidar': (N, 7)}``.

    With ``with_score`` the file holds predictions and the dict is ``{'frame_id', 'name',
    'score': (N,), 'boxes_lidar': (N, 7)}`` (OpenPCDet's det_annos layout). Blank lines are
    skipped; an empty file means no boxes. Raises ValueError naming file and line for a
    malformed line.
    """
    path = Path(path)
    boxes, names, scores = [], [], []
    with open(path, "r", encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            box, name, score = _parse_line(line, with_score=with_score, where=f"{path}:{number}")
            boxes.append(box)
            names.append(name)
            scores.append(score)
    anno = empty_annotation(path.stem, with_score)
    if not boxes:
        return anno
    anno["name"] = np.array(names)
    if with_score:
        anno["score"] = np.array(scores, dtype=np.float64)
        anno["boxes_lidar"] = np.array(boxes, dtype=np.float64)
    else:
        anno["gt_boxes_lidar"] = np.array(boxes, dtype=np.float64)
    return anno


def load_label_dir(path: str | os.PathLike, ids: Optional[Sequence[str]] = None, with_score: bool = False,
                   allow_missing: bool = False) -> List[dict]:
    """Read the frames of a label (or, with ``with_score``, prediction) folder.

    Args:
        path: folder of ``<frame_id>.txt`` files.
        ids: frame ids to read, in this order; None reads every ``.txt`` file, sorted by name.
        with_score: the files hold predictions (9 fields per line).
        allow_missing: a missing ``<id>.txt`` gives a frame without boxes instead of an error.
    Returns:
        One dict per frame (see :func:`read_label_file`), each with its ``frame_id``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"label folder not found: {folder}")
    if ids is None:
        ids = sorted(p.stem for p in folder.glob("*.txt"))
    annos = []
    for frame_id in ids:
        file = folder / f"{frame_id}.txt"
        if file.is_file():
            annos.append(read_label_file(file, with_score))
        elif allow_missing:
            annos.append(empty_annotation(str(frame_id), with_score))
        else:
            raise FileNotFoundError(f"no label file for frame '{frame_id}': {file} does not exist")
    return annos
