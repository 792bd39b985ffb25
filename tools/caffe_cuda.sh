# CUDA's libraries and cuDNN for a CUDA build, sourced by tools/install_caffe.sh: the toolkit's
# where it has them, else NVIDIA's wheels in PYTHON's environment. find_cuda_libraries sets
# cuda_args (CMake arguments), CUDNN_VERSION and CUDNN_HEADER, and puts on CPATH the headers
# that Caffe includes without a CMake include path. apply_cuda_fixes patches Caffe's source for
# today's CUDA and, with CUDNN_VERSION set, cuDNN 8 and newer (tools/caffe_fixes/;
# tests/test_cudnn_switches.py applies it alone and compiles what it changed).

# The folder of the wheel package nvidia.NAME (cu13, cudnn, ...), if PYTHON has it.
wheel_dir() {
  "$PYTHON" -c 'import importlib.util as u, sys
try: s = u.find_spec("nvidia." + sys.argv[1])
except ImportError: s = None
print(next(iter(s.submodule_search_locations)) if s else "")' "$1" 2>/dev/null || true
}
# The first file matching a glob in the given folders.
first() { local pattern=$1 d f; shift; for d in "$@"; do for f in "$d"/$pattern; do [ -e "$f" ] && { echo "$f"; return; }; done; done; return 0; }

find_cuda_libraries() {
  local CUDA_HOME lib found w d var inc header libdir library extra_inc=()
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
  # FindCUDA looks for unversioned libraries in the toolkit; a toolkit from NVIDIA's wheels, or
  # one without cuBLAS and cuRAND (as on these machines), has versioned ones or none: pass them.
  for lib in cudart cublas curand; do
    [ -z "$(first "lib$lib.so" "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib" \
      /usr/lib/x86_64-linux-gnu)" ] || continue
    found=$(first "lib$lib.so.[0-9]*" "$CUDA_HOME/lib64" "$CUDA_HOME/lib")
    for w in cu13 "$lib"; do  # nvidia/cu13/lib (CUDA 13 wheels), nvidia/cublas/lib (CUDA 12 wheels)
      [ -z "$found" ] || break
      d=$(wheel_dir "$w"); [ -z "$d" ] || found=$(first "lib$lib.so.[0-9]*" "$d/lib")
    done
    [ -n "$found" ] || die "CUDA at $CUDA_HOME has no lib$lib: install NVIDIA's wheel for it into $PY_EXE's environment (nvidia-$lib)"
    log "lib$lib: $found"
    var=CUDA_${lib}_LIBRARY; [ "$lib" != cudart ] || var=CUDA_CUDART_LIBRARY
    cuda_args+=(-D"$var"="$found")
    extra_inc+=("$(dirname "$(dirname "$found")")/include")
  done
  # CUDA 13 moved Thrust and CUB to include/cccl, which nvcc adds itself and g++ does not (the
  # cuDNN softmax layer includes Thrust from a .cpp).
  [ ! -d "$CUDA_HOME/include/cccl" ] || extra_inc+=("$CUDA_HOME/include/cccl")
  # Caffe includes cublas_v2.h, curand.h and Thrust without a CMake include path for them: gcc and
  # nvcc's preprocessing both read CPATH.
  [ ${#extra_inc[@]} = 0 ] || export CPATH="$(IFS=:; echo "${extra_inc[*]}")${CPATH:+:$CPATH}"

  if [ "$CAFFE_CUDNN" != 0 ]; then
    cudnn_wheel=$(wheel_dir cudnn)
    for inc in ${CUDNN_ROOT:+"$CUDNN_ROOT/include"} "$CUDA_HOME/include" /usr/include/x86_64-linux-gnu /usr/include \
               ${cudnn_wheel:+"$cudnn_wheel/include"}; do
      # cuDNN >= 8 keeps its version in cudnn_version.h (Debian's packages suffix it: _v9).
      header=$(first "cudnn_version.h" "$inc"); header=${header:-$(first "cudnn_version_v[0-9]*.h" "$inc")}
      [ -n "$header" ] || { [ -f "$inc/cudnn.h" ] && header=$inc/cudnn.h; } || continue
      [ -f "$inc/cudnn.h" ] || continue
      libdir=$(dirname "$inc")/lib
      library=$(first "libcudnn.so" ${CUDNN_ROOT:+"$CUDNN_ROOT/lib" "$CUDNN_ROOT/lib64"} "$libdir" "$libdir"64 \
        "$CUDA_HOME/lib64" /usr/lib/x86_64-linux-gnu)
      library=${library:-$(first "libcudnn.so.[0-9]*" ${CUDNN_ROOT:+"$CUDNN_ROOT/lib" "$CUDNN_ROOT/lib64"} \
        "$libdir" "$libdir"64 "$CUDA_HOME/lib64" /usr/lib/x86_64-linux-gnu)}
      [ -n "$library" ] || continue
      CUDNN_VERSION=$(awk '$1 == "#define" && $2 ~ /^CUDNN_(MAJOR|MINOR|PATCHLEVEL)$/ {v[$2] = $3}
        END {if (v["CUDNN_MAJOR"] != "") print v["CUDNN_MAJOR"] "." v["CUDNN_MINOR"] "." v["CUDNN_PATCHLEVEL"]}' "$header")
      [ -n "$CUDNN_VERSION" ] || die "no CUDNN_MAJOR in $header"
      CUDNN_HEADER=$header
      cuda_args+=(-DUSE_CUDNN=ON -DCUDNN_INCLUDE="$inc" -DCUDNN_LIBRARY="$library")
      log "cuDNN $CUDNN_VERSION: $header, $library"
      break
    done
    [ -n "$CUDNN_VERSION" ] || [ "$CAFFE_CUDNN" = auto ] \
      || die "CAFFE_CUDNN=1 but no cuDNN found (CUDNN_ROOT, $CUDA_HOME, /usr/include, or pip install nvidia-cudnn-cu13 into $PY_EXE's environment)"
    [ -z "$CUDNN_VERSION" ] || [ "${CUDNN_VERSION%%.*}" -ge 8 ] || die "cuDNN $CUDNN_VERSION: this build needs cuDNN 8 or newer (tools/caffe_fixes)"
  fi
  [ -n "$CUDNN_VERSION" ] || cuda_args+=(-DUSE_CUDNN=OFF)
}

# Caffe's source in $1 made to build with CUDA 13 and, where CUDNN_VERSION is set, cuDNN >= 8
# (CUDNN_HEADER: its cudnn_version.h), with the switches of tools/caffe_fixes/cudnn_switches.hpp;
# each change checked that it applied.
apply_cuda_fixes() {
  local SRC=$1
  # CUDA 13 removed these cudaDeviceProp fields; only DeviceQuery prints them.
  sed -i -e '/prop\.clockRate/d' -e '/prop\.kernelExecTimeoutEnabled/d' -e '/prop\.deviceOverlap/d' \
    -e '/Concurrent copy and execution/d' -e '/Kernel execution timeout/d' "$SRC/src/caffe/common.cpp"
  [ -n "$CUDNN_VERSION" ] || return 0
  # cuDNN 8 moved the version to cudnn_version.h and removed the algorithm choosers Caffe calls.
  sed -i "s|file(READ \${CUDNN_INCLUDE}/cudnn.h CUDNN_VERSION_FILE_CONTENTS)|file(READ $CUDNN_HEADER CUDNN_VERSION_FILE_CONTENTS)|" \
    "$SRC/cmake/Cuda.cmake"
  grep -qF "file(READ $CUDNN_HEADER " "$SRC/cmake/Cuda.cmake" || die "cuDNN version fix did not apply to cmake/Cuda.cmake"
  cp "$HERE/caffe_fixes/cudnn8_algo.hpp" "$SRC/include/caffe/util/"
  sed -i 's|^#include <cudnn.h>$|&\n#include "caffe/util/cudnn8_algo.hpp"|' "$SRC/include/caffe/util/cudnn.hpp"
  grep -q '^#include "caffe/util/cudnn8_algo.hpp"' "$SRC/include/caffe/util/cudnn.hpp" \
    || die "cuDNN 8 algorithm fix did not apply to include/caffe/util/cudnn.hpp"
  # The switches CAFFE_CUDNN_WORKSPACE_MB, CAFFE_CUDNN_ALGO, CAFFE_CUDNN_DETERMINISTIC, CAFFE_TF32
  # (docs/gpu.md); none set keeps Caffe's algorithm rule.
  cp "$HERE/caffe_fixes/cudnn_switches.hpp" "$HERE/caffe_fixes/cudnn_conv_choice.hpp" "$SRC/include/caffe/util/"
  patch -d "$SRC" -p1 --forward --batch --quiet < "$HERE/caffe_fixes/cudnn_switches.patch" >/dev/null \
    || die "the cuDNN switches patch did not apply (tools/caffe_fixes/cudnn_switches.patch)"
  grep -q 'ChooseAlgorithms(i, \*bottom\[i\], \*top\[i\])' "$SRC/src/caffe/layers/cudnn_conv_layer.cpp" \
    && grep -q 'SetCublasMath(cublas_handle_)' "$SRC/src/caffe/common.cpp" \
    || die "cuDNN switches did not apply to src/caffe/layers/cudnn_conv_layer.cpp and src/caffe/common.cpp"
}
