#!/usr/bin/env bash
# A/B of DDP's per-forward buffer broadcast (torch's default) against the engine's setting (off),
# alternated, with one-GPU references before and after: results in $OUT.
source benchmarks/suite/gpu_env.sh
run python benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/single_1.json
for round in 1 2; do
  run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/x2_engine_$round.json
  run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 40 \
      --ddp-options '{"broadcast_buffers": true}' --out $OUT/x2_broadcast_$round.json
done
run python benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/single_2.json
