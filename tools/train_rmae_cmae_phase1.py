"""Pretrain a VoxelNeXt backbone with R-MAE radial masking + teacher-student (pcdet-free).

    python tools/train_rmae_cmae_phase1.py \
        --cfg_file cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml \
        --batch_size 8 --epochs 30 --extra_tag rmae_cmae_pretraining_phase1

Errors in the config or the data end the run with one clear message (exit status 2);
set PCDET_RMAE_TS_TRACEBACK=1 to see the full traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_rmae_ts.config import ConfigError  # noqa: E402
from pcdet_rmae_ts.data.readers import BadSampleError  # noqa: E402
from pcdet_rmae_ts.engine import run_pretraining  # noqa: E402

USER_ERRORS = (ConfigError, BadSampleError, FileNotFoundError)

if __name__ == "__main__":
    try:
        run_pretraining()
    except USER_ERRORS as err:
        if os.environ.get("PCDET_RMAE_TS_TRACEBACK") == "1":
            raise
        sys.stderr.write(f"ERROR ({type(err).__name__}): {err}\n")
        sys.exit(2)
