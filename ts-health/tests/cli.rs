//! ts-health's command line. Also what makes `cargo test --workspace` build the ts-health
//! binary, which the end-to-end tests in tests/ run (cargo builds a package's binaries for its
//! own integration tests only).

use std::process::Command;

fn ts_health() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ts-health"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

#[test]
fn help_names_the_variable_behind_each_flag() {
    let out = ts_health().arg("--help").output().expect("run ts-health");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "TS_ENABLE_HEALTH_CHECK",
        "TS_ENABLE_METRICS",
        "TS_LOCAL_ADDR_PORT",
        "TS_HEALTHCHECK_ADDR_PORT",
    ] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

#[test]
fn a_bad_local_address_is_a_configuration_error_naming_the_variable() {
    let out = ts_health()
        .env("TS_ENABLE_HEALTH_CHECK", "true")
        .env("TS_LOCAL_ADDR_PORT", "not-an-address")
        .output()
        .expect("run ts-health");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TS_LOCAL_ADDR_PORT"), "{err}");
}
