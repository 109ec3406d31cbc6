"""Pretraining engine: loop, checkpoints, logging, distributed set-up (no OpenPCDet needed)."""
from __future__ import annotations

from .pretrain import build_arg_parser, run_pretraining

__all__ = ["build_arg_parser", "run_pretraining"]
