# dmutex container image: the normal multi-stage build (needs a registry for the rust image).
#
#   docker build -t dmutex:latest .                              # the name docker-compose.yml uses (DMUTEX_IMAGE)
#   docker build -t dmutex:0.1.0 .                               # the version tag k8s/ pins
#   docker build --platform linux/arm64 -t dmutex:0.1.0-arm64 .  # another platform (emulated build stage)
#
# It builds for the platform it is asked for: the build stage runs on that platform and compiles for its own
# architecture (`uname -m`), so linux/amd64 gives x86_64, linux/arm64 aarch64. Only x86_64 is tested.
# No registry at hand? scripts/build-image.sh builds the same runtime image offline (binary built on the host,
# docker/Dockerfile.scratch). Both produce a FROM-scratch image holding one static binary.

ARG RUST_VERSION=1.95

# ---- build: a static glibc binary -------------------------------------------------------------------------------
FROM rust:${RUST_VERSION} AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"

# Dependency layer: build every dependency against stub sources, so editing src/ does not rebuild them.
# --target (this platform's own triple) keeps RUSTFLAGS away from build scripts and proc macros.
COPY Cargo.toml Cargo.lock ./
RUN TARGET="$(uname -m)-unknown-linux-gnu" \
    && mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '//! stub' > src/lib.rs \
    && cargo build --release --locked --target "$TARGET" \
    && rm -rf src \
        "target/$TARGET/release/.fingerprint/dmutex-"* \
        "target/$TARGET/release/deps/dmutex-"* \
        "target/$TARGET/release/deps/libdmutex-"* \
        "target/$TARGET/release/dmutex"*

# The real sources. The fingerprints of the stub crate are gone, so cargo rebuilds only dmutex itself.
COPY . .
RUN TARGET="$(uname -m)-unknown-linux-gnu" \
    && touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target "$TARGET" \
    && cp "target/$TARGET/release/dmutex" /dmutex \
    && strip --strip-debug /dmutex \
    && mkdir -p /rootfs/etc /rootfs/data \
    && echo 'dmutex:x:10001:10001:dmutex:/:/sbin/nologin' > /rootfs/etc/passwd \
    && echo 'dmutex:x:10001:' > /rootfs/etc/group

# ---- runtime: nothing but the binary ----------------------------------------------------------------------------
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# Where the sources live (the repository URL): docker build --build-arg SOURCE=https://… .
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="dmutex" \
      org.opencontainers.image.description="Distributed mutual exclusion: Lamport, Ricart-Agrawala and probable-owner locking" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /rootfs/etc/passwd /rootfs/etc/group /etc/
# /data owned by the runtime user: a named volume mounted there (the workload counter) inherits the owner.
COPY --from=build --chown=10001:10001 /rootfs/data /data
COPY --from=build /dmutex /dmutex
USER 10001:10001
EXPOSE 7070 8080
# `dmutex health` probes DMUTEX_ENDPOINT (default http://127.0.0.1:8080), not DMUTEX_HTTP_ADDR: a node moved to
# another port needs DMUTEX_ENDPOINT=http://127.0.0.1:PORT as well, or the container never turns healthy.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 CMD ["/dmutex", "health", "--ready"]
ENTRYPOINT ["/dmutex"]
CMD ["node"]
