//! ts-init's command line: help names the variables, --explain plans without doing anything.

use std::process::Command;

fn ts_init() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ts-init"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

#[test]
fn help_names_each_variable_and_the_exit_codes() {
    let out = ts_init().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "TS_SOCKET",
        "TS_BOOT_TIMEOUT",
        "TS_SHUTDOWN_GRACE",
        "TS_LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("[env: {var}]")),
            "--help lacks {var}:\n{help}"
        );
    }
    assert!(help.contains("137"), "--help lacks the exit codes:\n{help}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = ts_init().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn explain_shows_the_plan_with_the_key_redacted() {
    let root = std::env::temp_dir().join(format!("ts-init-explain-{}", std::process::id()));
    let out = ts_init()
        .arg("--explain")
        .env("TS_AUTHKEY", "tskey-very-secret")
        .env("TS_TEST_ONLY_ROOT", &root)
        .env("TS_DEST_IP", "10.0.0.5")
        .env("TS_USERSPACE", "false")
        .env("TS_HOSTNAME", "box")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let plan = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!plan.contains("tskey-very-secret") && !log.contains("tskey-very-secret"));
    assert!(plan.contains("--authkey=<redacted>"), "{plan}");
    assert!(
        plan.contains("tailscaled --socket=/tmp/tailscaled.sock --state=mem: --statedir=/tmp"),
        "{plan}"
    );
    assert!(plan.contains("ts-proxy-rules"), "{plan}");
    // Today's image's TS_HOSTNAME is applied, not warned about (D16′).
    assert!(plan.contains("--hostname=box --reset"), "{plan}");
    assert!(!plan.contains("not supported"), "{plan}");
    // Nothing was created under the root: not even the socket symlink.
    assert!(!root.exists(), "--explain wrote under {}", root.display());
}

#[test]
fn explain_with_bad_configuration_exits_2() {
    let out = ts_init()
        .arg("--explain")
        .env("TS_ROUTES", "10.0.0.0/33")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("TS_ROUTES") && log.contains("10.0.0.0/33"),
        "{log}"
    );
}

#[test]
fn flag_overrides_the_variable_and_is_validated_alike() {
    let out = ts_init()
        .args(["--explain", "--boot-timeout", "2m"])
        .env("TS_BOOT_TIMEOUT", "5s")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("startup deadline: 120s"));
    let out = ts_init()
        .args(["--explain", "--shutdown-grace", "never"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TS_SHUTDOWN_GRACE=\"never\""));
}

#[test]
fn a_configuration_error_is_logged_in_the_requested_format() {
    let out = ts_init()
        .env("TS_LOG_FORMAT", "json")
        .env("TS_USERSPACE", "maybe")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    let first = log.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert_eq!(v["bin"], "ts-init");
    assert_eq!(v["level"], "error");
    assert!(v["msg"]
        .as_str()
        .unwrap_or_default()
        .contains("TS_USERSPACE=\"maybe\""));
}
