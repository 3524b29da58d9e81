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
# Static musl (the shipped build): `--target <arch>-unknown-linux-musl`, static (static-pie) by
# default, so build scripts and proc macros stay host builds and only the final executables are
# static. Needs the Rust target (`rustup target add <arch>-unknown-linux-musl`) and musl-gcc
# (Debian/Ubuntu `musl-tools`) for ring's C code. Chosen over static glibc because static glibc
# costs about 740 kB in every binary and its resident set (BENCHMARKS.md).
# When either is missing, it falls back to static glibc (`-C target-feature=+crt-static` on the
# host's *-linux-gnu target: gcc and libc6-dev are enough) and says so loudly on stderr;
# TSBOOT_STATIC_LIBC=musl refuses the fallback (exit 1), TSBOOT_STATIC_LIBC=glibc asks for it.
# TLS is rustls, so nothing links OpenSSL. Honours CARGO_TARGET_DIR, so CI can reuse a build.
set -euo pipefail

# Every binary an image may ship. docker/ci-checks.sh checks that each one the Dockerfile
# copies is listed here and is a binary target of the workspace.
BINS=(ts-init ts-prep ts-auth ts-proxy-rules ts-kubestate ts-serve ts-health)

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

# The host's architecture, named explicitly (x86_64 on x86_64 machines, aarch64 on arm64).
arch="$(rustc -vV | sed -n 's/^host: \([^-]*\)-.*/\1/p')"
libc="${TSBOOT_STATIC_LIBC:-auto}"
musl_target="$arch-unknown-linux-musl"
have_musl() {
    rustup target list --installed 2>/dev/null | grep -qx "$musl_target" && command -v musl-gcc >/dev/null
}
case "$libc" in
    musl)
        have_musl || {
            echo "build-static.sh: TSBOOT_STATIC_LIBC=musl needs: rustup target add $musl_target; apt-get install musl-tools" >&2
            exit 1
        }
        ;;
    glibc) ;;
    auto)
        if have_musl; then
            libc=musl
        else
            libc=glibc
            {
                echo "build-static.sh: ************************************************************"
                echo "build-static.sh: WARNING: no $musl_target Rust target or no musl-gcc here:"
                echo "build-static.sh: FALLING BACK TO STATIC GLIBC, which is NOT the shipped build"
                echo "build-static.sh: (about 740 kB more per binary and per resident process)."
                echo "build-static.sh: Fix: rustup target add $musl_target; apt-get install musl-tools"
                echo "build-static.sh: ************************************************************"
            } >&2
        fi
        ;;
    *)
        echo "build-static.sh: TSBOOT_STATIC_LIBC must be musl, glibc or unset, not '$libc'" >&2
        exit 2
        ;;
esac
if [[ "$libc" == musl ]]; then
    target="$musl_target"
    flags=""
else
    target="$arch-unknown-linux-gnu"
    flags="-C target-feature=+crt-static"
fi

pkgs=()
for bin in "${BINS[@]}"; do
    pkgs+=(-p "$bin")
done

echo "build-static.sh: static $libc: cargo build --release --locked --target $target ${pkgs[*]}${flags:+ (RUSTFLAGS += $flags)}" >&2
RUSTFLAGS="${RUSTFLAGS:-}${RUSTFLAGS:+${flags:+ }}$flags" \
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
