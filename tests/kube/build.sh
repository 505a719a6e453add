#!/usr/bin/env bash
# Build (once) the real Kubernetes API server the tests in tests/kube run against.
#
#   tests/kube/build.sh     # KUBE_VERSION, MUSICSPLIT_KUBE_ROOT override the defaults below
#
# kube-apiserver is compiled from k8s.io/kubernetes at a pinned release, fetched
# through the Go module proxy; k8s.io/kubernetes' own go.mod points every
# k8s.io/* staging module at ./staging, so the throw-away module below pins each
# of them to the matching published v0.X.Y.  etcd is Debian's etcd-server, linked.
# Both binaries are cached per version under
#   /opt/musicsplit/kube/<kubernetes version>/bin/{kube-apiserver,etcd}
# and a rerun with the binaries present does nothing.  Prints the bin dir.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ROOT="${MUSICSPLIT_KUBE_ROOT:-/opt/musicsplit/kube}"
BIN="$ROOT/$KUBE_VERSION/bin"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

mkdir -p "$BIN"

if [ ! -x "$BIN/kube-apiserver" ]; then
    staging_version="v0.${KUBE_VERSION#v1.}"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    # The staging modules k8s.io/kubernetes requires at v0.0.0 (its go.mod
    # replaces them with ./staging/src/..., which a dependency cannot use).
    gomod=$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    staging=$(awk '$2 == "v0.0.0" && $1 ~ /^k8s.io\// {print $1}' "$gomod")
    {
        echo "module musicsplit.local/kube-build"
        echo
        echo "go 1.26.0"
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        for m in $staging; do echo "replace $m => $m $staging_version"; done
    } > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' > tools.go
    start=$(date +%s)
    # jsonv2 breaks the server's OpenAPI (every kubectl apply fails) with Go >= 1.27.
    export GOEXPERIMENT="${GOEXPERIMENT:-nojsonv2}"
    case "$("$GO" version)" in *go1.26*) unset GOEXPERIMENT ;; esac
    GOFLAGS=-mod=mod "$GO" mod tidy
    CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w \
        -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)" \
        -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    echo "built kube-apiserver $KUBE_VERSION in $(( $(date +%s) - start )) s" >&2
fi

if [ ! -x "$BIN/etcd" ]; then
    if ! command -v etcd >/dev/null; then
        echo "etcd is missing: install Debian's etcd-server (.ci/install-kube.sh does)" >&2
        exit 1
    fi
    ln -sf "$(command -v etcd)" "$BIN/etcd"
fi

echo "$BIN"
