//! ts-serve's command line. Also what makes `cargo test --workspace` build the ts-serve binary,
//! which the end-to-end tests in tests/ run (cargo builds a package's binaries for its own
//! integration tests only).

use std::process::Command;

fn ts_serve() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ts-serve"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

#[test]
fn help_names_the_variable_behind_each_flag() {
    let out = ts_serve().arg("--help").output().expect("run ts-serve");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["TS_SERVE_CONFIG", "TS_SOCKET", "TS_READY_FD"] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

#[test]
fn without_a_config_file_it_is_a_configuration_error() {
    let out = ts_serve().output().expect("run ts-serve");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TS_SERVE_CONFIG"), "{err}");
}
