#!/usr/bin/env bash
# Installs what the web UI's browser test needs; idempotent (skips what is there).
#   chromium (Debian)        -> tests/gateway/test_ui.py drives it headless
#   playwright-core (npm)    -> the Node driver (tests/gateway/ui_browser.mjs); no browser download:
#                               it runs /usr/bin/chromium (executablePath)
# PLAYWRIGHT_DIR (default /opt/musicsplit/playwright) is where npm puts it; the test reads the same variable.
set -euo pipefail
pw_dir="${PLAYWRIGHT_DIR:-/opt/musicsplit/playwright}"

if ! command -v chromium >/dev/null; then
  for attempt in 1 2 3 4 5; do  # another job may hold the dpkg lock
    if { apt-get update -qq || true; } && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; then
      break
    fi
    sleep $((attempt * 5))
  done
fi
command -v chromium >/dev/null

if [ ! -f "$pw_dir/node_modules/playwright-core/package.json" ]; then
  mkdir -p "$pw_dir"
  cd "$pw_dir"
  [ -f package.json ] || echo '{"name":"musicsplit-playwright","private":true}' > package.json
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error playwright-core@1
fi
echo "ui test dependencies ready (chromium $(chromium --version 2>/dev/null | awk '{print $2}'), playwright-core in $pw_dir)"
