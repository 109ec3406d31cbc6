"""Teacher of the teacher-student branch: an EMA copy of the student, or the student
itself run without gradient ('identical').

EMA follows BYOL/DINO: after every optimizer step, teacher <- m * teacher +
(1 - m) * student, with m rising from ``base_momentum`` to 1.0 on a cosine schedule
of training progress (a function of the global step, so resumed runs continue it).

BatchNorm: the teacher normalises with the statistics of the complete batch it sees
(train-mode BN), but its forward never writes BN buffers (``frozen_bn_buffers``);
the EMA teacher copies the student's running statistics at each update.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

TEACHER_TYPES = ("identical", "ema")


def cosine_momentum(progress: float, base_momentum: float, final_momentum: float = 1.0) -> float:
    """EMA momentum at training progress in [0, 1]: base at 0, final at 1, cosine in between."""
    progress = min(max(float(progress), 0.0), 1.0)
    return final_momentum - (final_momentum - base_momentum) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student for every parameter of the
    teacher (matched by name in the student); buffers are copied from the student."""
    student_params = dict(student.named_parameters())
    for name, param in teacher.named_parameters():
        param.mul_(momentum).add_(student_params[name].detach(), alpha=1.0 - momentum)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        buffer.copy_(student_buffers[name])


@contextlib.contextmanager
def frozen_bn_buffers(module: nn.Module) -> Iterator[None]:
    """Run BN in train mode (batch statistics) without touching its running buffers."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
