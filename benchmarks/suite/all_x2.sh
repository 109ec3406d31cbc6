#!/usr/bin/env bash
# What issue 6's note reports, on an nvidia-h100-x2 machine (one-GPU rows use its first GPU).
bash benchmarks/suite/ddp_scaling.sh
bash benchmarks/suite/pretrain.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
D=/tmp/pcdet_rmae_ts_bench
timeout 60 python benchmarks/bench_ddp.py --amp --data $D --steps 60 --out $OUT/expandable_single.json 2>&1 | grep '^{'
timeout 60 torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 60 --out $OUT/expandable_x2.json 2>&1 | grep '^{'
