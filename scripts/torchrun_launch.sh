#!/usr/bin/env bash
# Shared by dist_pretrain.sh / dist_train.sh / dist_test.sh:
#   torchrun_launch.sh SCRIPT NUM_GPUS [args...]  runs SCRIPT --launcher pytorch [args...] on NUM_GPUS
# processes per node with torchrun (python -m torch.distributed.run), which sets LOCAL_RANK (torch >= 2.0
# launchers pass no --local_rank). Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT)
# on every node. PYTHON selects the interpreter (default: python).
set -euo pipefail
SCRIPT=${1:?usage: torchrun_launch.sh SCRIPT NUM_GPUS [args]}
NGPUS=${2:?usage: $(basename "$SCRIPT" .py) launcher: NUM_GPUS --cfg_file CFG [args]}
shift 2
PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NGPUS" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$SCRIPT" --launcher pytorch "$@"
