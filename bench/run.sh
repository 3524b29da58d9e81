#!/usr/bin/env bash
# tsboot's benchmark, in one command (from the repository root):
#
#   bash bench/run.sh [tsboot-bench flags, e.g. --boot-runs 40 --only boot,reaction]
#
# Builds what it measures, then measures in one run every figure of issue #18 side by side
# with its goal (the report opens with that table), plus tini and dumb-init for scale: binary
# and image sizes, the resident memory of every tsboot process after startup, boot latency
# with its phases, reaction latency to a netmap change, reaping 10,000 orphans as PID 1,
# flapping (1,000 self changes/s for 10 s), and tsboot against the real containerboot with the
# real tailscaled and headscale. See BENCHMARKS.md for the method and the figures,
# bench/src/main.rs for the flags.
#
# * Root is needed for the reaping comparison (a PID namespace) and the real-daemon comparison
#   (network namespaces); without it those parts are skipped. As root, tini and dumb-init are
#   installed from apt if missing, and the real programs by tests/real/install.sh (cached).
# * Builds: `docker/build-static.sh` (the static musl binaries the image ships: the "static"
#   build measured), and `cargo build --profile bench-tools` of the driver `tsboot-bench` (a
#   workspace member on the test harness, with no test target) and the test doubles.
#   TSBOOT_BENCH_GLIBC=1 also measures the static glibc fallback (TSBOOT_STATIC_LIBC=glibc);
#   TSBOOT_BENCH_DYNAMIC=1 also measures a plain `cargo build --release` (dynamic glibc).
# * Images: the sizes come from `docker/images.sh sizes` when `docker/images.sh build` ran.
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

# What is measured: the commit plus a digest of uncommitted changes, checked again after the
# builds so that a tree edited in between (three builds take minutes) is reported.
source_state() {
    if git rev-parse --git-dir >/dev/null 2>&1; then
        printf '%s%s' "$(git rev-parse --short HEAD)" \
            "$(git diff HEAD --quiet -- . ':!bench' 2>/dev/null || echo "+dirty:$(git diff HEAD -- . ':!bench' | sha256sum | cut -c1-12)")"
    else
        echo "unknown (not a git checkout)"
    fi
}
before="$(source_state)"

echo "bench/run.sh: cargo build --profile bench-tools (driver and test doubles)" >&2
cargo build --profile bench-tools --locked -p tsboot-tests -p tsboot-bench --bins >&2
tools="$CARGO_TARGET_DIR/bench-tools"
echo "bench/run.sh: docker/build-static.sh (the image's static binaries)" >&2
static_dir="$(bash docker/build-static.sh | tail -n1)"
variants=(--variant "static=$static_dir")
if [[ "${TSBOOT_BENCH_GLIBC:-}" == 1 ]]; then
    echo "bench/run.sh: the static glibc fallback, for comparison" >&2
    variants+=(--variant "static-glibc=$(TSBOOT_STATIC_LIBC=glibc bash docker/build-static.sh | tail -n1)")
fi
if [[ "${TSBOOT_BENCH_DYNAMIC:-}" == 1 ]]; then
    echo "bench/run.sh: cargo build --release (dynamic glibc), for comparison" >&2
    cargo build --release --locked --workspace --bins >&2
    variants+=(--variant "dynamic=$CARGO_TARGET_DIR/release")
fi
if ((is_root)); then
    # The real tailscaled, containerboot and headscale (cached after the first run).
    bash tests/real/install.sh >&2 || echo "bench/run.sh: tests/real/install.sh failed: the real-daemon comparison will say why" >&2
    # The lab boots the shipped ts-init (its phases sit beside it).
    export TSBOOT_REAL_TS_INIT="$static_dir/ts-init"
fi

after="$(source_state)"
if [[ "$before" != "$after" ]]; then
    echo "bench/run.sh: warning: the source changed during the builds ($before -> $after); the builds may differ" >&2
    after="$before -> $after (changed during the builds)"
fi
export TSBOOT_BENCH_SOURCE="$after"

out="${BENCH_OUT:-$CARGO_TARGET_DIR/bench-report.md}"
exec "$tools/tsboot-bench" \
    "${variants[@]}" \
    --out "$out" \
    "$@"
