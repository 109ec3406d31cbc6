#!/usr/bin/env bash
# Issue 6's 2-GPU scaling rounds and one-GPU table in one call on an nvidia-h100-x2 machine
# (the one-GPU rows use its first GPU).
bash benchmarks/suite/ddp_scaling.sh
bash benchmarks/suite/pretrain.sh
