#!/usr/bin/env bash
# Builds tsboot's binaries as static executables: the one build command shared by
# docker/Dockerfile (its build stage runs this script) and docker/ci-checks.sh (which runs it
# and checks the result), so the image and CI can never build differently.
#
# Usage:
#   docker/build-static.sh              build; print the directory holding the binaries
#   docker/build-static.sh --out DIR    build, then copy the binaries into DIR
#   docker/build-static.sh --list       print the binary names, one a line, and exit
#
# Static glibc: `-C target-feature=+crt-static` with an explicit `--target` (so build scripts
# and proc macros stay dynamic and only the final executables are static). No extra toolchain
# is needed: the host's gcc and glibc's libc.a (libc6-dev) are enough, and TLS is rustls, so
# nothing links OpenSSL. Honours CARGO_TARGET_DIR, so CI can reuse an earlier build.
set -euo pipefail

# Every binary an image may ship. docker/ci-checks.sh checks that each one the Dockerfile
# copies is listed here and is a binary target of the workspace.
BINS=(ts-init ts-prep ts-auth ts-proxy-rules ts-kubestate ts-serve)

out=""
case "${1:-}" in
    --list)
        printf '%s\n' "${BINS[@]}"
        exit 0
        ;;
    --out)
        out="${2:?--out needs a directory}"
        ;;
    "") ;;
    *)
        echo "usage: $0 [--list | --out DIR]" >&2
        exit 2
        ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# The host's own triple, named explicitly (x86_64-unknown-linux-gnu on x86_64 machines);
# an arm64 builder gets aarch64-unknown-linux-gnu the same way.
target="${TSBOOT_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
case "$target" in
    *-linux-gnu) ;;
    *)
        echo "build-static.sh: unsupported target '$target' (expected *-linux-gnu)" >&2
        exit 2
        ;;
esac

pkgs=()
for bin in "${BINS[@]}"; do
    pkgs+=(-p "$bin")
done

echo "build-static.sh: cargo build --release --locked --target $target ${pkgs[*]} (RUSTFLAGS += -C target-feature=+crt-static)" >&2
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" "${pkgs[@]}"

bindir="${CARGO_TARGET_DIR:-$repo/target}/$target/release"
for bin in "${BINS[@]}"; do
    if [[ ! -x "$bindir/$bin" ]]; then
        echo "build-static.sh: $bindir/$bin was not built" >&2
        exit 1
    fi
done

if [[ -n "$out" ]]; then
    mkdir -p "$out"
    for bin in "${BINS[@]}"; do
        cp "$bindir/$bin" "$out/$bin"
    done
    echo "$out"
else
    echo "$bindir"
fi
