#!/usr/bin/env bash
# Issue 15's before/after table in one machine start, kit only (about 9 minutes on an H200): the GPU tests
# of the step's pieces; bench_pretrain at batch 8 with each row's kernel time, alternating this tree and
# BEFORE (a git worktree of it with this tree's benchmarks folder copied in: the same harness); then
# first_step's host and kernel split of the Phase 2 step. Every step writes $OUT/<step>.txt as it goes, so a
# call cut off at its limit still returns what finished. COMMIT names this tree in the labels (the device's
# copy of .git can be older than the files). Usage: BEFORE=82afa71 bash benchmarks/suite/issue15.sh
source benchmarks/suite/gpu_env.sh
B=${BEFORE:-82afa71}; C=${COMMIT:-$(git rev-parse --short HEAD)}; R=$PWD
stamp() { echo "[$(date +%T)] $*" | tee -a "$OUT/issue15.log"; }
git worktree add -f /tmp/before "$B" > /dev/null 2>&1 && cp benchmarks/*.py /tmp/before/benchmarks/
stamp "tree $C, before $B"
timeout 120 python -m pytest -q tests/test_cuda_syncs.py tests/test_encoder.py tests/test_losses.py tests/test_backbone.py \
    -k "golden or sync or align or mlfr or teacher or occupancy" > "$OUT/pytest_gpu.txt" 2>&1; stamp "GPU tests rc $?"
BP="benchmarks/bench_pretrain.py --batch-sizes 8 --rows baseline teacher_off ema phase2 --precisions fp32 amp
    --loader-workers 0 --data $D --device-steps 3"
for k in 1 2; do
  timeout 150 python $BP --label "b8_after${k}_$C" --out "$OUT/" > "$OUT/bench_after$k.txt" 2>&1; stamp "after $k rc $?"
  (cd /tmp/before && PYTHONPATH=$R/.gpu-site:/tmp/before timeout 150 python $BP --label "b8_before${k}_$B" \
      --out "$OUT/" > "$OUT/bench_before$k.txt" 2>&1); stamp "before $k rc $?"
done
timeout 100 python benchmarks/first_step.py --model phase2 --rows amp default --timeout 45 --label "phase2_$C" \
    --out "$OUT/" > "$OUT/first_step_phase2.txt" 2>&1; stamp "first_step rc $?"
