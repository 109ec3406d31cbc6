"""Pretrain a VoxelNeXt backbone with R-MAE radial masking + teacher-student (pcdet-free).

    python tools/train_rmae_cmae_phase1.py \
        --cfg_file cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml \
        --batch_size 8 --epochs 30 --extra_tag rmae_cmae_pretraining_phase1

Errors in the config, the data, the checkpoints or the output folder end the run with one clear
message (exit status 2), also written to the run's log_train_*.txt; Ctrl-C saves a resumable
checkpoint and exits with status 130. Set PCDET_RMAE_TS_TRACEBACK=1 to see the full traceback.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pcdet_rmae_ts.config import ConfigError  # noqa: E402
from pcdet_rmae_ts.data.readers import BadSampleError  # noqa: E402
from pcdet_rmae_ts.engine import run_pretraining  # noqa: E402
from pcdet_rmae_ts.engine.checkpoint import CheckpointError  # noqa: E402
from pcdet_rmae_ts.engine.logging_utils import log_to_files  # noqa: E402
from pcdet_rmae_ts.engine.run_lock import RunLockedError  # noqa: E402
from pcdet_rmae_ts.engine.trainer import TrainingInterrupted  # noqa: E402

USER_ERRORS = (ConfigError, BadSampleError, FileNotFoundError, CheckpointError, RunLockedError)


def fail(line: str, status: int) -> None:
    log_to_files(line)
    sys.stderr.write(line + "\n")
    sys.exit(status)


def main() -> None:
    show_traceback = os.environ.get("PCDET_RMAE_TS_TRACEBACK") == "1"
    try:
        run_pretraining()
    except USER_ERRORS as err:
        if show_traceback:
            raise
        fail(f"ERROR ({type(err).__name__}): {err}", 2)
    except TrainingInterrupted as err:
        fail(str(err), 130)
    except KeyboardInterrupt:
        fail("Interrupted (Ctrl-C) before training started; nothing to save.", 130)
    except Exception as err:  # noqa: BLE001 - unexpected: full traceback on the console, and in the log file
        log_to_files(f"FATAL ({type(err).__name__}): {err}\n{traceback.format_exc()}")
        raise


if __name__ == "__main__":
    main()
