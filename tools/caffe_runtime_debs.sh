#!/usr/bin/env bash
# Print the Debian packages whose shared libraries the Caffe build in CAFFE_ROOT loads (caffe, its
# tools, libcaffe, pycaffe), one per line: what the Docker image's runtime stage installs in place
# of the build dependencies (compiler, headers, -dev packages). Libraries that no package owns
# (CUDA and cuDNN from NVIDIA's wheels, Caffe's own) are named on stderr; an unresolved one stops it.
#
#   tools/caffe_runtime_debs.sh [CAFFE_ROOT]
set -euo pipefail
ROOT=${1:-${CAFFE_ROOT:-/opt/caffe}}
die() { printf '[runtime_debs] error: %s\n' "$*" >&2; exit 1; }
[ -x "$ROOT/bin/caffe" ] || die "$ROOT: no bin/caffe there (expected a Caffe built by tools/install_caffe.sh)"
mapfile -t objects < <(find "$ROOT/bin" "$ROOT/lib" -type f \( -name '*.so*' -o -perm -u+x \) ! -name '*.py')
links=$(for f in "${objects[@]}"; do ldd "$f" 2>/dev/null || true; done)
missing=$(awk '$2 == "=>" && $3 == "not" {print $1}' <<<"$links" | sort -u | paste -sd' ')
[ -z "$missing" ] || die "$ROOT's binaries load libraries that are not found: $missing"
awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$links" | sort -u | while read -r lib; do
  real=$(readlink -f "$lib")
  # usrmerge: dpkg may record a library under /lib or /usr/lib; the real file for an alternative.
  owner=$(dpkg -S "$lib" "${lib#/usr}" "/usr${lib#/usr}" "$real" 2>/dev/null | head -n1 | cut -d: -f1) || true
  if [ -n "$owner" ]; then echo "$owner"; else echo "[runtime_debs] not from a package: $real" >&2; fi
done | sort -u
