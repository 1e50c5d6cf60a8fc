#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (CPU is enough) for mclnf-city.
#  - system libraries: libusb (open3d, imported by ns-export and the 3D-point loader)
#    and ffmpeg (ns-render writes videos through it); chromium (Debian's package: the
#    viewer test, tests/test_viewer_browser.py, opens ns-viewer in headless Chromium)
#  - torch 2.14.1 + torchvision 0.29.1 (the newest pair nerfstudio 1.1.5 runs with here)
#  - this package, editable, with its test extras
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! ldconfig -p | grep -q 'libusb-1.0.so.0' || ! command -v ffmpeg >/dev/null || ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq libusb-1.0-0 ffmpeg chromium >/dev/null 2>&1 || {
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libusb-1.0-0 ffmpeg chromium >/dev/null
  }
fi

python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[test]"
echo "[setup] done: $(python -c 'import torch, nerfstudio; print("torch", torch.__version__)'), ns-train mclnf-city registered: $(ns-train --help 2>/dev/null | grep -c mclnf-city)"
