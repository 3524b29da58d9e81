//! The watchers under ts-init: failures, stream cuts and the first-cause rule, end to end.

use std::time::Duration;
use tsboot_tests::harness::{cmdline_contains, fixture, processes, ApiServer, Root, HARNESS, HEAD};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";
const SECRET_WITH_KEY: &str =
    r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key"}}]}"#;

/// Kernel mode with a DNAT proxy and the kube secret: both watchers run.
fn proxy_and_kube_env(root: &Root, api: &ApiServer) -> Vec<(String, String)> {
    let mut env = root.era_env(&HEAD);
    env.extend(api.env.iter().cloned());
    env.push(("TS_USERSPACE".into(), "false".into()));
    env.push(("TS_DEST_IP".into(), "10.0.0.5".into()));
    env
}

#[test]
fn tailscaled_death_decides_the_status_even_with_watchers_running() {
    let root = Root::new("first-cause");
    let api = ApiServer::start(&root, SECRET_WITH_KEY);
    let mut init = root.start_init(&proxy_and_kube_env(&root, &api), &[]);
    init.expect_log(STARTUP);
    root.control_nowait("exit 3");
    assert_eq!(init.wait_code(Duration::from_secs(15)), 3, "{}", init.log());
    assert!(
        init.log()
            .contains("Exiting with status 3: tailscaled exited on its own (exit status 3)"),
        "{}",
        init.log()
    );
}

#[test]
fn a_failing_watcher_ends_the_container_with_1_and_says_which() {
    let root = Root::new("watcher-fails");
    let mut env = root.era_env(&HARNESS);
    env.push(("TS_USERSPACE".into(), "false".into()));
    env.push(("TS_DEST_IP".into(), "1.2.3.4".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    // The node loses its IPv4 address: no address of the destination's family is left.
    let running = std::fs::read_to_string(fixture(HARNESS.login)).expect("fixture");
    let v6_only = running.replace("100.64.0.1/32", "fd7a:115c:a1e0::1/128");
    root.control(&format!("notify {}", v6_only.trim()));
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    let log = init.log();
    assert!(
        log.contains("no tailscale IP matching family of 1.2.3.4 found in"),
        "{log}"
    );
    assert!(
        log.contains("Exiting with status 1: watcher ts-proxy-rules failed"),
        "{log}"
    );
}

#[test]
fn a_cut_bus_stream_is_rewatched_and_changes_still_arrive() {
    let root = Root::new("fell-behind");
    let api = ApiServer::start(&root, SECRET_WITH_KEY);
    let mut init = root.start_init(&proxy_and_kube_env(&root, &api), &[]);
    init.expect_log(STARTUP);
    // HEAD tailscaled closes a lagging watcher's stream after this message.
    root.notify_file("head-era-19-errmessage-fell-behind.json");
    root.notify_file(HEAD.identity_change);
    api.expect_secret(
        "tailscale",
        &[
            ("authkey", "tskey-key"),
            ("device_fqdn", HEAD.new_fqdn),
            ("device_id", HEAD.new_stable_id),
        ],
    );
    assert!(
        init.try_status().is_none(),
        "a cut stream must not end the container:\n{}",
        init.log()
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

#[test]
fn a_watcher_that_cannot_start_fails_the_startup() {
    let root = Root::new("watcher-startup-fails");
    let mut env = root.era_env(&HARNESS);
    env.push(("TS_USERSPACE".into(), "false".into()));
    env.push(("TS_DEST_IP".into(), "1.2.3.4".into()));
    env.push(("FAKE_IPTABLES_FAIL".into(), "1".into()));
    let mut init = root.start_init(&env, &[]);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    let log = init.log();
    assert!(!log.contains(STARTUP.trim()), "{log}");
    assert!(log.contains("ts-proxy-rules"), "{log}");
}

/// With a watcher running, the watcher guards the Running state and ts-auth is gone: one
/// resident process less. Leaving Running still ends the container with 1.
#[test]
fn a_watcher_guards_running_so_ts_auth_does_not_stay() {
    for (name, with_kube) in [("guard-proxy", false), ("guard-kube", true)] {
        let root = Root::new(name);
        let api = ApiServer::start(&root, SECRET_WITH_KEY);
        let env = if with_kube {
            let mut env = root.era_env(&HEAD);
            env.extend(api.env.iter().cloned());
            env
        } else {
            let mut env = root.era_env(&HEAD);
            env.push(("TS_USERSPACE".into(), "false".into()));
            env.push(("TS_DEST_IP".into(), "10.0.0.5".into()));
            env
        };
        let mut init = root.start_init(&env, &[]);
        init.expect_log(STARTUP);
        let ts_auth_alive = || {
            processes().into_iter().any(|(pid, ppid, state)| {
                ppid == init.pid() && state != 'Z' && cmdline_contains(pid, "ts-auth")
            })
        };
        let start = std::time::Instant::now();
        while ts_auth_alive() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: ts-auth stays resident"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(init.try_status().is_none(), "{name}: {}", init.log());
        root.control("state 2");
        assert_eq!(
            init.wait_code(Duration::from_secs(15)),
            1,
            "{name}: {}",
            init.log()
        );
        assert!(
            init.log()
                .contains("tailscaled left running state (now in state \"NeedsLogin\"), exiting"),
            "{name}: {}",
            init.log()
        );
    }
}
