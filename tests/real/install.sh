#!/usr/bin/env bash
# Installs the real programs the real-peer tests run, built from their Go modules:
# tailscaled, tailscale and containerboot (tailscale.com) and headscale. Idempotent: a binary
# already in the cache at the pinned version is not rebuilt. The cache lives outside the clone
# (default ~/.cache/tsboot-real/<component>-<version>/); the tests find it through
# TSBOOT_REAL_BIN or the same default.
#
# Pins: the drop-in image pins tailscale v1.102; v1.102.5 is the newest v1.102 release the
# module proxy serves. Headscale v0.29.3 is the newest v0.29 release served.
set -euo pipefail

TAILSCALE_VERSION=${TAILSCALE_VERSION:-v1.102.5}
HEADSCALE_VERSION=${HEADSCALE_VERSION:-v0.29.3}
cache=${TSBOOT_REAL_CACHE:-${HOME:-/root}/.cache/tsboot-real}
bin=${TSBOOT_REAL_BIN:-$cache/bin-tailscale-$TAILSCALE_VERSION-headscale-$HEADSCALE_VERSION}
mkdir -p "$bin"

command -v go >/dev/null || { echo "install.sh: Go is required (https://go.dev/dl or apt-get install golang)" >&2; exit 1; }
export CGO_ENABLED=0
export GOFLAGS=${GOFLAGS:--trimpath}
# Keep Go's own caches outside the clone too.
export GOPATH=${GOPATH:-$cache/gopath}
export GOCACHE=${GOCACHE:-$cache/gocache}

build() {
  local name=$1 module=$2
  if [ -x "$bin/$name" ]; then
    echo "install.sh: $name already built ($bin/$name)"
    return
  fi
  echo "install.sh: building $module"
  GOBIN="$bin" go install "$module"
}

build tailscaled "tailscale.com/cmd/tailscaled@$TAILSCALE_VERSION"
build tailscale "tailscale.com/cmd/tailscale@$TAILSCALE_VERSION"
build containerboot "tailscale.com/cmd/containerboot@$TAILSCALE_VERSION"
build derper "tailscale.com/cmd/derper@$TAILSCALE_VERSION"
# `go install headscale@version` asks the proxy for the module's version list (to look for a
# deprecation notice), which the proxy refuses for headscale; download the module at its pinned
# version instead and build inside it, with its own go.mod and go.sum.
if [ -x "$bin/headscale" ]; then
  echo "install.sh: headscale already built ($bin/headscale)"
else
  echo "install.sh: building github.com/juanfont/headscale@$HEADSCALE_VERSION"
  dir=$(go mod download -json "github.com/juanfont/headscale@$HEADSCALE_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || { echo "install.sh: headscale $HEADSCALE_VERSION did not download" >&2; exit 1; }
  go -C "$dir" build -o "$bin/headscale" ./cmd/headscale
fi

echo "install.sh: real programs in $bin"
ls -l "$bin"
