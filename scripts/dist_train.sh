#!/usr/bin/env bash
# Distributed OpenPCDet train.py with the pcdet_rmae_ts plugin, via torchrun (works for 1 GPU too):
#   bash scripts/dist_train.sh NUM_GPUS --cfg_file cfgs/custom_models/... [OpenPCDet train.py args]
# Unlike OpenPCDet's own dist_train.sh (torch.distributed.launch, which passes --local-rank and breaks
# on torch >= 2.0), torchrun sets LOCAL_RANK; tools/train.py hands it to train.py as --local_rank, which
# the VoxelNeXt fork also needs. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT).
set -euo pipefail
NGPUS=${1:?usage: scripts/dist_train.sh NUM_GPUS --cfg_file CFG [args]}
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NGPUS" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    "$ROOT/tools/train.py" --launcher pytorch "$@"
