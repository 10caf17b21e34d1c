#!/usr/bin/env bash
# Installs everything normbench needs, idempotently: Debian's Fashion-MNIST (the default data set, offline),
# a virtual environment in .venv with torch, torchvision and normbench itself (editable) plus test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$DATA" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup: installing Debian's dataset-fashion-mnist"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get here; set data.root=DIR (four Fashion-MNIST idx files) or data.download=true" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing normbench and its dependencies into .venv (torch is large the first time)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import torch, torchvision, hydra, normbench; print('setup: torch', torch.__version__, '| torchvision', torchvision.__version__, '| hydra', hydra.__version__, '| normbench', normbench.__version__)"
