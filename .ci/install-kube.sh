#!/usr/bin/env bash
# Installs the real Kubernetes API server tests/kube runs against: kube-apiserver
# built from k8s.io/kubernetes (pinned in tests/kube/build.sh) through the Go module
# proxy, and Debian's etcd-server, both cached in /opt/musicsplit/kube/<version>/bin.
# Idempotent: does nothing when both binaries are there. The first build took
# 621 s (10 min 20 s with downloads) on 2 busy cores, 685 MB of module cache and
# 2.2 GB of build cache; needs Go >= 1.26 (here /usr/local/go).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
    echo "install-kube: Go >= 1.26 is needed to build kube-apiserver (put it in /usr/local/go)" >&2
    exit 1
fi
if ! command -v etcd >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    for attempt in 1 2 3 4 5; do  # another install script may hold the dpkg lock
        if { $SUDO apt-get update -qq || true; } \
            && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server; then
            break
        fi
        sleep $((attempt * 5))
    done
fi
bin="$(bash "$here/tests/kube/build.sh")"
"$bin/kube-apiserver" --version
"$bin/etcd" --version | head -1
