//! Today's image's variables end to end through the real ts-init and the fakes: refused
//! combinations (exit 2, nothing started), credentials kept out of logs and out of the
//! environment of tailscaled and the watchers, the Kubernetes state secret that is missing
//! (with and without `create`), and the shutdown wait for a consistent state secret.
//! (The argv each variable produces is in boot_scenarios.rs.)

use std::time::Duration;
use tsboot_tests::harness::{self, rec, ApiServer, Root, ERAS};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";

fn env_with(root: &Root, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = root.era_env(&ERAS[2]);
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Descendants of `pid` whose command line mentions `needle`.
fn descendants_running(pid: i32, needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for child in harness::children_of(p) {
            if harness::cmdline_contains(child, needle) {
                found.push(child);
            }
            queue.push(child);
        }
    }
    found
}

fn environ(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| String::from_utf8_lossy(&e).replace('\0', "\n"))
        .unwrap_or_default()
}

#[test]
fn refused_combinations_exit_2_before_anything_starts() {
    let table: &[(&[(&str, &str)], &str)] = &[
        (&[("TS_ID_TOKEN", "t")], "TS_ID_TOKEN is set but TS_CLIENT_ID is not set"),
        (&[("TS_AUDIENCE", "a")], "TS_AUDIENCE is set but TS_CLIENT_ID is not set"),
        (
            &[("TS_CLIENT_ID", "c"), ("TS_ID_TOKEN", "t"), ("TS_CLIENT_SECRET", "s")],
            "TS_ID_TOKEN and TS_CLIENT_SECRET cannot both be set",
        ),
        (
            &[("TS_CLIENT_ID", "c"), ("TS_ID_TOKEN", "t"), ("TS_AUDIENCE", "a")],
            "TS_ID_TOKEN and TS_AUDIENCE cannot both be set",
        ),
        (
            &[("TS_CLIENT_ID", "c"), ("TS_AUDIENCE", "a"), ("TS_CLIENT_SECRET", "s")],
            "TS_AUDIENCE and TS_CLIENT_SECRET cannot both be set",
        ),
        (
            &[("TS_AUTHKEY", "tskey-key"), ("TS_CLIENT_ID", "c")],
            "TS_AUTHKEY cannot be used with TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN, or TS_AUDIENCE",
        ),
        (
            &[("TS_AUTHKEY", "tskey-key"), ("TS_CLIENT_SECRET", "tskey-key-2")],
            "TS_AUTHKEY cannot be used with",
        ),
        (
            &[("TS_EXTRA_ARGS", "--accept-dns=maybe")],
            "TS_EXTRA_ARGS=\"--accept-dns=maybe\"",
        ),
        (
            &[("TS_DEBUG_ADDR_PORT", "localhost:9001")],
            "TS_DEBUG_ADDR_PORT=\"localhost:9001\"",
        ),
        (
            &[("TS_HOSTNAME", "a"), ("TS_EXTRA_ARGS", "--hostname=b")],
            "TS_HOSTNAME is set and TS_EXTRA_ARGS has --hostname too",
        ),
    ];
    for (i, (vars, want)) in table.iter().enumerate() {
        let root = Root::new(&format!("refused-{i}"));
        let mut init = root.start_init(&env_with(&root, vars), &[]);
        assert_eq!(
            init.wait_code(Duration::from_secs(10)),
            2,
            "{vars:?}\n{}",
            init.log()
        );
        let log = init.log();
        assert!(log.contains(want), "{vars:?}: {want:?} not in\n{log}");
        assert!(!log.contains("tskey-key"), "{vars:?}: credential in\n{log}");
        assert!(
            root.records().is_empty(),
            "{vars:?}: started {:?}",
            root.records()
        );
    }
}

#[test]
fn todays_variables_are_not_called_ignored() {
    let root = Root::new("not-ignored");
    let env = env_with(
        &root,
        &[
            ("TS_HOSTNAME", "web-1"),
            ("TS_CLIENT_ID", "k123"),
            ("TS_CLIENT_SECRET", "tskey-key-secret"),
            ("TS_DEBUG_ADDR_PORT", "127.0.0.1:9001"),
            ("TS_DEBUG_FIREWALL_MODE", "nftables"),
            ("TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV", "true"),
        ],
    );
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    // The variables tailscaled reads itself reach it.
    let tailscaled = descendants_running(init.pid(), "tailscaled");
    assert_eq!(tailscaled.len(), 1, "{tailscaled:?}");
    let tailscaled_env = environ(tailscaled[0]);
    for var in [
        "TS_DEBUG_FIREWALL_MODE=nftables",
        "TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV=true",
    ] {
        assert!(
            tailscaled_env.contains(var),
            "{var} not in\n{tailscaled_env}"
        );
    }
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(10)), 0, "{}", init.log());
    let log = init.log();
    assert!(!log.contains("ignored"), "{log}");
    assert!(!log.contains("not supported"), "{log}");
}

#[test]
fn credentials_reach_only_ts_auth_and_no_log_even_at_trace() {
    let era = &ERAS[2];
    let root = Root::new("oauth-kube-trace");
    // The secret carries an authkey: with an OAuth client it is not used (as today's image).
    let api = ApiServer::start(
        &root,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key-in-secret"}}]}"#,
    );
    let mut env = root.era_env(era);
    env.extend(api.env.iter().cloned());
    for (k, v) in [
        ("RUST_LOG", "trace"),
        ("TS_CLIENT_ID", "k123"),
        ("TS_CLIENT_SECRET", "tskey-key-client-secret"),
        ("TS_EXTRA_ARGS", "--id-token=tskey-key-in-extra --ssh"),
    ] {
        env.push((k.into(), v.into()));
    }
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    let records = root.records();
    assert_eq!(
        records[1],
        rec(
            "tailscale",
            "--socket=/tmp/tailscaled.sock up --accept-dns=false --client-id=k123 \
             --client-secret=tskey-key-client-secret --reset --id-token=tskey-key-in-extra --ssh"
        ),
        "{records:#?}"
    );
    for (what, needle) in [("tailscaled", "tailscaled"), ("watcher", "ts-kubestate")] {
        let pids = descendants_running(init.pid(), needle);
        assert!(!pids.is_empty(), "no {what} running");
        for pid in pids {
            let env = environ(pid);
            assert!(env.contains("TS_CLIENT_ID=k123"), "{what}: {env}");
            assert!(
                !env.contains("TS_CLIENT_SECRET"),
                "{what} got the secret:\n{env}"
            );
            assert!(
                !env.contains("tskey-key"),
                "{what} got a credential:\n{env}"
            );
        }
    }
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    let log = init.log();
    assert!(
        log.contains("trace: ") || log.contains("debug: "),
        "RUST_LOG=trace had no effect"
    );
    assert!(log.contains("--client-secret=<redacted>"), "{log}");
    assert!(
        !log.contains("tskey-key"),
        "a credential in the log:\n{log}"
    );
}

#[test]
fn missing_state_secret_without_create_stops_before_tailscaled() {
    let root = Root::new("kube-nocreate");
    let api = ApiServer::start(&root, r#"{"deny":[{"verb":"create"}]}"#);
    let mut env = root.era_env(&ERAS[2]);
    env.extend(api.env.iter().cloned());
    env.push(("TS_AUTHKEY".into(), "tskey-key".into()));
    let mut init = root.start_init(&env, &[]);
    assert_eq!(init.wait_code(Duration::from_secs(20)), 1, "{}", init.log());
    let log = init.log();
    for want in [
        "Tailscale state Secret \"tailscale\" does not exist and we don't have permissions to create it",
        "TS_KUBE_SECRET",
        "rbac.yaml",
    ] {
        assert!(log.contains(want), "{want:?} not in\n{log}");
    }
    assert!(
        root.records().is_empty(),
        "tailscaled started: {:?}",
        root.records()
    );
}

#[test]
fn missing_state_secret_with_create_boots() {
    let era = &ERAS[2];
    let root = Root::new("kube-create");
    let api = ApiServer::start(&root, "{}");
    let mut env = root.era_env(era);
    env.extend(api.env.iter().cloned());
    env.push(("TS_AUTHKEY".into(), "tskey-key".into()));
    env.push(("TS_STATE_DIR".into(), "/var/lib/tailscale".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    assert_eq!(
        root.records()[0],
        rec(
            "tailscaled",
            "--socket=/tmp/tailscaled.sock --state=kube:tailscale --statedir=/var/lib/tailscale --tun=userspace-networking"
        )
    );
    assert!(
        init.log()
            .contains("does not exist yet; tailscaled will create it"),
        "{}",
        init.log()
    );
    let ssar_create = api
        .requests()
        .iter()
        .filter(|r| r.contains("selfsubjectaccessreviews") && r.contains("create"))
        .count();
    assert!(
        ssar_create >= 1,
        "no SSAR for create:\n{}",
        api.requests().join("\n")
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

/// Writes `data` into the secret through the API, as tailscaled's kube store would.
fn write_secret(root: &Root, api: &ApiServer, data: &[(&str, &str)]) {
    let mut vars: Vec<(String, String)> = api.env.clone();
    vars.push(("TS_TEST_ONLY_ROOT".into(), root.dir.display().to_string()));
    let settings = ts_common::Settings::from_vars(vars).expect("settings");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = ts_kube::KubeClient::from_settings(&settings).expect("kube client");
        client.patch_string_data("tailscale", data).await
    })
    .expect("patch the secret");
}

fn signals(root: &Root) -> String {
    std::fs::read_to_string(root.dir.join("signals.log")).unwrap_or_default()
}

#[test]
fn shutdown_waits_for_a_consistent_state_secret() {
    let root = Root::new("settle");
    let api = ApiServer::start(
        &root,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key","_machinekey":"m"}}]}"#,
    );
    let mut env = root.era_env(&ERAS[2]);
    env.extend(api.env.iter().cloned());
    let signal_log = root.dir.join("signals.log").display().to_string();
    env.push(("FAKE_TAILSCALED_SIGNAL_LOG".into(), signal_log));
    // A long grace: the wait may use half of it, and this test ends it by completing the state.
    env.push(("TS_SHUTDOWN_GRACE".into(), "120s".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    init.signal(nix::sys::signal::Signal::SIGTERM);
    init.expect_log(" Waiting for tailscaled to finish writing state to Secret \"tailscale\"");
    // The state is half-written: tailscaled has not been signalled and still runs.
    assert_eq!(signals(&root), "", "tailscaled signalled during the wait");
    assert!(init.try_status().is_none(), "{}", init.log());
    assert_eq!(descendants_running(init.pid(), "tailscaled").len(), 1);
    write_secret(
        &root,
        &api,
        &[
            ("_current-profile", "profile-a1"),
            ("_profiles", "{}"),
            ("profile-a1", "{}"),
        ],
    );
    assert_eq!(init.wait_code(Duration::from_secs(30)), 0, "{}", init.log());
    assert_eq!(signals(&root).trim(), "SIGTERM");
}

#[test]
fn shutdown_wait_is_bounded_by_half_the_grace() {
    let root = Root::new("settle-timeout");
    let api = ApiServer::start(
        &root,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key","profile-x":"{}"}}]}"#,
    );
    let mut env = root.era_env(&ERAS[2]);
    env.extend(api.env.iter().cloned());
    let signal_log = root.dir.join("signals.log").display().to_string();
    env.push(("FAKE_TAILSCALED_SIGNAL_LOG".into(), signal_log));
    env.push(("TS_SHUTDOWN_GRACE".into(), "2s".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    init.signal(nix::sys::signal::Signal::SIGTERM);
    // Never consistent: tailscaled is stopped anyway, cleanly, within the grace.
    assert_eq!(init.wait_code(Duration::from_secs(30)), 0, "{}", init.log());
    let log = init.log();
    assert!(
        log.contains("Waiting for tailscaled to finish writing state"),
        "{log}"
    );
    assert!(log.contains("still incomplete"), "{log}");
    assert_eq!(signals(&root).trim(), "SIGTERM");
}
