#!/usr/bin/env bash
# Installs musicsplit and its Python dependencies on a fresh machine; idempotent.
# torch is pinned first: any other spec pulls the multi-GB CUDA build, and
# demucs would otherwise choose it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[all]'
