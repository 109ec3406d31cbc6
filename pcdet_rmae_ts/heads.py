"""Small neural building blocks shared by the backbone and the teacher-student losses (a leaf
module: it imports nothing from the package)."""
from __future__ import annotations

from torch import nn


def projection_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """Linear-LayerNorm-ReLU-Linear: the backbone's projectors and the BYOL-style predictors of the losses.

    Submodule names ``0``..``3`` are part of the checkpoints' state_dict keys; keep the layout."""
    return nn.Sequential(nn.Linear(in_channels, in_channels), nn.LayerNorm(in_channels), nn.ReLU(),
                         nn.Linear(in_channels, out_channels))


__all__ = ["projection_head"]
