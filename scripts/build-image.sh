#!/usr/bin/env bash
# Builds the dmutex runtime image with no registry at all: the static binary is built on this host, then
# docker/Dockerfile.scratch copies it into an empty (FROM scratch) image. Nothing is pulled.
#
#   scripts/build-image.sh                              # -> dmutex:latest, the name docker-compose.yml uses
#   DMUTEX_IMAGE=dmutex:0.1.0 scripts/build-image.sh    # the version tag the Kubernetes manifests pin
#
# DMUTEX_IMAGE names the image here and in docker-compose.yml (default dmutex:latest in both).
# Needs a Linux host with cargo, glibc's static libraries (libc6-dev) and docker; the image is for the host's
# architecture (<uname -m>-unknown-linux-gnu; only x86_64 is tested). Honours CARGO_TARGET_DIR. With a registry,
# `docker build -t dmutex:latest .` (the multi-stage Dockerfile) builds the same runtime image.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${DMUTEX_IMAGE:-dmutex:latest}"
TARGET="$(uname -m)-unknown-linux-gnu"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/$TARGET/release/dmutex"

cd "$ROOT"
echo "==> cargo build --release --target $TARGET (static glibc)"
# --target keeps RUSTFLAGS away from build scripts and proc macros, which cannot be linked statically.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$TARGET" --bin dmutex

# A static binary has no program interpreter; anything else would not start in an empty image.
if command -v file >/dev/null && ! file -L "$BIN" | grep -Eq 'static(-pie)? linked'; then
    echo "error: $BIN is not statically linked: $(file -L "$BIN")" >&2
    exit 1
fi

CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/dmutex-image.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
cp "$BIN" "$CONTEXT/dmutex"
# Line tables stay in the release build for backtraces on the host; the image only needs symbols.
strip --strip-debug "$CONTEXT/dmutex" 2>/dev/null || true
echo 'dmutex:x:10001:10001:dmutex:/:/sbin/nologin' > "$CONTEXT/passwd"
echo 'dmutex:x:10001:' > "$CONTEXT/group"
mkdir "$CONTEXT/data"
cp docker/Dockerfile.scratch "$CONTEXT/Dockerfile"

VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# The repository URL for org.opencontainers.image.source, without any credentials an https remote may hold.
SOURCE="$(git remote get-url origin 2>/dev/null | sed -E 's#^([a-z+]+://)[^/@]*@#\1#' || true)"
SOURCE="${SOURCE:-unknown}"

# Without the buildx plugin, a recent docker CLI refuses BuildKit builds; the classic builder does FROM scratch.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
echo "==> docker build -t $IMAGE (docker/Dockerfile.scratch)"
docker build --quiet -t "$IMAGE" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" \
    --build-arg "SOURCE=$SOURCE" \
    "$CONTEXT" 2> >(grep -v -e 'legacy builder is deprecated' -e 'BuildKit is currently disabled' \
        -e 'environment-variable' -e '^ *$' >&2 || true) >/dev/null

SIZE="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
echo "==> built $IMAGE: $((SIZE / 1024 / 1024)) MiB ($SIZE bytes)"
