#!/usr/bin/env bash
# DDP scaling of the EMA-teacher step and its diagnostics (needs 2 GPUs): runs added to $OUT/<benchmark>_<card>.json.
source benchmarks/suite/gpu_env.sh
run python benchmarks/bench_ddp.py --amp --data $D --out $OUT/ --label ddp_single
run torchrun --nproc_per_node 1 benchmarks/bench_ddp.py --amp --data $D --out $OUT/ --label ddp_torchrun1
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --out $OUT/ --label ddp_x2
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --independent --out $OUT/ --label ddp_x2_independent
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --same-data --out $OUT/ --label ddp_x2_same_data
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --ddp-options '{"gradient_as_bucket_view": true}' --out $OUT/ --label ddp_x2_bucket_view
run torchrun --nproc_per_node 2 benchmarks/bench_ddp.py --amp --data $D --profile $OUT/profile_ddp_x2 --out $OUT/ --label ddp_x2_profiled
