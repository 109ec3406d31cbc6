"""OpenPCDet's training log as the benchmarks read it: its ``Train:`` lines.

OpenPCDet's train loop logs, every ``--logger_iter_interval`` steps, a line like
``Train:   20/80 ( 25%) [   4/5 ( 80%)]  Loss: 6.741 (6.85)  LR: ...  Acc_iter 100  Data time: 1.60(0.86)
Forward time: 0.12(0.13)  Batch time: 1.72(0.99)``; tqdm's carriage returns can put progress text in front.
"""
from __future__ import annotations

import re
from typing import List, NamedTuple

TRAIN_LINE = re.compile(r"Train:\s+(\d+)/\d+.*?Loss: ([0-9.]+) .*?Acc_iter +(\d+) .*?Forward time: ([0-9.]+)\(")


class TrainLine(NamedTuple):
    epoch: int
    loss: float  # this step's loss (the running mean in brackets resets every epoch)
    step: int  # OpenPCDet's Acc_iter: optimiser steps so far
    forward_s: float  # this step's seconds in the model: forward, backward and optimiser step


def train_lines(text: str) -> List[TrainLine]:
    """Every ``Train:`` line of ``text``, in order (``splitlines`` also splits at tqdm's carriage returns)."""
    return [TrainLine(int(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4)))
            for m in map(TRAIN_LINE.search, text.splitlines()) if m]
