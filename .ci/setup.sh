#!/usr/bin/env bash
# Set up open-speech on a fresh machine: a virtual environment in .venv with the project installed.
#   bash .ci/setup.sh               the router, the faster-whisper family and the bundled diarizer
#   bash .ci/setup.sh nemo          plus the NVIDIA NeMo family (also: onnx, pyannote, or nemo,onnx)
#   bash .ci/setup.sh test          everything, plus what the tests need (ffmpeg, chromium, test packages)
#   bash .ci/setup.sh cuda,onnx     NVIDIA GPU builds: CUDA 12 cuBLAS and cuDNN 9 wheels for CTranslate2,
#                                   onnxruntime-gpu in place of onnxruntime (and with nemo, torch's CUDA
#                                   wheels even where no GPU is visible, as in docker build)
# The Dockerfile (every target) and CI run this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
extras="${1:-}"
[ "$extras" = "test" ] && extras="test,nemo,onnx,pyannote"
cuda=false
if [[ ",$extras," == *",cuda,"* ]]; then  # not a package extra: a choice of builds
  cuda=true
  extras=",$extras,"
  extras="${extras//,cuda,/,}"
  extras="${extras#,}" && extras="${extras%,}"
fi

if [[ ",$extras," == *",test,"* ]] && ! { command -v ffmpeg && command -v chromium; } >/dev/null; then
  # Tests make mp3/ogg/webm/m4a copies of corpus clips with the ffmpeg command, and drive the web page in
  # Debian's chromium with Playwright.
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq ffmpeg chromium >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q)
"${pip[@]}" --upgrade pip
torch_cpu=false
if [[ ",$extras," == *",nemo,"* || ",$extras," == *",pyannote,"* ]] && ! $cuda && ! command -v nvidia-smi >/dev/null; then
  # NeMo and pyannote.audio need torch; without a GPU take the CPU build, pinned first so nothing pulls CUDA
  # wheels.
  "${pip[@]}" torch==2.13.0
  torch_cpu=true
fi
"${pip[@]}" -e ".${extras:+[$extras]}"
if [[ ",$extras," == *",pyannote,"* ]] && $torch_cpu && ! .venv/bin/python -c "import torchaudio" 2>/dev/null; then
  # PyPI's torchaudio is a CUDA build: its C++ extension needs torch's CUDA libraries, and without them
  # `import torchaudio` fails. pyannote.audio uses only its Python code (Kaldi fbank features, resampling),
  # and torchaudio imports without the extension when the extension's files are not there.
  rm -f "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"/torchaudio/lib/*.so
fi
# The bundled diarizer reads only the weights in resemblyzer's wheel, in numpy: its dependencies (torch,
# librosa, webrtcvad) are not needed.
"${pip[@]}" --no-deps resemblyzer==0.1.4
if $cuda; then
  # CTranslate2 4.x loads CUDA 12's cuBLAS and cuDNN 9 by name: NVIDIA's wheels bring them (the images put
  # their folders on LD_LIBRARY_PATH; elsewhere, do the same or install CUDA 12 and cuDNN 9 system-wide).
  "${pip[@]}" "nvidia-cublas-cu12==12.*" "nvidia-cudnn-cu12==9.*"
  # onnxruntime-gpu and onnxruntime (which faster-whisper requires) install the same module: remove the CPU
  # build, then put in the GPU build of the same version. PyPI's onnxruntime-gpu is built for CUDA 13: its
  # cuda and cudnn extras bring the CUDA 13 runtime and cuDNN as wheels, which servers/onnx.py preloads
  # (CTranslate2 keeps the image's CUDA 12 in the faster-whisper processes). It needs a driver for CUDA 13.
  ort=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('onnxruntime'))")
  .venv/bin/python -m pip uninstall -q -y onnxruntime
  "${pip[@]}" "onnxruntime-gpu[cuda,cudnn]==$ort"
fi
