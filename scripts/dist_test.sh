#!/usr/bin/env bash
# Distributed OpenPCDet test.py with the pcdet_rmae_ts plugin, via torchrun (works for 1 GPU too):
#   bash scripts/dist_test.sh NUM_GPUS --cfg_file cfgs/custom_models/... [OpenPCDet test.py args]
# See dist_train.sh; tools/test.py hands torchrun's LOCAL_RANK to test.py as --local_rank.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/scripts/torchrun_launch.sh" "$ROOT/tools/test.py" "$@"
