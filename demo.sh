#!/usr/bin/env bash
# The demo of the full boot: builds the workspace, then runs ts-init against the test doubles
# (fake tailscaled, tailscale, iptables and a fake kube-apiserver over TLS) in a temporary root.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --quiet
exec cargo run --quiet -p tsboot-tests --bin tsboot-demo
