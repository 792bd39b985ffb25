#!/usr/bin/env bash
# Caffe's own tests of the DataLayer and the DataTransformer, run against the installed build.
#
# Builds src/caffe/test/test_data_layer.cpp and test_data_transformer.cpp of the same Debian
# source package (from the verified copy tools/install_caffe.sh keeps in CAFFE_ROOT/cache), with
# the gtest that package bundles, against CAFFE_ROOT's headers and libcaffe, and runs them at
# CAFFE_DATA_THREADS 0 (stock loop), 1 and 4: the suite Caffe's authors wrote for this code, run
# against tools/caffe_fixes/parallel_data_layer.patch. CPU builds only (a CUDA build's tests
# need a GPU).
#
#   CAFFE_ROOT=/opt/caffe tools/caffe_own_tests.sh [WORKDIR]
set -euo pipefail
CAFFE_ROOT=${CAFFE_ROOT:-/opt/caffe}
WORK=${1:-$(mktemp -d)}
die() { printf '[caffe_own_tests] error: %s\n' "$*" >&2; exit 1; }

dsc=$(ls "$CAFFE_ROOT"/cache/caffe_*.dsc 2>/dev/null | head -n1)
[ -n "$dsc" ] || die "no source package in $CAFFE_ROOT/cache: build Caffe with tools/install_caffe.sh first"
grep -q 'mode=cpu' "$CAFFE_ROOT/.caffe-transfer-build" 2>/dev/null \
  || die "$CAFFE_ROOT is not a CPU build of tools/install_caffe.sh (its tests need a GPU otherwise)"
mkdir -p "$WORK"
rm -rf "$WORK/src"
dpkg-source --no-check -x "$dsc" "$WORK/src" >/dev/null

SRC=$WORK/src/src
flags=(-std=gnu++17 -O1 -DCPU_ONLY -DUSE_OPENCV -DUSE_LMDB -I"$CAFFE_ROOT/include" -I"$SRC"
       -I/usr/include/opencv4 -I/usr/include/hdf5/serial)
objects=()
for file in gtest/gtest-all.cpp caffe/test/test_caffe_main.cpp caffe/test/test_data_layer.cpp \
            caffe/test/test_data_transformer.cpp; do
  object=$WORK/$(basename "$file" .cpp).o
  g++ "${flags[@]}" -c "$SRC/$file" -o "$object" &
  objects+=("$object")
done
wait_all() { local rc=0; for job in $(jobs -p); do wait "$job" || rc=1; done; return $rc; }
wait_all || die "the tests did not compile against $CAFFE_ROOT"
g++ "${objects[@]}" -o "$WORK/test_data" -L"$CAFFE_ROOT/lib" -Wl,-rpath,"$CAFFE_ROOT/lib" -lcaffe \
  -lglog -lgflags -lprotobuf -lboost_system -lboost_thread -lboost_filesystem -lopencv_core -lopencv_imgcodecs \
  -lopencv_imgproc -llmdb -lpthread

cd "$WORK"  # the tests write their LMDBs to temporary folders of their own
for threads in 0 1 4; do
  echo "== CAFFE_DATA_THREADS=$threads"
  CAFFE_DATA_THREADS=$threads GLOG_minloglevel=2 ./test_data --gtest_filter='*DataLayer*:*DataTransform*' \
    | grep -E '^\[ *(PASSED|FAILED) *\]|^\[==========\]'
  [ "${PIPESTATUS[0]}" = 0 ] || die "Caffe's own tests failed at CAFFE_DATA_THREADS=$threads"
done
