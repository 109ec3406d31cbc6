#!/usr/bin/env bash
# The README's "From your scans to a detector" flow, command for command, on generated data at the
# user's grid (±70.4 m, 0.1 x 0.1 x 0.2 m, x/y/z points as the shipped ISARC configs expect):
#   generate -> create_infos -> pretrain -> check_config -> dist_train.sh -> dist_test.sh -> pictures
# It assumes OpenPCDet is installed or its tools/ folder is in $PCDET_TOOLS (as the launchers find it);
# it never builds OpenPCDet. Each step's wall time goes to $LOG_DIR/flow_steps.tsv as it finishes, and
# everything it prints to $LOG_DIR/flow_log.txt.
#   bash benchmarks/e2e/run_flow.sh            (env: FRAMES, PRE_EPOCHS, FT_EPOCHS, DATA, LOG_DIR, NGPUS)
set -euo pipefail
cd "$(dirname "$0")/../.."
FRAMES=${FRAMES:-160}
PRE_EPOCHS=${PRE_EPOCHS:-2}
FT_EPOCHS=${FT_EPOCHS:-2}
NGPUS=${NGPUS:-1}
DATA=${DATA:-$PWD/data/flow}
LOG_DIR=${LOG_DIR:-$PWD/output/e2e}
TAG=flow
PRE_CFG=cfgs/custom_models/rmae_cmae_isarc_4class_pretraining_phase1.yaml
FT_CFG=cfgs/custom_models/rmae_cmae_isarc_4class_finetune_phase1.yaml
PCDET_ROOT=$(python -c 'import os, pcdet; print(os.path.dirname(os.path.dirname(pcdet.__file__)))' 2>/dev/null \
    || dirname "${PCDET_TOOLS:?set PCDET_TOOLS=/path/to/OpenPCDet/tools or install pcdet}")
PRE_CKPT=output/custom_models/rmae_cmae_isarc_4class_pretraining_phase1/$TAG/ckpt/checkpoint_epoch_$PRE_EPOCHS.pth
FT_DIR=$PCDET_ROOT/output/custom_models/rmae_cmae_isarc_4class_finetune_phase1/$TAG
mkdir -p "$LOG_DIR"
printf 'step\tseconds\tstatus\n' > "$LOG_DIR/flow_steps.tsv"

step() {  # step NAME COMMAND...: run, log, time; stop the flow on failure
    local name=$1; shift
    echo "=== $name: $*" | tee -a "$LOG_DIR/flow_log.txt"
    local t0=$SECONDS status=0
    "$@" 2>&1 | tee -a "$LOG_DIR/flow_log.txt" || status=$?
    printf '%s\t%d\t%s\n' "$name" $((SECONDS - t0)) "$status" | tee -a "$LOG_DIR/flow_steps.tsv"
    [ "$status" -eq 0 ] || exit "$status"
}

step generate python -m pcdet_rmae_ts.data.synthetic --out "$DATA" --frames "$FRAMES" --profile dense \
    --cfg_file "$FT_CFG"
step create_infos python tools/create_infos.py --cfg_file "$FT_CFG" --set DATA_CONFIG.DATA_PATH "$DATA"
step pretrain python tools/train_rmae_cmae_phase1.py --cfg_file "$PRE_CFG" --batch_size 8 \
    --epochs "$PRE_EPOCHS" --extra_tag "$TAG" --set DATA_CONFIG.DATA_PATH "$DATA"
step check_config python tools/check_config.py "$FT_CFG"
step dist_train bash scripts/dist_train.sh "$NGPUS" --cfg_file "$FT_CFG" --pretrained_model "$PRE_CKPT" \
    --batch_size 4 --epochs "$FT_EPOCHS" --extra_tag "$TAG" --set DATA_CONFIG.DATA_PATH "$DATA"
step dist_test bash scripts/dist_test.sh "$NGPUS" --cfg_file "$FT_CFG" --batch_size 4 --extra_tag "$TAG" \
    --ckpt "$FT_DIR/ckpt/checkpoint_epoch_$FT_EPOCHS.pth" --set DATA_CONFIG.DATA_PATH "$DATA"
step pictures python tools/visualize_pretraining.py --cfg_file "$PRE_CFG" --ckpt "$PRE_CKPT" \
    --frame 0 --out "$LOG_DIR/pictures" --set DATA_CONFIG.DATA_PATH "$DATA"
cp "$FT_DIR"/log_train_*.txt "$LOG_DIR/" 2>/dev/null || true
find "$FT_DIR/eval" -name result_custom.json -exec cp {} "$LOG_DIR/" \; 2>/dev/null || true
echo "flow done: $LOG_DIR/flow_steps.tsv" | tee -a "$LOG_DIR/flow_log.txt"
