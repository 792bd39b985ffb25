#!/usr/bin/env bash
# Set up everything caffe-transfer needs on a Debian machine, idempotently:
# a virtual environment (.venv) with the package, then BVLC Caffe and pycaffe built for it
# by tools/install_caffe.sh (as root, through sudo when needed), and the demo's Fashion-MNIST
# package. A second run takes seconds.
#
#   VENV=.venv  PYTHON_BASE=python3  CAFFE_ROOT=/opt/caffe  EXTRAS=test  tools/setup.sh
# (EXTRAS: the package's extras to install with it; empty for none, as in the Docker image)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON_BASE=${PYTHON_BASE:-python3}
export CAFFE_ROOT=${CAFFE_ROOT:-/opt/caffe}
EXTRAS=${EXTRAS-test}
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
[[ $EXTRAS =~ ^[a-z,]*$ ]] || die "EXTRAS=$EXTRAS: expected extras such as test, or nothing"
[ ! -e "$VENV" ] || [ -d "$VENV" ] || die "VENV=$VENV: not a folder (expected the virtual environment's)"
command -v "$PYTHON_BASE" >/dev/null || die "PYTHON_BASE=$PYTHON_BASE: no such interpreter (expected e.g. python3)"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

if ! "$PYTHON_BASE" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "[setup] installing python3-venv" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-dev >/dev/null
fi
# The demo's data: Fashion-MNIST from Debian's package (30 MB), nothing downloaded at run time.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  echo "[setup] installing dataset-fashion-mnist (the demo's data)" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PYTHON_BASE" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# numpy first: pycaffe is compiled against this environment's numpy headers.
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip numpy
$SUDO env CAFFE_ROOT="$CAFFE_ROOT" PYTHON="$PY" bash tools/install_caffe.sh
"$PY" -m pip install -q --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
echo "[setup] done: $VENV/bin/caffe-transfer doctor" >&2
"$VENV/bin/caffe-transfer" doctor
