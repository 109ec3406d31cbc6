#!/usr/bin/env bash
# Multi-GPU pretraining with torchrun (DDP): scripts/dist_pretrain.sh NUM_GPUS --cfg_file ... [args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/dist_pretrain.sh 8 --cfg_file ...
set -euo pipefail
NGPUS=${1:?usage: scripts/dist_pretrain.sh NUM_GPUS --cfg_file CFG [args]}
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
exec torchrun --nproc_per_node="$NGPUS" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    "$ROOT/tools/train_rmae_cmae_phase1.py" --launcher pytorch "$@"
