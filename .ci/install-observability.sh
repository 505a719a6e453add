#!/usr/bin/env bash
# Installs what the dashboards', alerts' and paging tests need; idempotent
# (skips what is there).
#   prometheus (Debian: prometheus, promtool)      -> tests/grafana (queries), tests/alerts (rules)
#   prometheus-alertmanager (Debian: prometheus-alertmanager,
#     amtool)                                      -> tests/alerts/test_paging.py
#   grafana-foundation-sdk (pip, `dashboards` extra) -> grafana/ (render)
# --no-install-recommends: the binaries only, no node exporter or web assets.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

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
# Debian starts the packages' services where it can; tests run their own on free ports.
for bin in prometheus promtool prometheus-alertmanager amtool; do command -v "$bin" >/dev/null; done

python -c "import grafana_foundation_sdk" 2>/dev/null || pip install -q -e "$here[dashboards]"
echo "observability test dependencies ready"
