//! `ts-health` as a phase of its own (its image, or by hand): command line, `--explain`, and a
//! standalone run against the fake tailscaled, with and without a watcher's report.

use std::process::Command;
use std::time::Duration;
use tsboot_tests::fake_tailscaled_ctl::{fixture, require_bin, FakeTailscaled};
use tsboot_tests::harness::{Proc, Spawn};
use tsboot_tests::probe::{endpoint_from_log, get, wait_for};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(require_bin("ts-health"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run ts-health");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_every_variable_and_version_and_exit_codes() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for var in [
        "TS_ENABLE_HEALTH_CHECK",
        "TS_ENABLE_METRICS",
        "TS_LOCAL_ADDR_PORT",
        "TS_HEALTHCHECK_ADDR_PORT",
        "TS_SOCKET",
        "TS_READY_FD",
        "--explain",
        "Exit status",
    ] {
        assert!(out.contains(var), "--help does not mention {var}:\n{out}");
    }
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!((code, out.trim()), (0, "ts-health 0.1.0"));
}

#[test]
fn nothing_enabled_or_bad_values_exit_2() {
    let (code, _, err) = run(&[], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to serve"), "{err}");
    let (code, _, err) = run(
        &["--enable-metrics", "true", "--local-addr-port", "9002"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TS_LOCAL_ADDR_PORT=\"9002\""), "{err}");
    let (code, _, err) = run(&[], &[("TS_ENABLE_HEALTH_CHECK", "maybe")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TS_ENABLE_HEALTH_CHECK=\"maybe\""), "{err}");
}

#[test]
fn explain_shows_listeners_sources_and_the_verdict_now() {
    let (code, out, err) = run(
        &[
            "--explain",
            "--socket",
            "/nonexistent/tsboot/tailscaled.sock",
        ],
        &[
            ("TS_ENABLE_HEALTH_CHECK", "true"),
            ("TS_HEALTHCHECK_ADDR_PORT", ""),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "listen on [::]:9002 (TS_LOCAL_ADDR_PORT): /healthz; anything else 404",
        "the reports in /nonexistent/tsboot/tsboot-status",
        "now: /healthz would answer 503: not connected to tailscaled: no LocalAPI at /nonexistent/tsboot/tailscaled.sock",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
}

#[test]
fn standalone_against_a_running_node_and_a_watchers_report() {
    let tsd = FakeTailscaled::start(
        "health-alone",
        Some(&fixture("seed-era-testharness-running.json")),
        &[],
    );
    let env = vec![
        ("TS_SOCKET".to_string(), tsd.socket.display().to_string()),
        ("TS_ENABLE_HEALTH_CHECK".into(), "true".into()),
        ("TS_ENABLE_METRICS".into(), "true".into()),
        ("TS_LOCAL_ADDR_PORT".into(), "127.0.0.1:0".into()),
    ];
    let mut p = Proc::spawn(
        &require_bin("ts-health"),
        &[],
        Spawn {
            env,
            ready: true,
            ..Spawn::default()
        },
    );
    assert!(p.wait_ready(), "no readiness:\n{}", p.log());
    let addr = endpoint_from_log(&p.log(), "/healthz").expect("endpoint line");
    // No ts-init: the node alone decides.
    wait_for(addr, "/healthz", Duration::from_secs(10), "ok", |a| {
        a.code == 200 && a.body == "ok"
    });
    // A watcher (say, a serve-config watcher run by hand) reports a failed reconcile.
    let dir = tsd.dir.join("tsboot-status");
    std::fs::create_dir_all(&dir).expect("status dir");
    let report = serde_json::json!({
        "name": "ts-serve",
        "last": {"ok": false, "reason": "serve config /etc/ts/serve.json: unexpected end of JSON", "at_ms": 1}
    });
    std::fs::write(dir.join("ts-serve.json"), report.to_string()).expect("report");
    let a = get(addr, "/healthz");
    assert_eq!(
        (a.code, a.body.as_str()),
        (
            503,
            "ts-serve: last reconcile failed: serve config /etc/ts/serve.json: unexpected end of JSON\n"
        )
    );
    let m = get(addr, "/metrics");
    assert!(
        m.body
            .contains("tsboot_reconciles_total{watcher=\"ts-serve\",outcome=\"failure\"} 0"),
        "{}",
        m.body
    );
    assert!(
        !m.body.contains("tsboot_phase_state{"),
        "no ts-init, no phases"
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0, "{}", p.log());
}
