#!/usr/bin/env bash
# The GPU check's environment step: a venv at DIR that sees the packages of the interpreter that
# makes it (PYTHON, default the python3 on PATH), also when that interpreter is itself a venv.
#
#   tools/gpu_check_venv.sh DIR
#
# Why: `python3 -m venv --system-site-packages` from a venv (GPU images ship /opt/torch/.venv
# with numpy, torch, pip and NVIDIA's wheels as their python3) sees the BASE interpreter's
# packages, not that venv's, and install_caffe.sh stops at "numpy is not installed". So a .pth
# file in DIR adds the maker's own site-packages with site.addsitedir (which also reads their
# .pth files: editable installs, namespace packages). DIR's own site-packages stay first, for the
# bundle's wheels; --without-pip needs no ensurepip (python3-venv), which such images often lack.
set -euo pipefail
[ $# = 1 ] && [ -n "$1" ] || { echo "[gpu_check] error: expected one argument, the venv's folder" >&2; exit 2; }
DIR=$1 PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "[gpu_check] error: PYTHON=$PYTHON: no such interpreter" >&2; exit 2; }
[ -x "$DIR/bin/python" ] || "$PYTHON" -m venv --without-pip --system-site-packages "$DIR"
own=$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$PYTHON" - "$own/_gpu_check_maker.pth" <<'PY'
import site, sys
# One line per site-packages folder of the interpreter running this: `import` lines are executed
# by site.py, plain lines would add the folder without reading its .pth files.
lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
with open(sys.argv[1], "w") as f:
    f.write("\n".join(lines) + "\n")
PY
