#!/usr/bin/env bash
# The GPU acceptance in one command, for a fresh GPU machine with no network (at most 8 minutes):
# builds Caffe from an offline bundle for the visible card's architecture (with cuDNN where
# found), then tools/gpu_check.py measures and checks and writes OUT/gpu_check.json.
#
#   tools/gpu_check.sh --bundle DIR --out DIR [--dry-run]
#
# The bundle comes from `tools/install_caffe.sh --bundle DIR` (with BUNDLE_PYTHON set to the GPU
# machine's Python version). --dry-run is every step that needs no GPU, on this CPU machine: it
# writes the bundle if DIR has none, checks it, prints the build command a GPU machine runs,
# and runs gpu_check.py with the small net on the Caffe already built (CAFFE_ROOT, PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf '[gpu_check] error: %s\n' "$*" >&2; exit 1; }
BUNDLE="" OUT="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) die "unknown argument $1: expected --bundle DIR --out DIR [--dry-run]" ;;
  esac
done
[ -n "$BUNDLE" ] && [ -n "$OUT" ] || die "expected --bundle DIR --out DIR [--dry-run]"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  [ -f "$BUNDLE/SHA256SUMS" ] || PYTHON="$PY" bash tools/install_caffe.sh --bundle "$BUNDLE"
  (cd "$BUNDLE" && sha256sum -c --quiet SHA256SUMS) || die "bundle $BUNDLE does not match its SHA256SUMS"
  echo "[gpu_check] dry run: a GPU machine builds with" \
       "CAFFE_ROOT=$OUT/caffe CAFFE_CUDA=1 CUDA_ARCH_BIN=<its compute capability> PYTHON=$OUT/venv/bin/python" \
       "tools/install_caffe.sh --from $BUNDLE; here the CPU build in ${CAFFE_ROOT:-/opt/caffe} is used" >&2
  exec env PYTHONPATH="$PWD" "$PY" tools/gpu_check.py --out "$OUT" --dry-run
fi

command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not a GPU machine (use --dry-run)"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
command -v nvcc >/dev/null || die "no nvcc on PATH or in /usr/local/cuda/bin"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' .')
[ -n "$ARCH" ] || die "nvidia-smi reports no compute capability"
# The machine's own packages (numpy, torch, NVIDIA's CUDA wheels, pip) plus the bundle's wheels;
# --without-pip needs no ensurepip (python3-venv), which such machines often lack.
[ -x "$OUT/venv/bin/python" ] || python3 -m venv --without-pip --system-site-packages "$OUT/venv"
PY=$OUT/venv/bin/python
export CAFFE_ROOT=$OUT/caffe
started=$(date +%s)
CAFFE_CUDA=1 CUDA_ARCH_BIN=$ARCH PYTHON=$PY bash tools/install_caffe.sh --from "$BUNDLE" 2>&1 | tee "$OUT/build.log"
built=$(( $(date +%s) - started ))
PYTHONPATH="$PWD" "$PY" tools/gpu_check.py --out "$OUT" --build-seconds "$built"
