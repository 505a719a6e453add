#!/usr/bin/env bash
# Installs what the gateway's tests need; idempotent (skips what is there).
#   redis-server (Debian)          -> tests/gateway/storage/test_cache.py (shared cache)
#   postgresql (Debian)            -> tests/fixtures/postgres.py (job store tests; Unleash's database)
#   unleash-server@7.5 (npm)       -> same; 7.5 is the last line that runs on Node 20
#   python gateway extra           -> pip install -e '.[gateway]' (boto3 for the S3 result store, PyJWT[crypto] for OIDC tokens)
#   moto[server] (test extra)      -> tests/fixtures/s3.py (an S3 API on 127.0.0.1)
# UNLEASH_SERVER_DIR (default /opt/musicsplit/unleash-server) is where npm puts
# the server; the slow test reads the same variable.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
unleash_dir="${UNLEASH_SERVER_DIR:-/opt/musicsplit/unleash-server}"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  for attempt in 1 2 3 4 5; do  # another job may hold the dpkg lock
    if { apt-get update -qq || true; } && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; then
      return 0
    fi
    sleep $((attempt * 5))
  done
  return 1
}

apt_install redis-server postgresql
# Debian starts services on install where it can; tests run their own on free ports.
command -v redis-server >/dev/null

if [ ! -f "$unleash_dir/node_modules/unleash-server/package.json" ]; then
  mkdir -p "$unleash_dir"
  cd "$unleash_dir"
  [ -f package.json ] || echo '{"name":"musicsplit-unleash","private":true}' > package.json
  npm install --no-audit --no-fund --loglevel=error unleash-server@7.5
fi

python -c "import UnleashClient, redis, tenacity, sentry_sdk, multipart, websockets, sqlalchemy, alembic, aiosqlite, psycopg, boto3, jwt, cryptography" 2>/dev/null \
  || pip install -q -e "$here[gateway]"
python -c "import moto.server, flask" 2>/dev/null || pip install -q -e "$here[test]"
echo "gateway test dependencies ready (unleash-server in $unleash_dir)"
