# caffe-transfer with BVLC Caffe, built by the same script the tests use (tools/setup.sh ->
# tools/install_caffe.sh). CPU image by default:
#   docker build -t caffe-transfer .
# CUDA image (Debian's own CUDA 11.8 toolkit from contrib/non-free, no cuDNN, kernels for
# sm_60..sm_90, built with g++-11, the newest host compiler CUDA 11.8 supports):
#   docker build --build-arg CAFFE_CUDA=1 -t caffe-transfer:cuda .
#   docker run --gpus all -v /data:/data caffe-transfer:cuda run-all /data/runs --gpus 0,1,2,3
ARG BASE=debian:12
FROM ${BASE}
ARG CAFFE_CUDA=0
ARG CUDA_ARCH_BIN="60 70 75 80 86 89 90"
ENV CAFFE_ROOT=/opt/caffe DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the Debian release the image is built on (apt pins would go stale).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
 && if [ "$CAFFE_CUDA" = 1 ]; then \
      sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' \
        /etc/apt/sources.list.d/debian.sources \
      && apt-get update \
      && apt-get install -y --no-install-recommends nvidia-cuda-toolkit gcc-11 g++-11; \
    fi \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/caffe-transfer
COPY . .
RUN if [ "$CAFFE_CUDA" = 1 ]; then export CC=gcc-11 CXX=g++-11; fi \
 && CAFFE_CUDA="$CAFFE_CUDA" CUDA_ARCH_BIN="$CUDA_ARCH_BIN" VENV=/opt/venv tools/setup.sh \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:${PATH}
ENTRYPOINT ["caffe-transfer"]
