#!/usr/bin/env bash
# Set up open-speech on a fresh machine: a virtual environment in .venv with the project installed.
#   bash .ci/setup.sh               the router and the faster-whisper family
#   bash .ci/setup.sh nemo          plus the NVIDIA NeMo family (also: onnx, or nemo,onnx)
#   bash .ci/setup.sh test          everything, plus what the tests need (the ffmpeg command, test packages)
# The Dockerfile and CI run this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
extras="${1:-}"
[ "$extras" = "test" ] && extras="test,nemo,onnx"

if [[ ",$extras," == *",test,"* ]] && ! command -v ffmpeg >/dev/null; then
  # Tests make mp3/ogg/webm/m4a copies of corpus clips with the ffmpeg command.
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q)
"${pip[@]}" --upgrade pip
if [[ ",$extras," == *",nemo,"* ]] && ! command -v nvidia-smi >/dev/null; then
  # NeMo needs torch; without a GPU take the CPU build, pinned first so nothing pulls CUDA wheels.
  "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" -e ".${extras:+[$extras]}"
