#!/usr/bin/env bash
# The Docker image's entry point. `gpu-check` runs the GPU check on the Caffe built into the image
# (tools/gpu_check.sh --installed): the card's rates, for `plan --rates`, before the grid is
# planned, written to /out (mount a folder there to keep them). Anything else is a caffe-transfer
# command.
#   docker run --gpus all -v "$PWD/gpu:/out" caffe-transfer:cuda gpu-check
#   docker run caffe-transfer:cuda doctor
set -euo pipefail
if [ "${1:-}" = gpu-check ]; then
  shift
  case " $* " in
    *" --out "*) ;;
    *) if command -v nvidia-smi >/dev/null && ! mountpoint -q /out 2>/dev/null; then
         echo "[gpu_check] note: no folder is mounted at /out, so gpu_check.json goes with the container" \
              "(docker run -v \"\$PWD/gpu:/out\" ...)" >&2
       fi ;;
  esac
  exec "$(dirname "$0")/gpu_check.sh" --installed --out /out "$@"
fi
exec caffe-transfer "$@"
