//! ts-auth's command line: help names the variables, --explain shows the exact `up` argv.

use std::process::Command;

fn ts_auth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ts-auth"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

#[test]
fn help_names_each_variable() {
    let out = ts_auth().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "TS_SOCKET",
        "TS_AUTH_ONCE",
        "TS_ACCEPT_DNS",
        "TS_ROUTES",
        "TS_EXTRA_ARGS",
        "TS_BOOT_TIMEOUT",
        "TS_READY_FD",
    ] {
        assert!(
            help.contains(&format!("[env: {var}]")),
            "--help lacks {var}:\n{help}"
        );
    }
    assert!(help.contains("TS_AUTHKEY"), "{help}");
}

#[test]
fn explain_shows_the_reference_argv_with_the_key_redacted() {
    let out = ts_auth()
        .args([
            "--explain",
            "--routes",
            "10.0.0.0/24",
            "--accept-dns",
            "yes",
        ])
        .env("TS_AUTHKEY", "tskey-secret-value")
        .env("TS_HOSTNAME", "box")
        .env("TS_EXTRA_ARGS", "--ssh --id-token=tskey-extra-value")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("tailscale --socket=/tmp/tailscaled.sock up --accept-dns=true --authkey=<redacted> --advertise-routes=10.0.0.0/24 --hostname=box --reset --ssh --id-token=<redacted>"),
        "{plan}"
    );
    assert!(!plan.contains("tskey-secret-value"));
    assert!(!plan.contains("tskey-extra-value"));
}

#[test]
fn bad_flag_value_is_a_usage_error() {
    let out = ts_auth()
        .args(["--explain", "--auth-once", "sometimes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TS_AUTH_ONCE=\"sometimes\""));
}

#[test]
fn unreachable_tailscaled_fails_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("ts-auth-nosock-{}", std::process::id()));
    // With TS_AUTH_ONCE the bus is watched first (without it `tailscale up` runs first and
    // reports the missing daemon itself).
    let out = ts_auth()
        .env("TS_SOCKET", dir.join("missing.sock"))
        .env("TS_AUTH_ONCE", "true")
        .env("TS_BOOT_TIMEOUT", "2s")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("failed to watch tailscaled for updates"),
        "{log}"
    );
}
