#!/usr/bin/env bash
# The main job: install, start the local stack on embedded defaults, separate
# a track end to end, write the stems and say where they are and how good they are.
# Extra arguments go to `musicsplit demo` (see `musicsplit demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 -m musicsplit.cli demo --out out/demo "$@"
