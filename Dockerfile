# caffe-transfer with BVLC Caffe, built by the same scripts the tests use (tools/install_caffe.sh,
# tools/setup.sh), in two stages: the build stage has the compiler, the -dev packages and nvcc; the
# image a user runs has Caffe, the package and the libraries Caffe loads (tools/caffe_runtime_debs.sh
# names them; for CUDA, cudart, cuBLAS, cuRAND and cuDNN from NVIDIA's wheels). docs/caffe.md.
#   docker build -t caffe-transfer .                                   CPU image
#   docker build --build-arg CAFFE_CUDA=1 -t caffe-transfer:cuda .     CUDA 13.0 + cuDNN 9 image
#   docker build --build-arg CAFFE_CUDA=1 --build-arg CUDA_ARCH_BIN=90 --build-arg CUDA_ARCH_PTX= ...
#                                                                      one card's own (fastest build)
# CUDA image: native code for sm_80 (A100; A10, L4, L40 and RTX 30/40 run it too) and sm_90 (H100,
# H200), PTX for compute_90 that newer cards (Blackwell) compile when Caffe loads; the host needs
# an NVIDIA driver 580 or newer and the container toolkit. Its first command on a new machine:
#   docker run --gpus all -v "$PWD/gpu:/out" caffe-transfer:cuda gpu-check
#   docker run --gpus all -v /data:/data caffe-transfer:cuda run-all /data/runs --gpus 0,1,2,3
ARG BASE=debian:12

FROM ${BASE} AS build
ARG CAFFE_CUDA=0
ARG CUDA_ARCH_BIN="80 90"
ARG CUDA_ARCH_PTX="90"
ARG CUDA_WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.13.0.50"
# What only the build needs, uninstalled before the venv is copied into the runtime stage.
ARG CUDA_BUILD_ONLY="nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-cccl"
ENV CAFFE_ROOT=/opt/caffe DEBIAN_FRONTEND=noninteractive \
    CAFFE_CUDA=${CAFFE_CUDA} CUDA_ARCH_BIN=${CUDA_ARCH_BIN} CUDA_ARCH_PTX=${CUDA_ARCH_PTX}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the Debian release the image is built on (apt pins would go stale).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/caffe-transfer
# Caffe first, from the files its build reads alone: a change to the package does not rebuild it.
COPY tools/install_caffe.sh tools/caffe_bundle.sh tools/caffe_cuda.sh tools/
COPY tools/caffe_fixes/ tools/caffe_fixes/
# For CUDA, NVIDIA's wheels go into the venv, where install_caffe.sh finds nvcc and the libraries.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --upgrade pip numpy \
 && if [ "$CAFFE_CUDA" = 1 ]; then \
      read -ra wheels <<< "$CUDA_WHEELS" && /opt/venv/bin/pip install --no-cache-dir "${wheels[@]}"; \
    fi \
 && PYTHON=/opt/venv/bin/python tools/install_caffe.sh \
 && rm -rf /var/lib/apt/lists/*
COPY . .
# setup.sh finds Caffe up to date (its stamp) and installs the package; then what the runtime
# stage needs is written down and the build-only parts leave.
# hadolint ignore=DL3013
RUN EXTRAS="" VENV=/opt/venv tools/setup.sh \
 && tools/caffe_runtime_debs.sh "$CAFFE_ROOT" > /opt/runtime-debs.txt \
 && read -ra build_only <<< "$CUDA_BUILD_ONLY" \
 && /opt/venv/bin/pip uninstall -y -q --disable-pip-version-check "${build_only[@]}" \
 && rm -rf "$CAFFE_ROOT/cache" "$CAFFE_ROOT/include" /var/lib/apt/lists/*

FROM ${BASE}
# NVIDIA's container toolkit mounts the driver's CUDA library and nvidia-smi (the GPU check asks it).
ENV CAFFE_ROOT=/opt/caffe DEBIAN_FRONTEND=noninteractive NVIDIA_DRIVER_CAPABILITIES=compute,utility
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /opt/runtime-debs.txt /opt/runtime-debs.txt
# The libraries Caffe loads, Python for the venv, and the demo's data (Fashion-MNIST).
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /opt/runtime-debs.txt apt-get install -y --no-install-recommends python3 ca-certificates dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/caffe /opt/caffe
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/caffe-transfer /opt/caffe-transfer
WORKDIR /opt/caffe-transfer
ENV PATH=/opt/venv/bin:${PATH}
# cuDNN opens its sub-libraries by name: the wheels' folders go to the loader. `doctor` and pycaffe's
# import then check at build time that the runtime stage lacks nothing Caffe and pycaffe load.
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/nvidia-wheels.conf \
 && ldconfig \
 && caffe-transfer doctor > /dev/null \
 && python -c 'from caffe_transfer.common import caffe_env; caffe_env.pycaffe()'
ENTRYPOINT ["/opt/caffe-transfer/tools/docker_entrypoint.sh"]
