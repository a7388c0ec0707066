#!/usr/bin/env bash
# Set up open-speech on a fresh machine: a virtual environment in .venv with the project installed.
#   bash .ci/setup.sh          the server only
#   bash .ci/setup.sh test     plus what the tests need (the ffmpeg command, test packages)
# The Dockerfile and CI run this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"

if [ "$extras" = "test" ] && ! command -v ffmpeg >/dev/null; then
  # Tests make mp3/ogg/webm/m4a copies of corpus clips with the ffmpeg command.
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
