#!/usr/bin/env bash
# tsboot's benchmark, in one command (from the repository root):
#
#   bash bench/run.sh [tsboot-bench flags, e.g. --boot-runs 40 --only boot,reaction]
#
# Builds what it measures, then measures in one run, side by side with tini and dumb-init:
# binary sizes, the resident memory of every tsboot process after startup, boot latency with
# its phases, reaction latency to a netmap change, and reaping 10,000 orphans as PID 1.
# See BENCHMARKS.md for the method and the figures, bench/src/main.rs for the flags.
#
# * Root is needed for the reaping comparison (a PID namespace via `unshare`); without it that
#   part is skipped. As root, tini and dumb-init are installed from apt if missing.
# * Builds: `cargo build --release --workspace` (the dynamically linked binaries and the test
#   doubles, release), `docker/build-static.sh` (the static binaries the image ships), and the
#   bench driver (bench/, a std-only crate outside the workspace). TSBOOT_BENCH_NO_STATIC=1
#   skips the static build and measures the dynamic binaries only.
# * The report (Markdown) is printed and written to $BENCH_OUT (default
#   $CARGO_TARGET_DIR/bench-report.md).
# * Nothing here asserts on time: the test suite never runs this.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

is_root=0
[[ "$(id -u)" == 0 ]] && is_root=1
if ((!is_root)); then
    echo "bench/run.sh: not root: the PID-namespace reaping comparison will be skipped" >&2
fi

if ! command -v tini >/dev/null || ! command -v dumb-init >/dev/null; then
    if ((is_root)) && command -v apt-get >/dev/null; then
        echo "bench/run.sh: installing tini and dumb-init (Debian packages)" >&2
        apt-get install -y --no-install-recommends tini dumb-init >&2 ||
            { apt-get update >&2 && apt-get install -y --no-install-recommends tini dumb-init >&2; }
    else
        echo "bench/run.sh: tini and dumb-init are needed for the comparison: apt-get install tini dumb-init" >&2
        exit 1
    fi
fi

echo "bench/run.sh: cargo build --release --workspace" >&2
cargo build --release --workspace >&2
variants=()
if [[ "${TSBOOT_BENCH_NO_STATIC:-}" != 1 ]]; then
    echo "bench/run.sh: docker/build-static.sh (the image's static binaries)" >&2
    static_dir="$(bash docker/build-static.sh)"
    variants+=(--variant "static=$static_dir")
fi
variants+=(--variant "dynamic=$CARGO_TARGET_DIR/release")
echo "bench/run.sh: building the bench driver" >&2
cargo build --release --manifest-path bench/Cargo.toml >&2

out="${BENCH_OUT:-$CARGO_TARGET_DIR/bench-report.md}"
exec "$CARGO_TARGET_DIR/release/tsboot-bench" \
    "${variants[@]}" \
    --fakes "$CARGO_TARGET_DIR/release" \
    --fixtures "$repo/tests/fixtures/ipn-bus" \
    --out "$out" \
    "$@"
