#!/usr/bin/env bash
# The GPU grid of bench/ablation.sh (widths 32 and 64, both data sets, side by side on one GPU):
#   bench/gpu_ablation.sh OUT
DEVICE=cuda exec "$(dirname "$0")/ablation.sh" "$@"
