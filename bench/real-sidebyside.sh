#!/usr/bin/env bash
# tsboot vs the real containerboot, same real tailscaled and headscale, interleaved runs
# (as root, from the repository root):
#
#   bash bench/real-sidebyside.sh [--runs N] [--mode userspace|kernel|both]
#
# Builds the release binaries (what the image ships) and the real programs, then runs
# tests/src/bin/real-sidebyside.rs, which prints a Markdown table: exec → Running, exec →
# `Startup complete`, resident memory of the wrapper processes; median (min–max).
# A benchmark: the test suite never runs it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/tsboot-target}"
bash tests/real/install.sh >&2
cargo build --release --workspace --bins >&2
exec "$CARGO_TARGET_DIR/release/real-sidebyside" "$@"
