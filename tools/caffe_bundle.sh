# Offline build bundles, sourced by tools/install_caffe.sh: `--bundle DIR` writes one on a machine
# with network and apt; `--from DIR` builds from one on a machine with neither (a GPU node).
#
#   DIR/source/   the Caffe source package files (checked against the pinned .dsc as always)
#   DIR/debs/     the C++ build dependencies as Debian 12 .debs, and what they need beyond a machine
#                 that has a compiler and Python headers; unpacked without apt into
#                 CAFFE_ROOT/deps (glibc >= 2.36: Debian 12, Ubuntu 24.04 and newer)
#   DIR/wheels/   Python wheels for BUNDLE_PYTHON (default: PYTHON's version): BUNDLE_WHEELS
#   DIR/SHA256SUMS
#
# Not in it: CUDA and cuDNN (a GPU machine has them), CMake and the compiler, and OpenCV (with its
# dependencies it alone is over the size limit): a build from a bundle reads raw (undecoded)
# LMDBs, which is what `make-lmdb` writes by default, but not JPEG-encoded ones.

BUNDLE_LIMIT_MIB=60
BUNDLE_BASE=(build-essential dpkg-dev python3-dev)
BUNDLE_WHEELS=${BUNDLE_WHEELS:-protobuf lmdb click jinja2 tqdm six}
[[ -z "${BUNDLE_PYTHON:-}" || $BUNDLE_PYTHON =~ ^3\.[0-9]+$ ]] \
  || die "BUNDLE_PYTHON=$BUNDLE_PYTHON: expected a Python version such as 3.11"
MULTIARCH=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

write_bundle() {
  local dir=$1 roots=() p size
  for p in "${BUILD_DEPS[@]}"; do
    case "$p" in build-essential|cmake|dpkg-dev|libopencv-dev|libsnappy-dev) ;; *) roots+=("$p") ;; esac
  done
  mkdir -p "$dir/source" "$dir/debs" "$dir/wheels"
  fetch_source "$dir/source"
  mapfile -t debs < <(python3 "$HERE/deb_closure.py" "${roots[*]}" "${BUNDLE_BASE[*]}")
  [ ${#debs[@]} -gt 0 ] || die "no build dependency packages found to bundle"
  log "downloading ${#debs[@]} .debs"
  rm -f "$dir"/debs/*.deb
  (cd "$dir/debs" && apt-get -o APT::Sandbox::User=root download -qq "${debs[@]}" >/dev/null)
  local py=${BUNDLE_PYTHON:-$PY_VER}
  log "downloading wheels for Python $py: $BUNDLE_WHEELS"
  rm -f "$dir"/wheels/*
  # shellcheck disable=SC2086  # BUNDLE_WHEELS is a list of requirements
  "$PYTHON" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$py" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dir/wheels" $BUNDLE_WHEELS
  (cd "$dir" && find source debs wheels -type f | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
  size=$(du -sm --apparent-size "$dir" | cut -f1)
  [ "$size" -le "$BUNDLE_LIMIT_MIB" ] || die "bundle $dir is $size MiB, over the $BUNDLE_LIMIT_MIB MiB limit"
  log "bundle written: $dir ($size MiB: $(ls "$dir/debs" | wc -l) .debs, $(ls "$dir/wheels" | wc -l) wheels)"
}

# Check the bundle, unpack its .debs into CAFFE_ROOT/deps (once per bundle) and install its wheels
# into PYTHON's environment; sets DEPS_CMAKE_ARGS for a build against the unpacked prefix.
use_bundle() {
  local dir=$1 deps=$CAFFE_ROOT/deps deb member link target sums
  [ -f "$dir/SHA256SUMS" ] || die "--from $dir: no SHA256SUMS there (write a bundle with --bundle DIR)"
  local failed
  failed=$(cd "$dir" && sha256sum -c SHA256SUMS 2>/dev/null | sed -n 's/: FAILED.*$//p' | paste -sd, -) || true
  [ -z "$failed" ] || die "--from $dir: files do not match its SHA256SUMS (${failed//,/, }): write the bundle again"
  # Only what the sums vouch for is used: the .debs and wheels are globbed, so an extra one would be.
  local extra
  extra=$(cd "$dir" && comm -23 <(find source debs wheels ! -type d 2>/dev/null | LC_ALL=C sort) \
    <(sed 's/^[0-9a-f]*  //' SHA256SUMS | LC_ALL=C sort))
  [ -z "$extra" ] || die "--from $dir: ${extra//$'\n'/, } not listed in its SHA256SUMS: remove it, or write the bundle again"
  sums=$(sha256sum "$dir/SHA256SUMS" | cut -c1-16)
  if [ "$(cat "$deps/.bundle" 2>/dev/null)" != "$sums" ]; then
    log "unpacking $(ls "$dir"/debs/*.deb | wc -l) .debs into $deps"
    rm -rf "$deps" && mkdir -p "$deps"
    for deb in "$dir"/debs/*.deb; do
      if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$deb" "$deps"
      else  # a .deb is an ar archive; tar finds the data member's compression itself
        member=$(ar t "$deb" | grep '^data\.tar')
        (cd "$deps" && ar x "$deb" "$member" && tar -xf "$member" && rm "$member")
      fi
    done
    # An absolute link (libfoo.so -> /lib/...) would point out of the prefix.
    find "$deps" -type l -lname '/*' | while read -r link; do
      target=$(readlink "$link")
      [ ! -e "$deps$target" ] || ln -sfn "$deps$target" "$link"
    done
    echo "$sums" > "$deps/.bundle"
  fi
  if compgen -G "$dir/wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --find-links "$dir/wheels" "$dir"/wheels/*.whl \
      || die "--from $dir: its wheels do not install into $PY_EXE (a bundle for another Python? BUNDLE_PYTHON)"
  fi
  local usr=$deps/usr lib=$deps/usr/lib/$MULTIARCH
  export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}  # protoc runs during the build
  # DT_RPATH (not RUNPATH) also serves the prefix's libraries' own dependencies at run time.
  local link_flags="-Wl,--disable-new-dtags -Wl,-rpath-link,$lib:$lib/openblas-pthread:$lib/hdf5/serial"
  DEPS_CMAKE_ARGS=(-DCMAKE_PREFIX_PATH="$usr" -DBOOST_ROOT="$usr" -DBoost_NO_SYSTEM_PATHS=ON
    -DGFLAGS_ROOT_DIR="$usr" -DGLOG_ROOT_DIR="$usr" -DLMDB_DIR="$usr"
    -DProtobuf_INCLUDE_DIR="$usr/include" -DProtobuf_LIBRARY="$lib/libprotobuf.so"
    -DProtobuf_PROTOC_LIBRARY="$lib/libprotoc.so" -DProtobuf_PROTOC_EXECUTABLE="$usr/bin/protoc"
    -DHDF5_ROOT="$lib/hdf5/serial" -DHDF5_C_COMPILER_EXECUTABLE="" -DHDF5_NO_FIND_PACKAGE_CONFIG_FILE=ON
    -DOpenBLAS_INCLUDE_DIR="$usr/include/$MULTIARCH/openblas-pthread" -DOpenBLAS_LIB="$lib/openblas-pthread/libopenblas.so"
    -DCMAKE_EXE_LINKER_FLAGS="$link_flags" -DCMAKE_SHARED_LINKER_FLAGS="$link_flags"
    -DCMAKE_MODULE_LINKER_FLAGS="$link_flags" -DUSE_OPENCV=OFF)
  # pycaffe needs Boost.Python for this interpreter; Debian 12's is for Python 3.11 only.
  BUNDLE_PYCAFFE=1
  if [ ! -e "$lib/libboost_python${PY_VER//./}.so" ]; then
    BUNDLE_PYCAFFE=0
    log "the bundle has no Boost.Python for Python $PY_VER (only $(cd "$lib" && ls libboost_python3*.so | tr '\n' ' ')):" \
        "building without pycaffe (transplant needs it; caffe_pb2 is installed)"
    DEPS_CMAKE_ARGS+=(-DBUILD_python=OFF -DBUILD_python_layer=OFF)
  fi
}
