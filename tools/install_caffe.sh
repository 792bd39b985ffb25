#!/usr/bin/env bash
# Build BVLC Caffe (Debian's patched source package 1.0.0+git20180821.99bd997) into one prefix.
#
# Why Debian's source package: it is the last maintained BVLC Caffe, with fixes for current
# compilers and Python 3; with Debian 12's libraries it needs only the protobuf 3.21 fix below.
# The source comes through apt's source packages from the suite that still carries it, using the
# mirror already in this machine's apt sources, and is checked against pinned .dsc checksums.
#
# Idempotent and cached: a second run with the same settings checks a stamp and exits in seconds.
#
#   tools/install_caffe.sh               build, fetching what is missing (apt, the source package)
#   tools/install_caffe.sh --bundle DIR  write everything a build needs beyond CUDA, a compiler and
#                                        CMake into DIR (under 60 MiB; tools/caffe_bundle.sh)
#   tools/install_caffe.sh --from DIR    build from such a bundle, with no network and no apt
#
# Settings (environment):
#   CAFFE_ROOT   install prefix (default /opt/caffe); caffe-transfer looks there by default
#   PYTHON       interpreter pycaffe is built for (default python3); it needs numpy installed
#   CAFFE_CUDA   auto (default): CUDA when nvcc exists and nvidia-smi sees a GPU; 1: force CUDA
#                (e.g. in a Docker build, where no GPU is visible); 0: CPU only
#   CAFFE_CUDNN  for a CUDA build: auto (default): cuDNN when its headers and library are found;
#                1: require it; 0: Caffe's own GPU code only. Found through CUDNN_ROOT (include/,
#                lib/), the CUDA toolkit, the system, or NVIDIA's nvidia-cudnn-cu* wheel in PYTHON's
#                environment (cuBLAS and cuRAND likewise from nvidia-cublas/-curand wheels when
#                the toolkit has none)
#   CUDA_ARCH_BIN  CUDA architectures to build native code for (default "60 70 75 80 86 89 90")
#   CUDA_ARCH_PTX  architectures to also embed PTX for (default none): cards newer than every
#                CUDA_ARCH_BIN compile it when Caffe loads (the Docker image: "90")
#   JOBS         parallel build jobs (default: number of cores)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

CAFFE_ROOT=${CAFFE_ROOT:-/opt/caffe}
PYTHON=${PYTHON:-python3}
CAFFE_CUDA=${CAFFE_CUDA:-auto}
CAFFE_CUDNN=${CAFFE_CUDNN:-auto}
CUDA_ARCH_BIN=${CUDA_ARCH_BIN:-60 70 75 80 86 89 90}
CUDA_ARCH_PTX=${CUDA_ARCH_PTX:-}
JOBS=${JOBS:-$(nproc)}

SRC_PACKAGE=caffe
SRC_VERSION=1.0.0+git20180821.99bd997-8
SRC_SUITE=bullseye
DSC_FILE=caffe_${SRC_VERSION}.dsc
DSC_SHA256=c492f4893fc1ba1fb514b2d9b4763bc78dc93571ea24adc6e604eccbb93cdd64

BUILD_DEPS=(build-essential cmake dpkg-dev libprotobuf-dev libprotoc-dev protobuf-compiler
  libgoogle-glog-dev libgflags-dev libboost-filesystem-dev libboost-system-dev
  libboost-thread-dev libboost-python-dev libhdf5-dev liblmdb-dev libopenblas-dev
  libopencv-dev libsnappy-dev)

# The Debian archive URI this machine's apt already uses (deb822 .sources first, then one-line lists).
find_mirror() {
  { awk '/^URIs:/{for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
    awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
  } | grep -v -e security -e updates | head -n1 || true
}

log() { printf '[install_caffe] %s\n' "$*" >&2; }
die() { printf '[install_caffe] error: %s\n' "$*" >&2; exit 1; }

# Settings a bad value of which would fail only minutes into a build: checked before anything.
case "$JOBS" in ''|*[!0-9]*|0*) die "JOBS=$JOBS: expected a positive number of build jobs" ;; esac
for arch in $CUDA_ARCH_BIN; do
  [[ $arch =~ ^[0-9]{2,3}[a-z]?$ ]] \
    || die "CUDA_ARCH_BIN=\"$CUDA_ARCH_BIN\": $arch is not a compute capability (expected e.g. \"80 90\")"
done
for arch in $CUDA_ARCH_PTX; do
  [[ $arch =~ ^[0-9]{2,3}$ ]] \
    || die "CUDA_ARCH_PTX=\"$CUDA_ARCH_PTX\": $arch is not a compute capability (expected e.g. \"90\", or empty)"
done
[ -z "${CUDNN_ROOT:-}" ] || [ -d "$CUDNN_ROOT" ] \
  || die "CUDNN_ROOT=$CUDNN_ROOT: no such folder (expected cuDNN's prefix, with include/ and lib/)"

BUNDLE="" FROM=""
case "${1:-}" in
  --bundle) BUNDLE=${2:-} ; [ -n "$BUNDLE" ] || die "--bundle needs a folder" ;;
  --from) FROM=${2:-} ; [ -d "$FROM" ] || die "--from ${2:-}: expected the folder a --bundle run wrote" ;;
  "") ;;
  *) die "unknown argument $1: expected --bundle DIR or --from DIR" ;;
esac
[ $# -le 2 ] || die "unexpected argument ${3}: expected --bundle DIR or --from DIR"
# shellcheck source=tools/caffe_bundle.sh
. "$HERE/caffe_bundle.sh"

# The source package files in CACHE, fetched where missing and checked against the pinned .dsc.
fetch_source() {
  local CACHE=$1
  mkdir -p "$CACHE"
  if ! echo "$DSC_SHA256  $CACHE/$DSC_FILE" | sha256sum -c --status 2>/dev/null; then
    [ -z "$FROM" ] || die "--from $FROM: source/$DSC_FILE is missing or not the pinned one"
    # A temporary deb-src entry for the suite that carries the package, built from the mirror URI
    # this machine already uses, in a private apt state so the system's sources stay untouched.
    uri=$(find_mirror)
    [ -n "$uri" ] || die "no Debian mirror URI found in /etc/apt/sources.list{,.d}"
    apt_dir=$(mktemp -d)
    trap 'rm -rf "$apt_dir"' EXIT
    mkdir -p "$apt_dir/lists/partial"
    cat > "$apt_dir/src.sources" <<SRC
Types: deb-src
URIs: $uri
Suites: $SRC_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/src.sources" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$apt_dir/lists" -o APT::Sandbox::User=root)
    log "fetching source package $SRC_PACKAGE $SRC_VERSION ($SRC_SUITE)"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$CACHE" && apt-get "${apt_opts[@]}" source --download-only -qq "$SRC_PACKAGE=$SRC_VERSION" >/dev/null)
    echo "$DSC_SHA256  $CACHE/$DSC_FILE" | sha256sum -c --status || die "$DSC_FILE does not match its pinned sha256"
  fi
  # Every file the .dsc names must match the .dsc's sha256.
  awk '/^Checksums-Sha256:/{f=1; next} /^[^ ]/{f=0} f{print $1 "  " $3}' "$CACHE/$DSC_FILE" \
    | (cd "$CACHE" && sha256sum -c --quiet) || die "source files do not match $DSC_FILE"
  log "source package verified against $DSC_FILE"
}

# The Debian build dependencies, installed with apt-get where missing.
install_build_deps() {
  local missing=() p
  for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: run this script as root (it uses apt-get)"
    log "installing ${#missing[@]} build dependencies with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: no such interpreter"
# shellcheck source=tools/caffe_cuda.sh
. "$HERE/caffe_cuda.sh"
# NVIDIA's nvcc wheel (nvidia-cuda-nvcc) in PYTHON's environment serves when no nvcc is on PATH.
if ! command -v nvcc >/dev/null && [ "$CAFFE_CUDA" != 0 ]; then
  cu13=$(wheel_dir cu13)
  [ ! -x "$cu13/bin/nvcc" ] || PATH=$cu13/bin:$PATH
fi
case "$CAFFE_CUDA" in
  auto) if command -v nvcc >/dev/null && nvidia-smi -L >/dev/null 2>&1; then CUDA=1; else CUDA=0; fi ;;
  0|1) CUDA=$CAFFE_CUDA ;;
  *) die "CAFFE_CUDA=$CAFFE_CUDA: expected auto, 0 or 1" ;;
esac
case "$CAFFE_CUDNN" in auto|0|1) ;; *) die "CAFFE_CUDNN=$CAFFE_CUDNN: expected auto, 0 or 1" ;; esac
[ "$CUDA" = 0 ] || command -v nvcc >/dev/null || die "CAFFE_CUDA=1 but nvcc is not on PATH"
if [ "$CUDA" = 1 ]; then
  # Each CUDA drops old GPUs (13.0 builds nothing below sm_75): keep the architectures this nvcc
  # has, and say which are left out.
  supported=" $(nvcc --list-gpu-arch 2>/dev/null | sed -n 's/^compute_//p' | tr '\n' ' ') "
  if [ "$supported" != "  " ]; then
    keep=() drop=()
    for arch in $CUDA_ARCH_BIN; do
      case "$supported" in *" ${arch%[a-z]} "*) keep+=("$arch") ;; *) drop+=("$arch") ;; esac
    done
    [ ${#keep[@]} -gt 0 ] || die "CUDA_ARCH_BIN=\"$CUDA_ARCH_BIN\": this nvcc builds none of them (it has:$supported)"
    [ ${#drop[@]} = 0 ] || log "this nvcc cannot build for ${drop[*]}: left out of CUDA_ARCH_BIN"
    CUDA_ARCH_BIN="${keep[*]}"
    for arch in $CUDA_ARCH_PTX; do
      case "$supported" in *" $arch "*) ;; *) die "CUDA_ARCH_PTX=\"$CUDA_ARCH_PTX\": this nvcc has no compute_$arch (it has:$supported)" ;; esac
    done
  fi
fi

read -r PY_EXE PY_VER PY_INC PY_LIB NUMPY_VER < <("$PYTHON" - <<'PY'
import os, sys, sysconfig
try:
    import numpy
except ImportError:
    sys.exit("[install_caffe] error: numpy is not installed for %s; pip install numpy first" % sys.executable)
libdir = sysconfig.get_config_var("LIBDIR") or ""
lib = os.path.join(libdir, sysconfig.get_config_var("LDLIBRARY") or "")
# Not realpath: a venv's python resolves to the base interpreter, which lacks the venv's numpy.
print(os.path.abspath(sys.executable), "%d.%d" % sys.version_info[:2],
      sysconfig.get_paths()["include"], lib, numpy.__version__)
PY
)
if [ -n "$BUNDLE" ]; then
  install_build_deps
  write_bundle "$BUNDLE"
  exit 0
fi

# --- CUDA libraries and cuDNN (tools/caffe_cuda.sh) ---------------------------------------
cuda_args=() CUDNN_VERSION="" CUDNN_HEADER=""
[ "$CUDA" = 0 ] || find_cuda_libraries

PTX=${CUDA_ARCH_PTX:+,ptx${CUDA_ARCH_PTX// /,ptx}}
MODE=$([ "$CUDA" = 1 ] && echo "cuda:${CUDA_ARCH_BIN// /,}$PTX${CUDNN_VERSION:++cudnn$CUDNN_VERSION}" || echo cpu)
SCRIPT_SHA=$(cat "${BASH_SOURCE[0]}" "$HERE"/caffe_{bundle,cuda}.sh "$HERE"/caffe_fixes/* | sha256sum | cut -c1-16)
STAMP_TEXT="source=$SRC_VERSION mode=$MODE python=$PY_EXE/$PY_VER numpy=${NUMPY_VER%%.*} script=$SCRIPT_SHA fixes=datalayer-threads${FROM:+ deps=bundle}"
STAMP=$CAFFE_ROOT/.caffe-transfer-build

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -x "$CAFFE_ROOT/bin/caffe" ]; then
  log "up to date in $CAFFE_ROOT ($STAMP_TEXT)"
  exit 0
fi

# --- build dependencies -------------------------------------------------------------------
BUNDLE_PYCAFFE=1 DEPS_CMAKE_ARGS=()
if [ -n "$FROM" ]; then
  for t in cmake make c++ patch; do command -v "$t" >/dev/null || die "--from needs $t on PATH (a bundle has no build tools)"; done
  use_bundle "$FROM"
else
  install_build_deps
fi

# --- source package -----------------------------------------------------------------------
CACHE=${FROM:+$FROM/source}
CACHE=${CACHE:-$CAFFE_ROOT/cache}
fetch_source "$CACHE"

SRC=$CAFFE_ROOT/src
rm -rf "$SRC" "$CAFFE_ROOT/build"
dpkg-source --no-check -x "$CACHE/$DSC_FILE" "$SRC" >/dev/null

# --- fixes for today's libraries ----------------------------------------------------------
# protobuf >= 3.21 dropped the two-argument SetTotalBytesLimit.
sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, 536870912)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
  "$SRC/src/caffe/util/io.cpp"
grep -q 'SetTotalBytesLimit(kProtoReadBytesLimit)' "$SRC/src/caffe/util/io.cpp" || die "protobuf fix did not apply"
# The DataLayer's parallel transform (tools/caffe_fixes/parallel_data_layer.patch), which gives
# the very same batches as stock Caffe: applied to every build, and checked.
patch -d "$SRC" -p1 --forward --batch --quiet < "$HERE/caffe_fixes/parallel_data_layer.patch" >/dev/null \
  || die "the DataLayer patch did not apply (tools/caffe_fixes/parallel_data_layer.patch)"
grep -q 'CAFFE_DATA_THREADS' "$SRC/src/caffe/layers/data_layer.cpp" || die "the DataLayer patch did not apply"
[ "$CUDA" = 0 ] || apply_cuda_fixes "$SRC"

# --- build ----------------------------------------------------------------------------------
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$CAFFE_ROOT"
  -DBLAS=Open -DUSE_OPENCV=ON -DUSE_LMDB=ON -DUSE_LEVELDB=OFF
  -DBUILD_python=ON -DBUILD_python_layer=ON -DBUILD_docs=OFF -DBUILD_matlab=OFF
  -Dpython_version="$PY_VER" -DPYTHON_EXECUTABLE="$PY_EXE"
  -DPYTHON_INCLUDE_DIR="$PY_INC" -DPYTHON_LIBRARY="$PY_LIB"
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5)
if [ "$CUDA" = 1 ]; then
  cmake_args+=(-DCPU_ONLY=OFF -DCUDA_ARCH_NAME=Manual -DCUDA_ARCH_BIN="$CUDA_ARCH_BIN" -DCUDA_ARCH_PTX="$CUDA_ARCH_PTX"
    "${cuda_args[@]}")
else
  cmake_args+=(-DCPU_ONLY=ON -DUSE_CUDNN=OFF)
fi
cmake_args+=("${DEPS_CMAKE_ARGS[@]}")
log "building ($MODE, python $PY_VER, $JOBS jobs); this takes a few minutes"
mkdir -p "$CAFFE_ROOT/build"
cmake_rc=0
(cd "$CAFFE_ROOT/build" && cmake "$SRC" "${cmake_args[@]}" > cmake.log 2>&1) || cmake_rc=$?
# Caffe's CMake leaves pycaffe out, with one line of notice, when it lacks a dependency (and
# then fails on a target that needs it): name the missing piece.
if [ "$BUNDLE_PYCAFFE" = 1 ] && grep -q "Python interface is disabled" "$CAFFE_ROOT/build/cmake.log"; then
  grep -i -e "could not find" -e "no module named" "$CAFFE_ROOT/build/cmake.log" >&2 || true
  die "cmake found no complete Python for pycaffe with $PY_EXE (log: $CAFFE_ROOT/build/cmake.log)"
fi
[ "$cmake_rc" = 0 ] \
  || { tail -n 30 "$CAFFE_ROOT/build/cmake.log" >&2; die "cmake failed (log: $CAFFE_ROOT/build/cmake.log)"; }
[ -z "$CUDNN_VERSION" ] || grep -q "Found cuDNN: ver. $CUDNN_VERSION " "$CAFFE_ROOT/build/cmake.log" \
  || die "cmake did not take cuDNN $CUDNN_VERSION (log: $CAFFE_ROOT/build/cmake.log)"
(cd "$CAFFE_ROOT/build" && make -j"$JOBS" install > make.log 2>&1) \
  || { tail -n 30 "$CAFFE_ROOT/build/make.log" >&2; die "build failed (log: $CAFFE_ROOT/build/make.log)"; }

for tool in caffe upgrade_net_proto_text upgrade_solver_proto_text compute_image_mean convert_imageset; do
  [ -x "$CAFFE_ROOT/bin/$tool" ] || die "build finished without $CAFFE_ROOT/bin/$tool"
done
PYCAFFE=$CAFFE_ROOT/lib/python3/dist-packages/caffe
if [ "$BUNDLE_PYCAFFE" = 1 ]; then
  "$PYTHON" -c 'import importlib.util as u, sys; s = u.spec_from_file_location("_caffe", sys.argv[1]); s.loader.exec_module(u.module_from_spec(s))' \
    "$PYCAFFE/_caffe.so" || die "pycaffe was built but does not import with $PYTHON"
else  # caffe-transfer reads and writes prototxts and LMDBs with caffe_pb2 alone
  mkdir -p "$PYCAFFE/proto" && cp "$CAFFE_ROOT/build/include/caffe/proto/caffe_pb2.py" "$PYCAFFE/proto/"
fi

echo "$STAMP_TEXT" > "$STAMP"
rm -rf "$CAFFE_ROOT/build" "$SRC" "$CAFFE_ROOT"/caffe_*.orig.tar.*  # dpkg-source copies the tarball beside $SRC
log "installed into $CAFFE_ROOT (bin/, lib/, lib/python3/dist-packages/caffe); mode $MODE"
