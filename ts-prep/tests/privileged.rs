//! ts-prep doing the real thing: mknod of the tun device, a missing CAP_MKNOD, read-only
//! sysctls (a read-only bind mount, as Docker's /proc/sys is) and the real forwarding sysctls
//! of a fresh network namespace. Each test needs root (and `unshare`/`setpriv`/`mount`); it
//! prints `SKIPPED:` on stderr and returns when they are not available.

mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};

const FORWARDING_NEEDED: &str =
    "To run tailscale as a proxy or router container, IP forwarding must be enabled.";
const ADVICE_CONTAINER: &str = "You can fix this by running the container with privileged=true, or the equivalent in your container runtime that permits access to sysctls.";

/// `sh -c` script: make `$1` a read-only bind mount of itself in a private mount namespace,
/// then run `$2` (ts-prep) there. The mount vanishes with the namespace.
const RO_BIND_THEN_RUN: &str =
    r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2""#;

fn run_with_read_only(path: &std::path::Path, env: &[(&str, &str)]) -> Run {
    let path = path.to_str().expect("UTF-8 temp path");
    run_program(
        "unshare",
        &["-m", "sh", "-c", RO_BIND_THEN_RUN, "sh", path, BIN],
        env,
    )
}

fn can_mount_namespaces(test: &str) -> bool {
    require_root(test)
        && works(test, &["unshare", "-m", "true"])
        && works(test, &["mount", "--version"])
}

#[test]
fn creates_the_tun_device() {
    if !require_root("creates_the_tun_device") {
        return;
    }
    let root = TempRoot::new("tun");
    let env = [
        ("TS_TEST_ONLY_ROOT", root.root_str()),
        ("TS_USERSPACE", "false"),
    ];
    let run = ts_prep(&[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let dir = std::fs::metadata(root.path("dev/net")).expect("dev/net");
    assert!(dir.is_dir());
    assert_eq!(dir.permissions().mode() & 0o7777, 0o755);
    let tun = std::fs::symlink_metadata(root.path(TUN)).expect("dev/net/tun");
    assert!(tun.file_type().is_char_device(), "{:?}", tun.file_type());
    assert_eq!(nix::sys::stat::major(tun.rdev()), 10);
    assert_eq!(nix::sys::stat::minor(tun.rdev()), 200);
    assert_eq!(tun.permissions().mode() & 0o7777, 0o600);

    // Second run: the node exists, nothing is created (a second mknod would fail EEXIST).
    let run = ts_prep(&[], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("Created"), "{}", run.stderr);
}

#[test]
fn tun_without_cap_mknod_fails_with_advice() {
    let test = "tun_without_cap_mknod_fails_with_advice";
    if !require_root(test) || !works(test, &["setpriv", "--bounding-set", "-mknod", "true"]) {
        return;
    }
    let root = TempRoot::with_sysctls("nomknod", "0", "0");
    let run = run_program(
        "setpriv",
        &["--bounding-set", "-mknod", BIN],
        &[
            ("TS_TEST_ONLY_ROOT", root.root_str()),
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "10.0.0.0/8"),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let line = run.line_with("Unable to create tuntap device file:");
    assert!(
        line.contains(&format!(
            " Unable to create tuntap device file: mknod \"{}\": ",
            root.path(TUN).display()
        )),
        "{line}"
    );
    assert!(line.contains("Operation not permitted"), "{line}");
    assert!(run.stderr.contains("CAP_MKNOD"), "advice: {}", run.stderr);
    assert!(!root.exists(TUN));
    // The tun failure comes first, as in the reference: forwarding was not touched.
    assert_eq!(root.read(V4), "0");
}

#[test]
fn read_only_sysctl_fails_enabling_and_changes_nothing() {
    let test = "read_only_sysctl_fails_enabling_and_changes_nothing";
    if !can_mount_namespaces(test) {
        return;
    }
    let root = TempRoot::with_sysctls("ro", "0", "0").with_tun_placeholder();
    let run = run_with_read_only(
        &root.path("proc/sys"),
        &[
            ("TS_TEST_ONLY_ROOT", root.root_str()),
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let line = run.line_with("Failed to enable IP forwarding:");
    assert!(
        line.ends_with(&format!(
            " Failed to enable IP forwarding: enabling \"{}\": Read-only file system (os error 30)",
            root.path(V4).display()
        )),
        "{line}"
    );
    run.assert_logged(&format!(" {FORWARDING_NEEDED}"));
    run.assert_logged(&format!(" {ADVICE_CONTAINER}"));
    assert_eq!((root.read(V4), root.read(V6)), ("0".into(), "0".into()));
}

#[test]
fn read_only_sysctl_already_one_passes() {
    // The reference's point of "already 1 ⇒ no write": a read-only /proc/sys with the right
    // values (set by a privileged initContainer) must not fail.
    let test = "read_only_sysctl_already_one_passes";
    if !can_mount_namespaces(test) {
        return;
    }
    let root = TempRoot::with_sysctls("ro_ok", "1\n", "1\n").with_tun_placeholder();
    let run = run_with_read_only(
        &root.path("proc/sys"),
        &[
            ("TS_TEST_ONLY_ROOT", root.root_str()),
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((root.read(V4), root.read(V6)), ("1\n".into(), "1\n".into()));
}

#[test]
fn failed_ipv6_write_restores_ipv4() {
    let test = "failed_ipv6_write_restores_ipv4";
    if !can_mount_namespaces(test) {
        return;
    }
    let root = TempRoot::with_sysctls("undo", "0\n", "0\n").with_tun_placeholder();
    let run = run_with_read_only(
        &root.path(V6),
        &[
            ("TS_TEST_ONLY_ROOT", root.root_str()),
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let line = run.line_with("Failed to enable IP forwarding:");
    assert!(
        line.contains(&format!("enabling \"{}\": ", root.path(V6).display())),
        "{line}"
    );
    // ip_forward was written, then put back as it was.
    assert_eq!(root.read(V4), "0\n");
    assert!(run.stderr.contains("Restored"), "{}", run.stderr);
}

#[test]
fn real_forwarding_sysctls_in_a_fresh_network_namespace() {
    let test = "real_forwarding_sysctls_in_a_fresh_network_namespace";
    if !require_root(test) || !works(test, &["unshare", "-n", "true"]) {
        return;
    }
    if !std::path::Path::new("/proc/sys/net/ipv6/conf/all/forwarding").exists() {
        eprintln!("SKIPPED: {test}: this kernel has no IPv6 (/proc/sys/net/ipv6 missing)");
        return;
    }
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    // Inside one new network namespace: show the values, run ts-prep, show them again.
    let script = r#"cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding
"$1"; rc=$?
cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding
exit $rc"#;
    let run = run_program(
        "unshare",
        &["-n", "sh", "-c", script, "sh", BIN],
        &[
            ("TS_TEST_ONLY_ROOT", "/"),
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "10.0.0.0/24,fd00::/64"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let values: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(values.len(), 4, "{}", run.stdout);
    if values[..2] == ["1", "1"] {
        eprintln!("note: {test}: a new namespace already had forwarding on; nothing to write");
    }
    assert_eq!(values[2..], ["1", "1"], "after ts-prep: {}", run.stdout);
    // The host's namespace is untouched.
    let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read");
    assert_eq!(host_before, host_after);
}
