#!/usr/bin/env bash
# Distributed OpenPCDet train.py with the pcdet_rmae_ts plugin, via torchrun (works for 1 GPU too):
#   bash scripts/dist_train.sh NUM_GPUS --cfg_file cfgs/custom_models/... [OpenPCDet train.py args]
# Unlike OpenPCDet's own dist_train.sh (torch.distributed.launch, which passes --local-rank and breaks
# on torch >= 2.0), torchrun sets LOCAL_RANK; tools/train.py hands it to train.py as --local_rank, which
# the VoxelNeXt fork also needs. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT).
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/scripts/torchrun_launch.sh" "$ROOT/tools/train.py" "$@"
