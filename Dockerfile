# caffe-transfer with BVLC Caffe, built by the same script the tests use (tools/install_caffe.sh).
# A CPU image by default; the CUDA image is built FROM a CUDA devel base with CAFFE_CUDA=1.
ARG BASE=debian:12
FROM ${BASE}
ARG CAFFE_CUDA=0
ENV CAFFE_ROOT=/opt/caffe DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
      ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/caffe-transfer
COPY . .
RUN CAFFE_CUDA=${CAFFE_CUDA} VENV=/opt/venv tools/setup.sh && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:${PATH}
ENTRYPOINT ["caffe-transfer"]
