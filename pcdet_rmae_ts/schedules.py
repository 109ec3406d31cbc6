"""Schedules as pure functions of training progress (a leaf module): the one cosine ramp behind
the teacher's EMA momentum and the optimizer's warm-up and one-cycle phases."""
from __future__ import annotations

import math


def cosine_between(start: float, end: float, pct: float) -> float:
    """Half-cosine ramp from ``start`` (``pct`` 0) to ``end`` (``pct`` 1); ``pct`` is not clamped."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


__all__ = ["cosine_between"]
