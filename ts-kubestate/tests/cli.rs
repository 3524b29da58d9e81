//! ts-kubestate's command line: each flag names its variable, bad values are usage errors, and
//! outside Kubernetes both modes have nothing to do.

use std::process::Command;

fn ts_kubestate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ts-kubestate"));
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

#[test]
fn help_names_each_variable() {
    let out = ts_kubestate().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "TS_KUBE_SECRET",
        "TS_SOCKET",
        "TS_AUTH_ONCE",
        "TS_READY_FD",
        "TS_TEST_ONLY_ROOT",
    ] {
        assert!(
            help.contains(&format!("[env: {var}]")),
            "--help lacks {var}:\n{help}"
        );
    }
    assert!(
        help.contains("preflight") && help.contains("watch"),
        "{help}"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let out = ts_kubestate().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn preflight_outside_kubernetes_has_nothing_to_do() {
    let out = ts_kubestate().arg("preflight").output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn bad_flag_value_is_a_usage_error() {
    let out = ts_kubestate()
        .args(["--auth-once", "perhaps", "preflight"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("TS_AUTH_ONCE=\"perhaps\""));
}
