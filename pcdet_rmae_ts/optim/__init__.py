"""Optimizers and LR schedules: differential learning rates on top of OpenPCDet's schedules."""
from __future__ import annotations

from .differential_lr import (
    DifferentialLRScheduler,
    DifferentialLRSpec,
    GroupSpec,
    OneCycleSchedule,
    StepDecaySchedule,
    build_param_groups,
    build_scheduler,
    create_optimizer_with_differential_lr,
    parse_differential_lr,
    uses_differential_lr,
)

__all__ = [
    "DifferentialLRScheduler",
    "DifferentialLRSpec",
    "GroupSpec",
    "OneCycleSchedule",
    "StepDecaySchedule",
    "build_param_groups",
    "build_scheduler",
    "create_optimizer_with_differential_lr",
    "parse_differential_lr",
    "uses_differential_lr",
]
