#!/usr/bin/env bash
# DDP scaling of the EMA-teacher step and its diagnostics (needs 2 GPUs): results in $OUT.
source benchmarks/suite/gpu_env.sh
run python benchmarks/bench_ddp.py --amp --data $D --out $OUT/ddp_single.json
run torchrun --nproc_per_node 1 benchmarks/bench_ddp.py --amp --data $D --out $OUT/ddp_torchrun1.json
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --out $OUT/ddp_x2.json
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --independent --out $OUT/ddp_x2_independent.json
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --same-data --out $OUT/ddp_x2_same_data.json
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --ddp-options '{"gradient_as_bucket_view": true}' --out $OUT/ddp_x2_bucket_view.json
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --profile $OUT/profile_ddp_x2 --out $OUT/ddp_x2_profiled.json
