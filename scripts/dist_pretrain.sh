#!/usr/bin/env bash
# Multi-GPU pretraining with torchrun (DDP): scripts/dist_pretrain.sh NUM_GPUS --cfg_file ... [args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/dist_pretrain.sh 8 --cfg_file ...
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/scripts/torchrun_launch.sh" "$ROOT/tools/train_rmae_cmae_phase1.py" "$@"
