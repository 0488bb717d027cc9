# crossmon as a sidecar image, built from source on any host that can pull
# the Rust image (`docker build -t crossmon:dev .`, or `docker compose build`).
# Where no registry is reachable, `cargo xtask image` builds the same runtime
# stage around a binary built on the host: it takes the stage below, from
# `FROM scratch AS runtime` to the end of this file, as it is.
#
# How to run it (capabilities, mounts, why each): README, "Quick start".

# --- Build: the eBPF object (nightly, bpf-linker) and a static agent. ---
ARG RUST_VERSION=1.95.0
FROM rust:${RUST_VERSION}-bookworm AS binary

# The nightly the eBPF crate builds with, pinned like the aya family it must
# build (root Cargo.toml). aya-build runs `rustup run nightly`, hence the
# name `nightly` for it.
ARG NIGHTLY_DATE=2026-05-20
ARG BPF_LINKER_VERSION=0.13.0
RUN rustup toolchain install "nightly-${NIGHTLY_DATE}" --profile minimal --component rust-src \
 && mv "${RUSTUP_HOME}/toolchains/nightly-${NIGHTLY_DATE}-x86_64-unknown-linux-gnu" \
       "${RUSTUP_HOME}/toolchains/nightly-x86_64-unknown-linux-gnu"

# bpf-linker must link the LLVM whose bitcode the nightly emits: its major is
# read from the nightly, never assumed (as `cargo xtask setup` does). Debian
# 12 carries LLVM 22 in bookworm-security; for another major, add
# apt.llvm.org's repository first.
RUN llvm="$(rustup run nightly rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')" \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      "llvm-${llvm}-dev" "libpolly-${llvm}-dev" libzstd-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/* \
 && LLVM_PREFIX="/usr/lib/llvm-${llvm}" cargo install --locked \
      --version "${BPF_LINKER_VERSION}" bpf-linker \
      --no-default-features --features "llvm-${llvm}"

WORKDIR /src
COPY . .
# Static, so the runtime image needs no libc: the same build as
# `cargo xtask image` (xtask/src/image.rs, STATIC_RUSTFLAGS and TARGET).
RUN CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --release --package monitor --bin crossmon \
      --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/crossmon /crossmon

# --- Runtime: the binary alone: no shell, no libc, no package manager. ---
FROM scratch AS runtime
LABEL org.opencontainers.image.title="crossmon" \
      org.opencontainers.image.description="eBPF monitor of the traffic between the containers of a Docker host" \
      org.opencontainers.image.source="https://github.com/crossmon/crossmon" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=binary /crossmon /crossmon
# The new-connection baseline survives restarts here.
VOLUME ["/var/lib/crossmon"]
# Root inside the container, holding only the capabilities it is given
# (`--cap-drop ALL --cap-add ...`): Docker grants added capabilities to root,
# not to other users.
USER 0:0
# Loopback: with the host's network namespace this is the host's loopback,
# where a Prometheus on the host network scrapes it.
ENTRYPOINT ["/crossmon"]
CMD ["run", "--listen", "127.0.0.1:9810"]
