#!/usr/bin/env bash
# 1 GPU vs 2 GPUs, alternated so drift on the machine shows, 60 timed steps each: runs added to $OUT/<benchmark>_<card>.json.
source benchmarks/suite/gpu_env.sh
for round in 1 2; do
  run python benchmarks/bench_ddp.py --amp --data $D --steps 60 --out $OUT/ --label scaling_single_$round
  run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 60 --out $OUT/ --label scaling_x2_$round
done
