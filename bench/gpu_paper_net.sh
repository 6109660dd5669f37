#!/usr/bin/env bash
# Issue 27's GPU run: the paper-class network (--net paper, the WAE/RAE conv net) for ours on MNIST and
# Fashion-MNIST side by side on one lent GPU, at the paper's protocol: each run scored by FID on 10,000
# samples of a K = 32 GMM on the training codes against the 10,000 test images, for its trained weights,
# their warmed-up moving average (--ema 0.999, ema.pt) and its best validation epoch (--keep-best, best.pt).
# The family's default 1000-step learning-rate warm-up applies (without it width 16 decoded the all-black
# image from its first epoch on the CPU; width 128 is not measured there).
#
#   bench/gpu_paper_net.sh --stash        (twice, once per carried half of the Inception file: bench/gpu_inception.sh)
#   bench/gpu_paper_net.sh OUT            (the records come back as OUT/paper-net.tgz, no weights)
#
# Carry .gpuA, .gpuB (the halves) and .gpuC/data/{mnist,fashion-mnist}/ (the IDX files of ../shared/data).
# Environment: COMMIT (the commit the tree was copied from, recorded as provenance), DATASETS
# ("mnist fashion-mnist"), EPOCHS (cap per stage, 100 as the RAE recipe), MAX_MINUTES (wall cap per stage,
# 3), GUARD (seconds for training + FID before the records are packed anyway, 520), N_FID (10000),
# DEVICE (cuda), TRAIN_ARGS (more `train` options). A CPU try of the script:
#   DEVICE=cpu GUARD=1500 N_FID=200 EPOCHS=1 MAX_MINUTES=1 DATASETS=mnist \
#     TRAIN_ARGS="--n-train 512 --n-test 200 --min-epochs 1" bash bench/gpu_paper_net.sh /tmp/pn
# A second call with the same OUT resumes unfinished runs and scores what is not scored yet.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/gpu_inception.sh"
gpu_inception_stash "$@"
OUT=${1:?usage: bench/gpu_paper_net.sh OUT | --stash}
mkdir -p "$OUT/paper-net/logs"
t0=$(date +%s)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
gpu_inception_setup
export BALANCED_VAE_DATA=${BALANCED_VAE_DATA:-$ROOT/.gpuC/data} BALANCED_VAE_GIT_COMMIT=${COMMIT:-unknown}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
DATASETS=${DATASETS:-mnist fashion-mnist} EPOCHS=${EPOCHS:-100} MAX_MINUTES=${MAX_MINUTES:-3}
N_FID=${N_FID:-10000} DEVICE=${DEVICE:-cuda} TRAIN_ARGS=${TRAIN_ARGS:-}
python3 - > "$OUT/paper-net/environment.json" <<PY
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "commit": "${COMMIT:-unknown}",
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "epochs": ${EPOCHS}, "max_minutes": ${MAX_MINUTES}, "n_fid": ${N_FID}, "fid": ${FID_OK},
                  "train_args": "${TRAIN_ARGS}"}))
PY
one() {  # one data set: train both stages, then FID of each set of weights it wrote
  local ds=$1 run="$OUT/paper-net/$1" log="$OUT/paper-net/logs/$1"
  if [ -f "$run/checkpoint.pt" ]; then  # a second call after the guard: go on where the first stopped
    [ -f "$run/final.json" ] || python3 -m balanced_vae.cli train --resume "$run" --device "$DEVICE" >> "$log-train.log" 2>&1
  else
    # shellcheck disable=SC2086
    python3 -m balanced_vae.cli train --dataset "$ds" --net paper --epochs "$EPOCHS" --max-minutes "$MAX_MINUTES" \
      --ema 0.999 --keep-best --device "$DEVICE" --out "$run" $TRAIN_ARGS > "$log-train.log" 2>&1
  fi
  [ "$FID_OK" = 1 ] && [ -f "$run/final.json" ] || return
  local ck res
  for ck in checkpoint.pt ema.pt best.pt; do
    res="$run/results_${ck%.pt}.json"; [ "$ck" = checkpoint.pt ] && res="$run/results.json"
    [ -f "$run/$ck" ] && [ ! -f "$res" ] && python3 -m balanced_vae.cli evaluate "$run" --checkpoint "$ck" \
      --metrics fid --sampler gmm --n-fid "$N_FID" --device "$DEVICE" --fid-cache "$OUT/fid-cache" >> "$log-fid.log" 2>&1
  done
}
export -f one; export OUT EPOCHS MAX_MINUTES N_FID DEVICE TRAIN_ARGS FID_OK
timeout --kill-after=10 "${GUARD:-520}" bash -c "for ds in $DATASETS; do one \$ds & done; wait"
echo "{\"exit\": $?, \"seconds\": $(( $(date +%s) - t0 ))}" > "$OUT/paper-net/timing.json"
pkill -f balanced_vae.cli 2> /dev/null; sleep 1
tar czf "$OUT/paper-net.tgz" -C "$OUT" --exclude='*.pt' --exclude='*.lock' --exclude='events.*' paper-net
for f in "$OUT"/paper-net/*/results*.json; do
  [ -f "$f" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d['checkpoint'], d['metrics']['fid']['values'])" "$f"
done
cat "$OUT/paper-net/timing.json"
