#!/usr/bin/env bash
# One GPU: plain python vs torchrun --nproc_per_node 1 (DDP of one) vs plain python with set_device.
source benchmarks/suite/gpu_env.sh
for round in 1 2; do
  run python benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/ --label python_$round
  run torchrun --nproc_per_node 1 benchmarks/bench_ddp.py --amp --data $D --steps 40 --out $OUT/ --label torchrun1_$round
  run python benchmarks/bench_ddp.py --amp --data $D --steps 40 --set-device --out $OUT/ --label python_setdev_$round
done
