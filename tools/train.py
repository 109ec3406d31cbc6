"""Run OpenPCDet's own tools/train.py with the pcdet_rmae_ts plugin registered.

    python tools/train.py --cfg_file cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml [flags]

Extra flags (removed before OpenPCDet sees the arguments): --pcdet_tools DIR (OpenPCDet's tools/
folder; else $PCDET_TOOLS, else next to an editable pcdet install), --skip_preflight (do not stop on
config pre-flight errors), --chdir_tools (run inside OpenPCDet's tools/ as its own scripts expect;
by default relative paths resolve from the current directory), --seed N (seed torch/numpy/random
before OpenPCDet starts; its --fix_random_seed always uses 666).
The train launcher also makes
OPTIMIZATION.DIFFERENTIAL_LR work (per-group LRs in the log and as train/lr_<group> in tensorboard).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    from pcdet_rmae_ts.integration.pcdet import launcher_main

    sys.exit(launcher_main("train.py"))
