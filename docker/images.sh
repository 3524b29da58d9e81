#!/usr/bin/env bash
# Builds every target of docker/Dockerfile with podman, offline, and gives the container tests
# (tests/tests/images.rs) the same podman. No registry is needed: the base images the Dockerfile
# names in its ARGs are replaced by local stand-ins built here from parts this machine has.
#
# Usage:
#   docker/images.sh build          stand-ins (cached), then every target, tagged as the manifests name them
#   docker/images.sh sizes          size of each image (bytes, and what tsboot adds to its base)
#   docker/images.sh names          "<target> <image>" per line
#   docker/images.sh podman ARGS..  podman with the storage and runtime options used here
#
# Stand-ins (docker/README.md, "Building offline"):
#   debian-iptables  debootstrap --variant=minbase of Debian bookworm with iptables (legacy backend
#                    selected, as the official image), nftables, iproute2, ca-certificates; the
#                    rootfs tarball is cached in $TSBOOT_IMAGES_CACHE. Replaces alpine+iptables
#                    (ARG IPTABLES_BASE) and is the base of the tailscale stand-in.
#   tailscale        debian-iptables + tailscale, tailscaled, containerboot in /usr/local/bin
#                    (Go-built by tests/real/install.sh), ENTRYPOINT containerboot, and busybox's
#                    wget (Debian's busybox-static) as the official alpine image has it (ARG
#                    TAILSCALE_IMAGE).
#   binaries         scratch + /out/<the static binaries of docker/build-static.sh> and the host's
#                    CA bundle (ARG BINARIES; replaces the Rust stage).
#
# podman runs daemonless as root with: vfs storage (no overlay mounts needed), cgroupfs, runc,
# file events; storage in $TSBOOT_PODMAN_ROOT (default ~/.cache/tsboot-podman), kept between
# runs so the stand-ins and unchanged layers are reused. Containers need explicit
# `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024` on machines whose hard limits runc cannot
# set (the tests pass them).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TAILSCALE_VERSION=v1.102.5
HEADSCALE_VERSION=v0.29.3
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${TSBOOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STANDIN_PACKAGES=iptables,nftables,iproute2,ca-certificates

podman_root="${TSBOOT_PODMAN_ROOT:-${HOME:-/root}/.cache/tsboot-podman}"
images_cache="${TSBOOT_IMAGES_CACHE:-${HOME:-/root}/.cache/tsboot-images}"
real_bin="${TSBOOT_REAL_BIN:-${TSBOOT_REAL_CACHE:-${HOME:-/root}/.cache/tsboot-real}/bin-tailscale-$TAILSCALE_VERSION-headscale-$HEADSCALE_VERSION}"

# The image names the Kubernetes manifests and compose.yaml use, tagged with the workspace version.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)"
registry=ghcr.io/example
# Every target of docker/Dockerfile but its intermediate stages (check_targets enforces it).
targets=(tsboot ts-prep ts-proxy-rules ts-kubestate ts-serve ts-health)
image_of() {
    case "$1" in
        tsboot) echo "$registry/tsboot:$version" ;;
        ts-prep) echo "$registry/tsboot-prep:$version" ;;
        ts-proxy-rules) echo "$registry/tsboot-proxy-rules:$version" ;;
        ts-kubestate) echo "$registry/tsboot-kubestate:$version" ;;
        ts-serve) echo "$registry/tsboot-serve:$version" ;;
        ts-health) echo "$registry/tsboot-health:$version" ;;
        *) return 1 ;;
    esac
}
standin_debian="localhost/tsboot-offline/debian-iptables:$DEBIAN_SUITE"
standin_tailscale="localhost/tsboot-offline/tailscale:$TAILSCALE_VERSION"
standin_binaries="localhost/tsboot-offline/binaries:$version"

pm() {
    mkdir -p "$podman_root"
    podman --root "$podman_root/storage" --runroot "${TSBOOT_PODMAN_RUNROOT:-/run/tsboot-podman}" \
        --storage-driver=vfs --cgroup-manager=cgroupfs --runtime=runc --events-backend=file "$@"
}

log() { echo "images.sh: $*" >&2; }
die() {
    echo "images.sh: $*" >&2
    exit 1
}

# The debootstrap rootfs, as a tarball cached outside the clone (it takes minutes to make).
debian_rootfs_tar() {
    local key tar tmp
    key="$DEBIAN_SUITE-minbase-$(echo "$STANDIN_PACKAGES" | tr ',' '-')"
    tar="$images_cache/$key.tar"
    if [[ -s "$tar" ]]; then
        echo "$tar"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    mkdir -p "$images_cache"
    tmp="$(mktemp -d "$images_cache/rootfs.XXXXXX")"
    # Downloads are kept between attempts: a mirror that drops a download now and then costs a
    # retry of what is missing, not of everything.
    mkdir -p "$images_cache/debs"
    local attempt=1
    while true; do
        log "debootstrap --variant=minbase $DEBIAN_SUITE ($STANDIN_PACKAGES) from $DEBIAN_MIRROR (attempt $attempt)"
        if debootstrap --variant=minbase --include="$STANDIN_PACKAGES" --cache-dir="$images_cache/debs" \
            "$DEBIAN_SUITE" "$tmp/root" "$DEBIAN_MIRROR" >"$tmp/debootstrap.log" 2>&1; then
            break
        fi
        umount -R "$tmp/root/proc" "$tmp/root/sys" 2>/dev/null || true
        if [[ "$attempt" -ge 3 ]]; then
            tail -n 20 "$tmp/debootstrap.log" >&2
            die "debootstrap failed $attempt times (log above)"
        fi
        grep '^[EW]:' "$tmp/debootstrap.log" | tail -n 3 >&2 || true
        rm -rf "${tmp:?}/root"
        attempt=$((attempt + 1))
    done
    # The official image's iptables is the legacy backend; tsboot's DNAT rule must land there too.
    chroot "$tmp/root" update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
    chroot "$tmp/root" update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null
    chroot "$tmp/root" iptables --version | grep -q legacy || die "stand-in iptables is not legacy"
    # What an image does not need: package lists and caches, docs.
    rm -rf "$tmp/root/var/cache/apt/"* "$tmp/root/var/lib/apt/lists/"* "$tmp/root/usr/share/doc" \
        "$tmp/root/usr/share/man" "$tmp/root/usr/share/info" "$tmp/root/var/log/"*
    tar --numeric-owner -C "$tmp/root" -cf "$tar.part" .
    mv "$tar.part" "$tar"
    rm -rf "$tmp"
    echo "$tar"
}

build_standins() {
    local tar ctx bindir bin
    if ! pm image exists "$standin_debian"; then
        tar="$(debian_rootfs_tar)"
        log "importing $tar as $standin_debian"
        pm import --change 'CMD ["/bin/bash"]' "$tar" "$standin_debian" >/dev/null
    fi

    for bin in tailscale tailscaled containerboot; do
        [[ -x "$real_bin/$bin" ]] || die "$real_bin/$bin is missing: run tests/real/install.sh (Go-built tailscale $TAILSCALE_VERSION)"
    done
    ctx="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: the directory is this call's
    trap "rm -rf '$ctx'" RETURN
    cp "$real_bin/tailscale" "$real_bin/tailscaled" "$real_bin/containerboot" "$ctx/"
    # The official image is alpine, whose busybox gives it `wget`, which healthchecks use
    # (docker/compose.yaml): the static busybox of Debian's busybox-static plays that part.
    local busybox
    busybox="$(command -v busybox || true)"
    if [[ -z "$busybox" ]] || ! file -L "$busybox" | grep -qE 'statically linked|static-pie'; then
        die "a static busybox is missing (apt-get install busybox-static)"
    fi
    cp "$busybox" "$ctx/busybox"
    cat >"$ctx/Containerfile" <<EOF
FROM $standin_debian
COPY busybox /bin/busybox
RUN ln -s /bin/busybox /usr/bin/wget
COPY tailscale tailscaled containerboot /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/containerboot"]
EOF
    log "building $standin_tailscale"
    pm build --quiet --pull=never -t "$standin_tailscale" "$ctx" >/dev/null

    bindir="$(bash "$repo/docker/build-static.sh" | tail -n1)"
    rm -rf "${ctx:?}/"*
    mkdir -p "$ctx/out"
    while IFS= read -r bin; do
        cp "$bindir/$bin" "$ctx/out/$bin"
    done < <(bash "$repo/docker/build-static.sh" --list)
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
    cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY out/ /out/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
EOF
    log "building $standin_binaries from $bindir"
    pm build --quiet --pull=never -t "$standin_binaries" "$ctx" >/dev/null
}

# Every image a manifest or compose.yaml names (nginx aside) must be one built here.
check_references() {
    local ref ok=true built=()
    for t in "${targets[@]}"; do
        built+=("$(image_of "$t")")
    done
    while IFS= read -r ref; do
        [[ "$ref" == docker.io/library/nginx:* ]] && continue
        if [[ " ${built[*]} " != *" $ref "* ]]; then
            echo "images.sh: $ref is named in docker/ but no target builds it" >&2
            ok=false
        fi
    done < <(grep -hoE '^\s*(- )?image:\s*\S+' "$repo"/docker/kubernetes/*.yaml "$repo/docker/compose.yaml" |
        sed -E 's/^\s*(- )?image:\s*//' | sort -u)
    [[ "$ok" == true ]] || die "docker/kubernetes or docker/compose.yaml name images no target builds"
}

# Every final stage of the Dockerfile (a FROM ... AS name that no other stage builds on or copies
# from) must be a target here, so a new image cannot be left out of the build and the tests.
check_targets() {
    local stage missing=()
    while IFS= read -r stage; do
        [[ " ${targets[*]} " == *" $stage "* ]] || missing+=("$stage")
    done < <(awk 'toupper($1) == "FROM" && toupper($(NF-1)) == "AS" { print $NF }' "$repo/docker/Dockerfile" |
        grep -vxE 'binaries-from-source|build|iptables-alpine')
    [[ ${#missing[@]} -eq 0 ]] || die "docker/Dockerfile targets not built here: ${missing[*]} (add them to targets=)"
}

build_all() {
    local start t
    start="$(date +%s)"
    command -v podman >/dev/null || die "podman is missing (apt-get install podman runc)"
    check_targets
    check_references
    build_standins
    for t in "${targets[@]}"; do
        log "building target $t as $(image_of "$t")"
        pm build --pull=never --layers -f "$repo/docker/Dockerfile" \
            --ignorefile "$repo/docker/Dockerfile.dockerignore" \
            --build-arg "BINARIES=$standin_binaries" \
            --build-arg "IPTABLES_BASE=$standin_debian" \
            --build-arg "TAILSCALE_IMAGE=$standin_tailscale" \
            --target "$t" -t "$(image_of "$t")" "$repo" >"$images_cache/build-$t.log" 2>&1 ||
            {
                tail -n 30 "$images_cache/build-$t.log" >&2
                die "podman build --target $t failed (log above)"
            }
    done
    # Layers of earlier builds that no tag names any more.
    pm image prune -f >/dev/null 2>&1 || true
    log "built ${#targets[@]} targets in $(($(date +%s) - start)) s"
}

size_of() { pm image inspect --format '{{.Size}}' "$1"; }

sizes() {
    local t
    printf '%-16s %-44s %12s\n' target image bytes
    for t in "${targets[@]}"; do
        printf '%-16s %-44s %12s\n' "$t" "$(image_of "$t")" "$(size_of "$(image_of "$t")")"
    done
    printf '%-16s %-44s %12s\n' base "$standin_tailscale" "$(size_of "$standin_tailscale")"
    printf '%-16s %-44s %12s\n' base "$standin_debian" "$(size_of "$standin_debian")"
    echo "tsboot adds $(($(size_of "$(image_of tsboot)") - $(size_of "$standin_tailscale"))) bytes to $standin_tailscale"
    echo "ts-proxy-rules adds $(($(size_of "$(image_of ts-proxy-rules)") - $(size_of "$standin_debian"))) bytes to $standin_debian"
}

mkdir -p "$images_cache"
case "${1:-}" in
    build) build_all ;;
    sizes) sizes ;;
    names)
        for t in "${targets[@]}"; do
            echo "$t $(image_of "$t")"
        done
        ;;
    podman)
        shift
        pm "$@"
        ;;
    *)
        echo "usage: $0 build | sizes | names | podman ARGS..." >&2
        exit 2
        ;;
esac
