# caffe-transfer with BVLC Caffe, built by the same script the tests use (tools/setup.sh ->
# tools/install_caffe.sh). CPU image by default:
#   docker build -t caffe-transfer .
# CUDA image: CUDA 13.0 and cuDNN 9 from NVIDIA's Python wheels (nvcc, runtime, Thrust, cuBLAS,
# cuRAND, cuDNN) in the image's venv, where install_caffe.sh finds them; kernels for sm_75 to
# sm_120 (CUDA 13 builds nothing older), Debian 12's g++-12. The host needs an NVIDIA driver
# 580 or newer (docs/gpu.md):
#   docker build --build-arg CAFFE_CUDA=1 -t caffe-transfer:cuda .
#   docker run --gpus all -v /data:/data caffe-transfer:cuda run-all /data/runs --gpus 0,1,2,3
ARG BASE=debian:12
FROM ${BASE}
ARG CAFFE_CUDA=0
ARG CUDA_ARCH_BIN="75 80 86 89 90 100 120"
ARG CUDA_WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.13.0.50"
ENV CAFFE_ROOT=/opt/caffe DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the Debian release the image is built on (apt pins would go stale).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/caffe-transfer
COPY . .
# The CUDA wheels go into the venv that setup.sh then completes; their nvcc goes on PATH.
# hadolint ignore=DL3013
RUN if [ "$CAFFE_CUDA" = 1 ]; then \
      python3 -m venv /opt/venv \
      && read -ra wheels <<< "$CUDA_WHEELS" \
      && /opt/venv/bin/pip install --no-cache-dir "${wheels[@]}" \
      && PATH="$(echo /opt/venv/lib/python3*/site-packages/nvidia/cu13/bin):$PATH" && export PATH; \
    fi \
 && CAFFE_CUDA="$CAFFE_CUDA" CUDA_ARCH_BIN="$CUDA_ARCH_BIN" VENV=/opt/venv tools/setup.sh \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:${PATH}
ENTRYPOINT ["caffe-transfer"]
