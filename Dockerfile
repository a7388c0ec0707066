# open-speech, CPU image: the router with the faster-whisper family, embedded default model loaded.
#   docker build -t open-speech .   &&   docker run -p 8000:8000 open-speech
# The install steps live in .ci/setup.sh, which CI runs too.
FROM python:3.11-slim-bookworm AS cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/huggingface \
    OPEN_SPEECH_HOST=0.0.0.0

RUN useradd --create-home --uid 1000 speech \
    && mkdir -p /app /data/huggingface \
    && chown -R speech:speech /app /data
WORKDIR /app
USER speech

COPY --chown=speech:speech pyproject.toml README.md ./
COPY --chown=speech:speech .ci ./.ci
COPY --chown=speech:speech common ./common
COPY --chown=speech:speech specs ./specs
COPY --chown=speech:speech servers ./servers
COPY --chown=speech:speech configs ./configs
RUN bash .ci/setup.sh

VOLUME ["/data/huggingface"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
# The router handles SIGTERM itself: it stops every family server it started, then exits.
CMD ["/app/.venv/bin/python", "servers/router.py"]
