#!/usr/bin/env bash
# Installs what the web UI's tests need; idempotent (skips what is there).
#   chromium (Debian)                   -> tests/gateway/api/test_ui.py drives it headless
#   node (Debian nodejs, where missing) -> runs the driver, and tests/gateway/api/test_ui_js.py
#   playwright-core (npm)               -> the driver (tests/gateway/api/ui/browser.mjs); no browser download:
#                                          it runs /usr/bin/chromium (executablePath)
# PLAYWRIGHT_DIR (default /opt/musicsplit/playwright) is where npm puts it; the test reads the same variable.
set -euo pipefail
pw_dir="${PLAYWRIGHT_DIR:-/opt/musicsplit/playwright}"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  for attempt in 1 2 3 4 5; do  # another job may hold the dpkg lock
    if { apt-get update -qq || true; } && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
      return 0
    fi
    sleep $((attempt * 5))
  done
  return 1
}

command -v node >/dev/null || apt_install nodejs npm
command -v chromium >/dev/null || apt_install chromium
command -v chromium >/dev/null

if [ ! -f "$pw_dir/node_modules/playwright-core/package.json" ]; then
  mkdir -p "$pw_dir"
  cd "$pw_dir"
  [ -f package.json ] || echo '{"name":"musicsplit-playwright","private":true}' > package.json
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error playwright-core@1
fi
echo "ui test dependencies ready (chromium $(chromium --version 2>/dev/null | awk '{print $2}'), playwright-core in $pw_dir)"
