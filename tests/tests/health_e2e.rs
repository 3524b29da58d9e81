//! The health and metrics endpoint (ts-health) under the real ts-init, against the fakes: every
//! state `/healthz` depends on (before Running, Running without an IP, startup not complete, a
//! failing watcher, a recovered one, a stuck one), each checked by code and body and by the time
//! it takes to turn (the 2 s the README promises, as a deadline); `/metrics` checked by the
//! Prometheus project's own parser; 404/405; the deprecated listener; bad values.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tsboot_tests::fake_apiserver::{
    FakeApiServer, FakeConfig, Fault, FaultAction, Match, DEFAULT_NAMESPACE, DEFAULT_TOKEN,
};
use tsboot_tests::harness::{Proc, Root, HEAD, PATIENCE};
use tsboot_tests::probe::{
    endpoint_from_log, get, parse_exposition, prometheus_parser, request, wait_for, Family,
};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";
/// The README's promise: `/healthz` turns within 2 s of the cause.
const TURN: Duration = Duration::from_secs(2);

fn health_env(env: &mut Vec<(String, String)>) {
    for (k, v) in [
        ("TS_ENABLE_HEALTH_CHECK", "true"),
        ("TS_ENABLE_METRICS", "true"),
        ("TS_LOCAL_ADDR_PORT", "127.0.0.1:0"),
    ] {
        env.push((k.into(), v.into()));
    }
}

/// The address ts-health logged it listens on (port 0 picks a free one).
fn endpoint(init: &mut Proc, path: &str) -> SocketAddr {
    init.expect_log(path);
    let start = Instant::now();
    loop {
        if let Some(a) = endpoint_from_log(&init.log(), path) {
            return a;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no endpoint line:\n{}",
            init.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is(code: u16, body_start: &'static str) -> impl Fn(&tsboot_tests::probe::Answer) -> bool {
    move |a| a.code == code && a.body.starts_with(body_start)
}

/// Scrapes `/metrics` and parses it with the Prometheus parser (None: parser not installed).
fn scrape(addr: SocketAddr) -> Option<(String, Vec<Family>)> {
    let answer = get(addr, "/metrics");
    assert_eq!(answer.code, 200, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let Some(py) = prometheus_parser() else {
        println!("SKIPPED (metrics parse): no python3 with prometheus_client; install python3-prometheus-client");
        return None;
    };
    let families = parse_exposition(&py, &answer.body)
        .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{}", answer.body));
    Some((answer.body, families))
}

fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

#[test]
fn healthz_follows_the_node_from_boot_to_running_with_an_ip() {
    let root = Root::new("health-node");
    let mut env = root.era_env(&HEAD);
    // `tailscale up` logs in nothing: the test drives the node's state itself.
    env.retain(|(k, _)| k != "FAKE_TAILSCALE_UP_REPLAY");
    health_env(&mut env);
    let mut init = root.start_init(&env, &[]);
    let addr = endpoint(&mut init, "/healthz");
    assert_eq!(endpoint(&mut init, "/metrics"), addr);

    // Before Running.
    let (a, _) = wait_for(addr, "/healthz", PATIENCE, "NeedsLogin", |a| {
        a.code == 503 && a.body == "node is not Running (state NeedsLogin)\n"
    });
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    println!("before Running: {} {:?}", a.code, a.body);

    // Running, but no netmap yet: no tailnet IP.
    let cause = Instant::now();
    root.control("state 6");
    let (a, _) = wait_for(addr, "/healthz", TURN, "Running without IP", |a| {
        a.code == 503 && a.body == "node is Running but has no tailnet IP\n"
    });
    println!(
        "Running without IP: {} {:?} (after {:?})",
        a.code,
        a.body,
        cause.elapsed()
    );
    init.expect_log(STARTUP);

    // The node's first address arrives: healthy.
    let cause = Instant::now();
    root.notify_file("head-era-15-selfchange-address-change.json");
    let (a, _) = wait_for(addr, "/healthz", TURN, "ok", is(200, "ok"));
    assert_eq!(a.body, "ok");
    println!(
        "healthy: {} {:?} (after {:?})",
        a.code,
        a.body,
        cause.elapsed()
    );

    // HEAD requests too; anything else on the listener is not found; other methods 405.
    let head = request(addr, "HEAD", "/healthz").expect("HEAD");
    assert_eq!(head.code, 200);
    let nf = get(addr, "/debug/pprof");
    assert_eq!((nf.code, nf.body.as_str()), (404, "404 page not found\n"));
    assert_eq!(get(addr, "/").code, 404);
    assert_eq!(get(addr, "/healthz/").code, 404);
    let post = request(addr, "POST", "/healthz").expect("POST");
    assert_eq!(post.code, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    if let Some((text, families)) = scrape(addr) {
        // tailscaled's series first, verbatim, then tsboot's.
        let usermetrics = tsboot_tests::fake_tailscaled::USERMETRICS;
        assert!(text.starts_with(usermetrics), "{text}");
        let first_tsboot = families
            .iter()
            .position(|f| f.name.starts_with("tsboot_"))
            .expect("tsboot families");
        assert!(families[..first_tsboot]
            .iter()
            .all(|f| f.name.starts_with("tailscaled_")));
        assert_eq!(
            first_tsboot, 12,
            "all of tailscaled's families, the empty ones too"
        );
        assert!(families[first_tsboot..]
            .iter()
            .all(|f| f.name.starts_with("tsboot_")));
        let mut names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), families.len(), "duplicate families");
        assert_eq!(
            family(&families, "tailscaled_inbound_packets").value(
                "tailscaled_inbound_packets_total",
                &[("path", "direct_ipv4")]
            ),
            Some(0.0)
        );
        assert_eq!(family(&families, "tsboot_healthy").kind, "gauge");
        assert_eq!(
            family(&families, "tsboot_healthy").value("tsboot_healthy", &[]),
            Some(1.0)
        );
        assert_eq!(
            family(&families, "tsboot_tailscaled_usermetrics_up")
                .value("tsboot_tailscaled_usermetrics_up", &[]),
            Some(1.0)
        );
        let phases = family(&families, "tsboot_phase_state");
        for (phase, state) in [
            ("ts-health", "ready"),
            ("ts-prep", "done"),
            ("tailscaled", "running"),
            ("ts-auth", "ready"),
        ] {
            assert_eq!(
                phases.value("tsboot_phase_state", &[("phase", phase), ("state", state)]),
                Some(1.0),
                "{phase} {state}\n{text}"
            );
        }
        let exits = family(&families, "tsboot_phase_exits");
        assert_eq!(exits.kind, "counter");
        assert_eq!(
            exits.value(
                "tsboot_phase_exits_total",
                &[("phase", "ts-prep"), ("code", "0")]
            ),
            Some(1.0)
        );
        // Every tsboot series is documented.
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README");
        for f in families.iter().filter(|f| f.name.starts_with("tsboot_")) {
            let name = if f.kind == "counter" {
                format!("{}_total", f.name)
            } else {
                f.name.clone()
            };
            assert!(
                readme.contains(&format!("`{name}`")),
                "README does not name {name}"
            );
        }
        println!("metrics (healthy):\n{text}");
    }

    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    assert!(
        request(addr, "GET", "/healthz").is_err(),
        "still listening after exit"
    );
}

#[test]
fn a_failing_kube_watcher_is_unhealthy_until_it_recovers() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let api = rt
        .block_on(FakeApiServer::start(FakeConfig::default()))
        .expect("fake apiserver");
    let root = Root::new("health-kube");
    api.set_secret(DEFAULT_NAMESPACE, "tailscale", &[("authkey", "tskey-key")]);
    api.write_serviceaccount(&root.dir, DEFAULT_TOKEN)
        .expect("service account");
    // The first device-info write is slow: startup waits for it, and so does /healthz.
    api.delay_next(Match::secret_patch(), Duration::from_millis(1500), 1);
    let mut env = root.era_env(&HEAD);
    env.extend(api.kube_env());
    health_env(&mut env);
    let mut init = root.start_init(&env, &[]);
    let addr = endpoint(&mut init, "/healthz");

    let (a, _) = wait_for(addr, "/healthz", PATIENCE, "startup not complete", |a| {
        a.code == 503
            && a.body == "startup not complete (waiting for the watchers' first reconcile)\n"
    });
    println!("startup not complete: {} {:?}", a.code, a.body);
    init.expect_log(STARTUP);
    wait_for(addr, "/healthz", PATIENCE, "ok", is(200, "ok"));

    // The apiserver answers 500 to every write from now on; the node changes identity.
    api.add_fault(Fault {
        matcher: Match::secret_patch(),
        action: FaultAction::Status(500),
        times: None,
    });
    let cause = Instant::now();
    root.notify_file(HEAD.identity_change);
    let (a, took) = wait_for(
        addr,
        "/healthz",
        TURN,
        "the failing watcher",
        is(503, "ts-kubestate: last reconcile failed: "),
    );
    assert!(
        a.body.ends_with('\n') && a.body.lines().count() == 1,
        "{a:?}"
    );
    assert!(a.body.contains("500"), "{a:?}");
    println!(
        "failing watcher: {} {:?} (after {:?}, {took:?} of polling)",
        a.code,
        a.body,
        cause.elapsed()
    );
    assert!(
        init.try_status().is_none(),
        "a failing write must not end the container"
    );
    if let Some((text, families)) = scrape(addr) {
        assert_eq!(
            family(&families, "tsboot_healthy").value("tsboot_healthy", &[]),
            Some(0.0)
        );
        let reconciles = family(&families, "tsboot_reconciles");
        let failures = reconciles
            .value(
                "tsboot_reconciles_total",
                &[("watcher", "ts-kubestate"), ("outcome", "failure")],
            )
            .unwrap_or(0.0);
        assert!(failures >= 1.0, "{text}");
        let kube = family(&families, "tsboot_kube_requests");
        assert!(
            kube.value(
                "tsboot_kube_requests_total",
                &[("phase", "ts-kubestate"), ("code", "500")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{text}"
        );
        assert!(
            kube.value(
                "tsboot_kube_requests_total",
                &[("phase", "ts-kubestate preflight"), ("code", "201")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "the preflight's SSARs are counted too:\n{text}"
        );
        assert_eq!(
            family(&families, "tsboot_watcher_healthy")
                .value("tsboot_watcher_healthy", &[("watcher", "ts-kubestate")]),
            Some(0.0)
        );
        println!(
            "metrics (failing watcher), tsboot part:\n{}",
            tsboot_part(&text)
        );
    }

    // The apiserver recovers: the watcher's retry succeeds and /healthz follows.
    api.clear_faults();
    let cause = Instant::now();
    let (a, _) = wait_for(
        addr,
        "/healthz",
        Duration::from_secs(40),
        "recovered",
        is(200, "ok"),
    );
    println!(
        "recovered watcher: {} {:?} (after {:?})",
        a.code,
        a.body,
        cause.elapsed()
    );
    let secret = api
        .secret(DEFAULT_NAMESPACE, "tailscale")
        .unwrap_or_default();
    assert_eq!(
        secret.get("device_id").map(String::as_str),
        Some(HEAD.new_stable_id)
    );
    if let Some((text, families)) = scrape(addr) {
        assert_eq!(
            family(&families, "tsboot_healthy").value("tsboot_healthy", &[]),
            Some(1.0)
        );
        assert!(
            family(&families, "tsboot_reconciles")
                .value(
                    "tsboot_reconciles_total",
                    &[("watcher", "ts-kubestate"), ("outcome", "success")]
                )
                .unwrap_or(0.0)
                >= 2.0,
            "{text}"
        );
    }
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

#[test]
fn a_hung_iptables_is_reported_stuck_within_the_deadline() {
    let root = Root::new("health-stuck");
    let hang = root.dir.join("iptables-hangs");
    let mut env = root.era_env(&HEAD);
    env.push(("TS_USERSPACE".into(), "false".into()));
    env.push(("TS_DEST_IP".into(), "10.0.0.5".into()));
    env.push(("FAKE_IPTABLES_HANG_FILE".into(), hang.display().to_string()));
    health_env(&mut env);
    let mut init = root.start_init(&env, &[]);
    let addr = endpoint(&mut init, "/healthz");
    init.expect_log(STARTUP);
    wait_for(addr, "/healthz", PATIENCE, "ok", is(200, "ok"));

    // iptables hangs from now on; the node's address changes, so the watcher must run it.
    std::fs::write(&hang, "").expect("hang file");
    let cause = Instant::now();
    root.notify_file("head-era-15-selfchange-address-change.json");
    let (a, _) = wait_for(
        addr,
        "/healthz",
        TURN,
        "the stuck watcher",
        is(503, "ts-proxy-rules: reconcile running for "),
    );
    assert!(a.body.ends_with("s (stuck?)\n"), "{a:?}");
    println!(
        "stuck watcher: {} {:?} (after {:?})",
        a.code,
        a.body,
        cause.elapsed()
    );
    if let Some((text, families)) = scrape(addr) {
        let running = family(&families, "tsboot_reconcile_in_progress_seconds")
            .value(
                "tsboot_reconcile_in_progress_seconds",
                &[("watcher", "ts-proxy-rules")],
            )
            .unwrap_or(0.0);
        assert!(running > 1.0, "{text}");
        println!(
            "metrics (stuck watcher), tsboot part:\n{}",
            tsboot_part(&text)
        );
    }

    // iptables comes back: the rule for the new address lands and /healthz recovers.
    let _ = std::fs::remove_file(&hang);
    let cause = Instant::now();
    let (a, _) = wait_for(addr, "/healthz", PATIENCE, "recovered", is(200, "ok"));
    println!(
        "unstuck watcher: {} {:?} (after {:?})",
        a.code,
        a.body,
        cause.elapsed()
    );
    assert!(
        root.records()
            .iter()
            .any(|r| r.contains("-d 100.88.77.66 -j DNAT --to-destination 10.0.0.5")),
        "{:#?}",
        root.records()
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

#[test]
fn the_deprecated_listener_serves_healthz_alone_with_a_warning() {
    let root = Root::new("health-deprecated");
    let mut env = root.era_env(&HEAD);
    for (k, v) in [
        ("TS_HEALTHCHECK_ADDR_PORT", "127.0.0.1:0"),
        ("TS_ENABLE_METRICS", "true"),
        ("TS_LOCAL_ADDR_PORT", "127.0.0.1:0"),
    ] {
        env.push((k.into(), v.into()));
    }
    let mut init = root.start_init(&env, &[]);
    let health = endpoint(&mut init, "/healthz");
    let metrics = endpoint(&mut init, "/metrics");
    assert_ne!(health, metrics);
    init.expect_log(STARTUP);
    wait_for(health, "/healthz", PATIENCE, "ok", is(200, "ok"));
    assert_eq!(get(health, "/metrics").code, 404);
    assert_eq!(get(metrics, "/healthz").code, 404);
    assert_eq!(get(metrics, "/metrics").code, 200);
    let log = init.log();
    assert_eq!(
        log.matches("TS_HEALTHCHECK_ADDR_PORT is deprecated")
            .count(),
        1,
        "one warning, from ts-init only:\n{log}"
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

#[test]
fn bad_endpoint_values_exit_2_before_anything_starts() {
    for (var, value, extra) in [
        (
            "TS_LOCAL_ADDR_PORT",
            "::9002",
            ("TS_ENABLE_METRICS", "true"),
        ),
        (
            "TS_LOCAL_ADDR_PORT",
            "localhost:9002",
            ("TS_ENABLE_HEALTH_CHECK", "true"),
        ),
        ("TS_ENABLE_METRICS", "enabled", ("TS_LOCAL_ADDR_PORT", "")),
        (
            "TS_HEALTHCHECK_ADDR_PORT",
            "9002",
            ("TS_LOCAL_ADDR_PORT", ""),
        ),
    ] {
        let root = Root::new("health-bad");
        let mut env = root.era_env(&HEAD);
        env.push((var.into(), value.into()));
        env.push((extra.0.into(), extra.1.into()));
        let mut init = root.start_init(&env, &[]);
        assert_eq!(init.wait_code(PATIENCE), 2, "{var}={value}: {}", init.log());
        assert!(
            init.log().contains(&format!("{var}={value:?}")),
            "{var}: {}",
            init.log()
        );
        assert!(
            root.records().is_empty(),
            "something ran: {:?}",
            root.records()
        );
    }
}

#[test]
fn a_port_in_use_fails_the_startup_before_tailscaled() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let root = Root::new("health-port-taken");
    let mut env = root.era_env(&HEAD);
    env.push(("TS_ENABLE_HEALTH_CHECK".into(), "true".into()));
    env.push(("TS_LOCAL_ADDR_PORT".into(), format!("127.0.0.1:{port}")));
    let mut init = root.start_init(&env, &[]);
    assert_eq!(init.wait_code(PATIENCE), 1, "{}", init.log());
    let log = init.log();
    assert!(
        log.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (TS_LOCAL_ADDR_PORT)"
        )),
        "{log}"
    );
    assert!(
        root.records().is_empty(),
        "tailscaled started: {:?}",
        root.records()
    );
}

fn tsboot_part(text: &str) -> String {
    let start = text.find("# HELP tsboot_").unwrap_or(0);
    text[start..].to_string()
}
