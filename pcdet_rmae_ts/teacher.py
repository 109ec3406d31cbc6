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
from typing import Iterator

import torch
from torch import nn

from .schedules import cosine_between

TEACHER_TYPES = ("identical", "ema")


def cosine_momentum(progress: float, base_momentum: float, final_momentum: float = 1.0) -> float:
    """EMA momentum at training progress in [0, 1]: base at 0, final at 1, cosine in between."""
    progress = min(max(float(progress), 0.0), 1.0)
    return cosine_between(base_momentum, final_momentum, progress)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student for every parameter of the
    teacher (matched by name in the student); buffers are copied from the student.

    Multi-tensor (``torch._foreach_*``) ops: a few kernel launches for the whole model instead of
    two per parameter and one per buffer, on a step whose cost is mostly launches."""
    student_params = dict(student.named_parameters())
    params = [(p, student_params[n].detach()) for n, p in teacher.named_parameters()]
    if params:
        torch._foreach_lerp_([t for t, _ in params], [s for _, s in params], 1.0 - momentum)
    student_buffers = dict(student.named_buffers())
    buffers = [(b, student_buffers[n]) for n, b in teacher.named_buffers()]
    if buffers and hasattr(torch, "_foreach_copy_"):  # torch >= 2.2
        torch._foreach_copy_([t for t, _ in buffers], [s for _, s in buffers])
    else:
        for buffer, source in buffers:
            buffer.copy_(source)


@contextlib.contextmanager
def frozen_bn_buffers(module: nn.Module) -> Iterator[None]:
    """Run BN in train mode (batch statistics) without touching its running buffers.

    With ``track_running_stats`` off, a train-mode BN normalises with the batch statistics and
    neither updates nor counts (``num_batches_tracked``) anything: no extra kernels at all."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
