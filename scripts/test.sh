#!/usr/bin/env bash
# Installs what the tests need (Python packages, then each component's
# system dependencies: Prometheus, Alertmanager, Redis, PostgreSQL,
# unleash-server, kubernetes-models), then
# runs the whole suite. Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
for script in .ci/install-*.sh; do bash "$script"; done
exec python3 -m pytest "$@"
