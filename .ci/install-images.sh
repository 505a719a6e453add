#!/usr/bin/env bash
# Installs what the image tests need; idempotent (skips what is there).
#   podman, buildah, runc (Debian)  -> scripts/build-images.sh builds and runs
#                                      OCI images where no Docker engine answers
#   debootstrap (Debian)            -> the same script makes a Debian bookworm
#                                      base locally where the pinned one cannot be pulled
#   fuse-overlayfs, slirp4netns,    -> podman's storage and networking helpers
#   uidmap, netavark/aardvark
# tests/images/test_built_images.py fails (not skips) when podman or runc is missing.
set -euo pipefail

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  for attempt in 1 2 3 4 5; do  # another job may hold the dpkg lock
    if { apt-get update -qq || true; } && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
      return 0
    fi
    sleep $((attempt * 5))
  done
  return 1
}

apt_install podman buildah runc debootstrap uidmap fuse-overlayfs slirp4netns netavark aardvark-dns \
  containernetworking-plugins catatonit ca-certificates
command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null
echo "image build tools ready ($(podman --version), $(runc --version | head -1))"

# torch for the predictor image's build, as wheels mounted into it
# (scripts/build-images.sh --torch-wheels; tests/images reads MUSICSPLIT_TORCH_WHEELS):
# PyTorch's CPU wheels where that index answers, else PyPI's torch (the CUDA
# build: its nvidia-* wheels make the cpu image GBs larger; docs/images.md).
# Downloaded once per machine; every later image build reuses the folder.
wheels="${MUSICSPLIT_TORCH_WHEELS:-/opt/musicsplit/wheels/torch-2.13.0}"
if [ ! -f "$wheels/.complete" ]; then
  mkdir -p "$wheels"
  if curl -sf --max-time 20 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
    pip download -q --dest "$wheels" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple torch==2.13.0+cpu
  else
    pip download -q --dest "$wheels" torch==2.13.0 nvidia-ml-py==13.615.71
  fi
  touch "$wheels/.complete"
fi
echo "torch wheels for the image builds in $wheels"
