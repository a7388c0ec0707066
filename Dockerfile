# open-speech images. Each runs the router (servers/router.py) on port 8000 under tini, as user speech (uid 1000).
#   docker build --target cpu  -t open-speech:cpu  .   faster-whisper and ONNX on CPU
#   docker build --target cuda -t open-speech:cuda .   the same on NVIDIA GPUs
#   docker build --target nemo -t open-speech:nemo .   cuda plus NVIDIA NeMo (Parakeet, Canary, streaming)
# Each target builds on the one before it. The Python install steps live in .ci/setup.sh, which CI runs
# too; a target reruns it with more. Everything is installed by root and read-only to speech, which
# writes only the Hugging Face cache volume.

# ---- cpu ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu

# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 speech \
    && mkdir -p /data/huggingface \
    && chown speech:speech /data/huggingface

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/huggingface \
    OPEN_SPEECH_HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci ./.ci
COPY common ./common
COPY specs ./specs
COPY router ./router
COPY servers ./servers
COPY configs ./configs
RUN bash .ci/setup.sh onnx

USER 1000:1000
VOLUME ["/data/huggingface"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
# tini is PID 1: it passes SIGTERM to the router, which stops every family server it started (in-flight
# requests finish first, up to 30 s), and it reaps whatever those leave behind.
ENTRYPOINT ["tini", "--"]
CMD ["/app/.venv/bin/python", "servers/router.py"]

# ---- cuda --------------------------------------------------------------------------------------
# GPU builds over the same files: onnxruntime-gpu (built for CUDA 13, its CUDA and cuDNN as wheels) in
# place of onnxruntime, and for CTranslate2 4.x CUDA 12's cuBLAS and cuDNN 9 as NVIDIA's wheels, found
# through LD_LIBRARY_PATH. The driver comes from the host through the NVIDIA container runtime (docker
# run --gpus, compose's GPU reservation); it must support CUDA 13.
FROM cpu AS cuda

USER 0:0
RUN bash .ci/setup.sh cuda,onnx
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/app/.venv/lib/python3.11/site-packages/nvidia/cublas/lib:/app/.venv/lib/python3.11/site-packages/nvidia/cudnn/lib
USER 1000:1000

# ---- nemo --------------------------------------------------------------------------------------
FROM cuda AS nemo

USER 0:0
RUN bash .ci/setup.sh cuda,onnx,nemo
USER 1000:1000
