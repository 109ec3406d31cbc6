"""Pretrain a VoxelNeXt backbone with R-MAE radial masking + teacher-student (pcdet-free).

    python tools/train_rmae_cmae_phase1.py --cfg_file cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml \
        --batch_size 8 --epochs 30 --extra_tag rmae_cmae_pretraining_phase1
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_rmae_ts.engine import run_pretraining  # noqa: E402

if __name__ == "__main__":
    run_pretraining()
