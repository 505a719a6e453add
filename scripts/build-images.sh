#!/usr/bin/env bash
# Builds the musicsplit images from the repository root:
#   predictor-cpu   predictor/Dockerfile, target cpu   -> localhost/musicsplit-predictor:VERSION
#   predictor-cuda  predictor/Dockerfile, target cuda  -> localhost/musicsplit-predictor:VERSION-cuda
#   gateway         gateway/Dockerfile                 -> localhost/musicsplit-gateway:VERSION
#   operator        operator/Dockerfile                -> localhost/musicsplit-operator:VERSION
# (VERSION: pyproject.toml's, the chart's appVersion) and prints each image's size.
#
# Usage: scripts/build-images.sh [options] [predictor|predictor-cpu|predictor-cuda|gateway|operator ...]
#   (no component: all four)
#   --registry PREFIX     also tag PREFIX/<component>:VERSION[-cuda]; the chart's
#                         defaults are --registry ghcr.io/musicsplit
#   --push                push the --registry tags (log in first: docker/podman login)
#   --torch-index URL     index for the cpu target's torch (default PyTorch's CPU
#                         index, https://download.pytorch.org/whl/cpu)
#   --torch-wheels DIR    a folder of wheels holding torch and its dependencies
#                         (`pip download torch==X -d DIR`), installed offline:
#                         CPU wheels (+cpu) for the cpu target only, PyPI's torch
#                         for both targets; podman only (mounted into the build,
#                         never copied into an image)
#   --engine docker|podman  default: docker where an engine answers, else podman
#
# With podman (no Docker engine, e.g. CI VMs and sandboxes):
#   - CONTAINERS_CONF defaults to scripts/podman/containers.conf (no default
#     ulimits, runc with cgroupfs);
#   - the host's CA bundle (MUSICSPLIT_BUILD_CA, default
#     /etc/ssl/certs/ca-certificates.crt) and a pip config naming it are mounted
#     into every build step, so pip works behind a TLS-intercepting proxy; they
#     are never part of an image;
#   - bases are never pulled during the build (--pull=never): a missing base is
#     pulled once beforehand, and where that fails a STAND-IN of the same name is
#     made from a debootstrapped Debian bookworm with Debian's Python 3.11 (the
#     script says so on every run; published images must use the real base);
#   - --format docker keeps HEALTHCHECK.
# Builds are cached: an image whose inputs (Dockerfile, copied sources, build
# arguments, base) are unchanged is not rebuilt (MUSICSPLIT_IMAGES_REBUILD=1
# forces it); otherwise the layer cache and the local bases are reused, and
# the image a rebuild replaces is removed. MUSICSPLIT_IMAGES_PRUNE=1 also
# removes every dangling image afterwards: that includes the cached
# dependency stages, so the next build is a cold one.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
registry="" push=0 torch_index="" torch_wheels="" engine="${MUSICSPLIT_IMAGE_ENGINE:-}"
components=()
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry="${2%/}"; shift 2 ;;
    --push) push=1; shift ;;
    --torch-index) torch_index="$2"; shift 2 ;;
    --torch-wheels) torch_wheels="$(cd "$2" && pwd)"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    predictor) components+=(predictor-cpu predictor-cuda); shift ;;
    predictor-cpu|predictor-cuda|gateway|operator) components+=("$1"); shift ;;
    *) echo "build-images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#components[@]} -gt 0 ] || components=(predictor-cpu predictor-cuda gateway operator)
if [ "$push" = 1 ] && [ -z "$registry" ]; then
  echo "build-images.sh: --push needs --registry PREFIX (e.g. ghcr.io/your-org)" >&2; exit 2
fi

if [ -z "$engine" ]; then
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
if ! command -v "$engine" >/dev/null; then
  echo "build-images.sh: $engine not found (Debian: .ci/install-images.sh installs podman, buildah, runc)" >&2; exit 1
fi

engine_args=()
build_args=()
if [ "$engine" = podman ]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/scripts/podman/containers.conf}"
  ca="${MUSICSPLIT_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"
  state="${MUSICSPLIT_IMAGES_STATE:-/var/tmp/musicsplit-images}"
  mkdir -p "$state"
  build_args+=(--format docker --pull=never --layers)
  command -v buildah >/dev/null && build_args+=(--rm=false)
  if [ -f "$ca" ]; then
    # Only pip's config and the CA: every build step sees them, no image keeps them.
    printf '[global]\ncert = /run/musicsplit-build/ca.crt\n' > "$state/pip.conf"
    build_args+=(-v "$ca:/run/musicsplit-build/ca.crt:ro" -v "$state/pip.conf:/etc/pip.conf:ro")
  fi
fi

# The cpu target's torch: PyTorch's CPU index by default.
torch_cpu_args=() torch_cuda_args=()
if [ -n "$torch_wheels" ]; then
  [ "$engine" = podman ] || { echo "build-images.sh: --torch-wheels needs podman (it is mounted into the build); with docker use --torch-index" >&2; exit 2; }
  build_args+=(-v "$torch_wheels:/run/musicsplit-build/wheels:ro")
  wheels="--no-index --find-links /run/musicsplit-build/wheels"
  torch_cpu_args=(--build-arg "TORCH_PIP_ARGS=$wheels" --build-arg "TORCH=torch==$(sed -n 's/.*torch==\([0-9.]*\).*/\1/p' predictor/Dockerfile | head -1)")
  if ls "$torch_wheels"/torch-*+cpu*.whl >/dev/null 2>&1; then
    echo "== torch for the cpu target: CPU wheels from $torch_wheels; the cuda target's from PyPI"
  else
    # PyPI's (CUDA) torch: the cuda target's too, so neither build downloads it again.
    torch_cuda_args=(--build-arg "TORCH_CUDA_PIP_ARGS=$wheels")
    echo "!!! The cpu target's torch comes from $torch_wheels, which is not a +cpu build:" >&2
    echo "!!! that image carries torch's CUDA libraries (GBs). Published cpu images use PyTorch's CPU index." >&2
  fi
elif [ -n "$torch_index" ]; then
  torch_cpu_args=(--build-arg "TORCH_PIP_ARGS=--index-url $torch_index")
fi

# FROM names of the Dockerfiles we build, each present locally before the build.
ensure_base() {
  local base="$1"
  if [ "$engine" = docker ]; then return 0; fi
  if podman image exists "$base"; then
    local label
    label="$(podman image inspect --format '{{index .Labels "io.musicsplit.stand-in"}}' "$base")"
    if [ -n "$label" ] && [ "$label" != "<no value>" ]; then stand_ins+=("$base"); fi
    return 0
  fi
  echo "== pulling $base"
  if timeout 300 podman pull "docker.io/library/$base" >/dev/null 2>"$state/pull.log" \
     || timeout 300 podman pull "$base" >/dev/null 2>>"$state/pull.log"; then
    return 0
  fi
  echo "== $base cannot be pulled ($(tail -1 "$state/pull.log")); making a stand-in"
  make_stand_in "$base"
  stand_ins+=("$base")
}

# A Debian bookworm root with Debian's Python 3.11 (python, venv, pip), tagged
# under the pinned base's name so the Dockerfiles build unchanged.
make_stand_in() {
  local base="$1" rootfs
  command -v debootstrap >/dev/null || { echo "build-images.sh: debootstrap not found (.ci/install-images.sh)" >&2; exit 1; }
  rootfs="$(mktemp -d "$state/rootfs.XXXXXX")"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "${MUSICSPLIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$state/debootstrap.log" 2>&1 \
    || { tail -20 "$state/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change 'LABEL io.musicsplit.stand-in="Debian bookworm + Debian python3.11, made by scripts/build-images.sh"' \
    - "$base" >/dev/null
  rm -rf "$rootfs"
}

declare -A dockerfile=([predictor-cpu]=predictor/Dockerfile [predictor-cuda]=predictor/Dockerfile
                       [gateway]=gateway/Dockerfile [operator]=operator/Dockerfile)
declare -A target=([predictor-cpu]=cpu [predictor-cuda]=cuda [gateway]="" [operator]="")
declare -A tag=([predictor-cpu]="predictor:$version" [predictor-cuda]="predictor:$version-cuda"
                [gateway]="gateway:$version" [operator]="operator:$version")

stand_ins=()
for base in $(for c in "${components[@]}"; do sed -n 's/^FROM \([^ ]*\).*/\1/p' "${dockerfile[$c]}"; done | sort -u); do
  # A stage built FROM an earlier stage is not a base.
  grep -hq " AS $base\$" "${dockerfile[@]}" 2>/dev/null && continue
  ensure_base "$base"
done
for base in "${stand_ins[@]}"; do
  echo "!!! STAND-IN BASE: $base here is a local Debian bookworm with Debian's Python 3.11, not the published image."
  echo "!!! These images are for testing on this machine; publish images built on the pinned base."
done

# What a build reads: its Dockerfile and the files its COPY lines take (less
# what .dockerignore drops), the build's arguments and the base's ID. An image
# labelled with the same digest is up to date: no build at all (buildah's layer
# cache alone still reads every layer a COPY --from copies, 5 GB for the predictor).
inputs_digest() {
  local c="$1"; shift
  {
    printf '%s\n' "$@"
    "$engine" image inspect --format '{{.Id}}' "$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "${dockerfile[$c]}" | head -1)" 2>/dev/null || true
    find "${dockerfile[$c]}" .dockerignore pyproject.toml setup.py README.md musicsplit "${dockerfile[$c]%/Dockerfile}" \
      -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
}

# podman build --rm=false, then buildah rm of the working containers this build
# made: the same cleanup, 45 s faster for the predictor than podman's own (measured).
working_containers() { [ "$engine" = podman ] && command -v buildah >/dev/null && buildah containers -q | sort || true; }
remove_working_containers() {
  [ "$engine" = podman ] && command -v buildah >/dev/null || return 0
  local made
  made="$(comm -13 <(printf '%s\n' "$1") <(working_containers) | grep . || true)"
  if [ -n "$made" ]; then buildah rm $made >/dev/null; fi
}

built=()
for c in "${components[@]}"; do
  name="localhost/musicsplit-${tag[$c]}"
  args=(-f "${dockerfile[$c]}" -t "$name")
  [ -n "${target[$c]}" ] && args+=(--target "${target[$c]}")
  case "$c" in predictor-cpu) args+=("${torch_cpu_args[@]}") ;; predictor-cuda) args+=("${torch_cuda_args[@]}") ;; esac
  [ -n "$registry" ] && args+=(-t "$registry/${tag[$c]}")
  digest="$(inputs_digest "$c" "$engine" "${args[@]}")"
  built+=("$name")
  if [ "$("$engine" image inspect --format '{{index .Labels "io.musicsplit.inputs"}}' "$name" 2>/dev/null)" = "$digest" ] \
     && [ "${MUSICSPLIT_IMAGES_REBUILD:-0}" != 1 ]; then
    echo "== $c: $name is up to date (same Dockerfile, sources, arguments and base)"
    if [ -n "$registry" ]; then "$engine" tag "$name" "$registry/${tag[$c]}"; fi
  else
    echo "== $c: $engine build ${args[*]} ."
    previous="$("$engine" image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)"
    start=$(date +%s)
    before="$(working_containers)"
    "$engine" build "${engine_args[@]}" "${build_args[@]}" --label "io.musicsplit.inputs=$digest" "${args[@]}" . \
      > "${state:-/tmp}/build-$c.log" 2>&1 \
      || { tail -40 "${state:-/tmp}/build-$c.log" >&2; echo "build-images.sh: $c failed (log: ${state:-/tmp}/build-$c.log)" >&2; exit 1; }
    remove_working_containers "$before"
    echo "   built $name in $(( $(date +%s) - start )) s"
    # The image this one replaces, unless something still uses it (the layer cache keeps the rest).
    if [ -n "$previous" ] && [ "$previous" != "$("$engine" image inspect --format '{{.Id}}' "$name")" ]; then
      "$engine" rmi "$previous" >/dev/null 2>&1 || true
    fi
  fi
  if [ "$push" = 1 ]; then "$engine" push "$registry/${tag[$c]}"; fi
done

if [ "${MUSICSPLIT_IMAGES_PRUNE:-0}" = 1 ]; then "$engine" image prune -f >/dev/null; fi

echo "== images"
for name in "${built[@]}"; do
  size=$("$engine" image inspect --format '{{.Size}}' "$name")
  printf '%-48s %8d MB\n' "$name" $(( size / 1000000 ))
done
