#!/usr/bin/env bash
# The GPU acceptance in one command, for a fresh GPU machine with no network (at most 8 minutes):
# builds Caffe from an offline bundle for the visible card's architecture (with cuDNN where
# found), then tools/gpu_check.py measures and checks and writes OUT/gpu_check.json (the rates
# `plan --rates` reads) and OUT/report.json.
#
#   tools/gpu_check.sh --bundle DIR --out DIR [--dry-run]
#   tools/gpu_check.sh --installed --out DIR
#
# --installed measures the CUDA Caffe already built in CAFFE_ROOT (default /opt/caffe) with PYTHON
# (default the python3 on PATH), building nothing: the Docker image's `gpu-check` command. It
# stops on one line where no GPU is visible, the build is CPU-only or it has no code for the card.
# The bundle comes from `tools/install_caffe.sh --bundle DIR` (with BUNDLE_PYTHON set to the GPU
# machine's Python version). --dry-run is every step that needs no GPU, on this CPU machine: it
# writes the bundle if DIR has none, checks it, prints the build command a GPU machine runs,
# makes the check's venv from PYTHON (default .venv/bin/python) as a GPU machine makes it from
# python3, and runs gpu_check.py with the small net on the Caffe already built (CAFFE_ROOT).
# Usage errors exit 2.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf '[gpu_check] error: %s\n' "$*" >&2; exit 1; }
usage() { printf '[gpu_check] error: %s: expected --bundle DIR --out DIR [--dry-run], or --installed --out DIR\n' "$*" >&2; exit 2; }
BUNDLE="" OUT="" DRY=0 INSTALLED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle|--out)
      [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || usage "$1 needs a folder"
      if [ "$1" = --bundle ]; then BUNDLE=$2; else OUT=$2; fi
      shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --installed) INSTALLED=1; shift ;;
    *) usage "unknown argument $1" ;;
  esac
done
if [ "$INSTALLED" = 1 ]; then
  [ -z "$BUNDLE" ] || usage "--installed builds nothing: it takes no --bundle"
  [ "$DRY" = 0 ] || usage "--installed measures a GPU: it takes no --dry-run"
else
  [ -n "$BUNDLE" ] || usage "no --bundle (or --installed)"
fi
[ -n "$OUT" ] || usage "no --out"
# Refused before anything is written: a machine without a GPU, without --dry-run.
if [ "$DRY" = 0 ]; then
  command -v nvidia-smi >/dev/null \
    || die "no GPU visible (no nvidia-smi): run this on a GPU machine; in Docker, docker run --gpus all (NVIDIA's container toolkit)"
  nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi sees no GPU: $(nvidia-smi -L 2>&1 | head -n1)"
fi
mkdir -p "$OUT" || die "--out $OUT: cannot make that folder"
[ -w "$OUT" ] || die "--out $OUT: not writable"
OUT=$(cd "$OUT" && pwd)

if [ "$INSTALLED" = 1 ]; then
  PY=${PYTHON:-python3}
  command -v "$PY" >/dev/null || die "PYTHON=$PY: no such interpreter"
  exec env PYTHONPATH="$PWD" "$PY" tools/gpu_check.py --out "$OUT"
fi

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  [ -f "$BUNDLE/SHA256SUMS" ] || PYTHON="$PY" bash tools/install_caffe.sh --bundle "$BUNDLE"
  (cd "$BUNDLE" && sha256sum -c --quiet SHA256SUMS) || die "bundle $BUNDLE does not match its SHA256SUMS"
  echo "[gpu_check] dry run: a GPU machine builds with" \
       "CAFFE_ROOT=$OUT/caffe CAFFE_CUDA=1 CUDA_ARCH_BIN=<its compute capability> PYTHON=$OUT/venv/bin/python" \
       "tools/install_caffe.sh --from $BUNDLE; here the CPU build in ${CAFFE_ROOT:-/opt/caffe} is used" >&2
  PYTHON="$PY" bash tools/gpu_check_venv.sh "$OUT/venv"
  exec env PYTHONPATH="$PWD" "$OUT/venv/bin/python" tools/gpu_check.py --out "$OUT" --dry-run
fi

command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
command -v nvcc >/dev/null || die "no nvcc on PATH or in /usr/local/cuda/bin"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' .')
[ -n "$ARCH" ] || die "nvidia-smi reports no compute capability"
# The machine's own packages (numpy, torch, NVIDIA's CUDA wheels, pip), also where its python3 is
# itself a venv, plus the bundle's wheels.
bash tools/gpu_check_venv.sh "$OUT/venv"
PY=$OUT/venv/bin/python
export CAFFE_ROOT=$OUT/caffe
started=$(date +%s)
CAFFE_CUDA=1 CUDA_ARCH_BIN=$ARCH PYTHON=$PY bash tools/install_caffe.sh --from "$BUNDLE" 2>&1 | tee "$OUT/build.log"
built=$(( $(date +%s) - started ))
PYTHONPATH="$PWD" "$PY" tools/gpu_check.py --out "$OUT" --build-seconds "$built"
