#!/usr/bin/env bash
# A/B of DDP's per-forward buffer broadcast (torch's default) against the engine's setting (off),
# alternated, with one-GPU references before and after: runs added to $OUT/<benchmark>_<card>.json.
source benchmarks/suite/gpu_env.sh
run python benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/ --label single_1
for round in 1 2; do
  run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/ --label x2_engine_$round
  run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --steps 40 \
      --ddp-options '{"broadcast_buffers": true}' --out $OUT/ --label x2_broadcast_$round
done
run python benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/ --label single_2
