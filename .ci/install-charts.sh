#!/usr/bin/env bash
# Installs what the chart and image tests need (tests/charts, tests/images);
# idempotent (skips what is there).
#   amtool, alertmanager (Debian prometheus-alertmanager) -> Alertmanager config checks, inhibition
#   promtool (Debian prometheus)                          -> bundled Prometheus config, alert rules
#   @kubernetes-models/prometheus-operator (npm)          -> ServiceMonitor, PodMonitor, PrometheusRule,
#                                                            AlertmanagerConfig schemas (validators
#                                                            generated from prometheus-operator's CRDs)
#   helm-python-sdk, kubernetes-validate, dockerfile-parse, wheel (PyPI, the `test` extra)
# KUBERNETES_MODELS_DIR (default /opt/musicsplit/kubernetes-models) is where npm
# puts the models; the tests read the same variable.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
models_dir="${KUBERNETES_MODELS_DIR:-/opt/musicsplit/kubernetes-models}"
models_version="6.0.0"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  for attempt in 1 2 3 4 5; do  # another job may hold the dpkg lock
    if { $sudo apt-get update -qq || true; } \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
      return 0
    fi
    sleep $((attempt * 5))
  done
  return 1
}

apt_install prometheus prometheus-alertmanager
command -v amtool >/dev/null && command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null

installed="$models_dir/node_modules/@kubernetes-models/prometheus-operator/package.json"
if [ ! -f "$installed" ] || ! grep -q "\"version\": \"$models_version\"" "$installed"; then
  mkdir -p "$models_dir"
  cd "$models_dir"
  [ -f package.json ] || echo '{"name":"musicsplit-kubernetes-models","private":true}' > package.json
  npm install --no-audit --no-fund --loglevel=error "@kubernetes-models/prometheus-operator@$models_version"
fi

python -c "import helm_python, kubernetes_validate, dockerfile_parse, wheel" 2>/dev/null \
  || pip install -q -e "$here[test]"
echo "chart test dependencies ready (kubernetes-models in $models_dir)"
