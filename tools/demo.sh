#!/usr/bin/env bash
# The demo in one command on a fresh Debian machine: set up what is missing (Caffe, the package,
# Fashion-MNIST; seconds once done), then run the scaled-down reproduction.
# Arguments go to `caffe-transfer demo`, e.g. tools/demo.sh --preset quick --out demo-quick.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh >&2
exec "${VENV:-.venv}/bin/caffe-transfer" demo "$@"
