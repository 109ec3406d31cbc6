#!/usr/bin/env bash
# One-GPU table at batch 8 (baseline / teacher off / EMA every step, fp32 and AMP), masking share,
# loader with 4 and 8 workers, an EMA-step profile: runs added to $OUT/<benchmark>_<card>.json.
source benchmarks/suite/gpu_env.sh
timeout 420 python benchmarks/bench_pretrain.py --data /tmp/pcdet_rmae_ts_bench --batch-sizes 8 \
    --rows baseline teacher_off ema --loader-workers 4 8 --profile $OUT/profiles/ \
    --out $OUT/ --label pretrain_b8 2>&1 | grep -vE ' INFO |Warning|warn' | tail -25
