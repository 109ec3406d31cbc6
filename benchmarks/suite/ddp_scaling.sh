#!/usr/bin/env bash
# 1 GPU vs 2 GPUs, alternated so drift on the machine shows, 60 timed steps each: results in $OUT.
source benchmarks/suite/gpu_env.sh
for round in 1 2; do
  run python benchmarks/bench_ddp.py --amp --data $D --steps 60 --out $OUT/scaling_single_$round.json
  run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 60 --out $OUT/scaling_x2_$round.json
done
