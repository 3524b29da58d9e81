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
# * Builds: `cargo build --release --workspace` (the dynamically linked binaries, the test
#   doubles and the bench driver `tsboot-bench`, a workspace member built on the test harness
#   with no test target), and `docker/build-static.sh` (the static binaries the image ships).
#   TSBOOT_BENCH_NO_STATIC=1
#   skips the static build. When the musl target and musl-gcc are installed
#   (`rustup target add x86_64-unknown-linux-musl`, `apt-get install musl-tools`), a static musl
#   build is measured too, as the candidate for the image (TSBOOT_BENCH_MUSL=0 skips it,
#   TSBOOT_BENCH_MUSL=1 insists on it).
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

echo "bench/run.sh: cargo build --release --workspace" >&2
cargo build --release --workspace >&2
variants=()
if [[ "${TSBOOT_BENCH_NO_STATIC:-}" != 1 ]]; then
    echo "bench/run.sh: docker/build-static.sh (the image's static binaries)" >&2
    static_dir="$(bash docker/build-static.sh)"
    variants+=(--variant "static=$static_dir")
fi
variants+=(--variant "dynamic=$CARGO_TARGET_DIR/release")
musl="${TSBOOT_BENCH_MUSL:-auto}"
if [[ "$musl" != 0 ]]; then
    triple="$(uname -m)-unknown-linux-musl"
    if rustup target list --installed 2>/dev/null | grep -qx "$triple" && command -v musl-gcc >/dev/null; then
        echo "bench/run.sh: static musl build ($triple), the candidate for the image" >&2
        cargo build --release --locked --target "$triple" \
            -p ts-init -p ts-prep -p ts-auth -p ts-proxy-rules -p ts-kubestate >&2
        variants+=(--variant "musl=$CARGO_TARGET_DIR/$triple/release")
    elif [[ "$musl" == 1 ]]; then
        echo "bench/run.sh: TSBOOT_BENCH_MUSL=1 needs: rustup target add $triple; apt-get install musl-tools" >&2
        exit 1
    else
        echo "bench/run.sh: no musl target or musl-gcc: the musl build is not measured" >&2
    fi
fi
after="$(source_state)"
if [[ "$before" != "$after" ]]; then
    echo "bench/run.sh: warning: the source changed during the builds ($before -> $after); the builds may differ" >&2
    after="$before -> $after (changed during the builds)"
fi
export TSBOOT_BENCH_SOURCE="$after"

out="${BENCH_OUT:-$CARGO_TARGET_DIR/bench-report.md}"
exec "$CARGO_TARGET_DIR/release/tsboot-bench" \
    "${variants[@]}" \
    --out "$out" \
    "$@"
