#!/usr/bin/env bash
# The project's test command: set up (idempotent, seconds once done), then run the test suite
# with real Caffe. Extra arguments go to pytest, e.g. tools/run_tests.sh -k treatments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh >&2
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
