//! tsboot against the real tailscaled, tailscale CLI and headscale (built by
//! `tests/real/install.sh`), each in network namespaces the test creates (see
//! `tsboot_tests::real` for the topology and the network rule). The DERP map is the lab's own
//! `derper --dev` on the hub namespace; nodes reach each other directly over the hub.
//!
//! Where the real programs are missing (or not root) each test prints `SKIPPED: <why>` and
//! passes; `.ci/run` installs them, so in CI every one runs.

use std::time::Duration;

use nix::sys::signal::Signal;
use tsboot_tests::harness::{children_of, cmdline_contains};
use tsboot_tests::real::{http_get, wait_for, BootSpec, Lab, REAL_PATIENCE};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn boot<'a>(node: &'a str, vars: &[(&str, &str)]) -> BootSpec<'a> {
    BootSpec {
        node,
        env: env(vars),
        service_account: None,
        containerboot: false,
    }
}

/// headscale's view of a node: its IPs and whether it is online.
fn headscale_ips(node: &serde_json::Value) -> Vec<String> {
    node.get("ip_addresses")
        .or_else(|| node.get("ipAddresses"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn online(node: &serde_json::Value) -> bool {
    node.get("online").and_then(|v| v.as_bool()) == Some(true)
}

/// Scenario 1: userspace boot with an auth key and a state dir, seen by tsboot, by the CLI
/// (through `TS_SOCKET` and through the compatibility symlink) and by headscale.
#[test]
fn userspace_boot_reaches_running_with_headscale_address() {
    let Some(lab) = Lab::new("userspace_boot", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(false);
    let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key)]));
    b.expect_log("Startup complete, waiting for shutdown signal");
    let ip = b.wait_running();

    // The same answer through /var/run/tailscale/tailscaled.sock (D17), inside the boot's
    // own mount namespace.
    let via_link: serde_json::Value = serde_json::from_str(
        &b.cli_at(None, &["status", "--json"])
            .unwrap_or_else(|e| panic!("{e}\n{}", b.log())),
    )
    .expect("status json");
    assert_eq!(via_link["BackendState"], "Running");
    assert_eq!(
        tsboot_tests::real::self_ipv4(&via_link).as_deref(),
        Some(ip.as_str())
    );

    let node = wait_for(
        REAL_PATIENCE,
        "node a in headscale",
        || lab.node_named("a"),
        || format!("{:#?}", lab.nodes()),
    );
    assert!(
        headscale_ips(&node).contains(&ip),
        "headscale's addresses {:?} lack {ip}",
        headscale_ips(&node)
    );
    assert!(!b.log().contains(&key), "the auth key reached the log");
}

/// Scenario 2: a restart on the same state. `TS_AUTH_ONCE=true` runs no `tailscale up`; the
/// default runs it again; either way headscale keeps one node.
#[test]
fn restart_on_same_state_keeps_the_node() {
    let Some(lab) = Lab::new("restart_same_state", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(true);
    let first_ip = {
        let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key)]));
        let ip = b.wait_running();
        b.expect_log("Startup complete, waiting for shutdown signal");
        b.init.signal(Signal::SIGTERM);
        assert_eq!(b.init.wait_code(REAL_PATIENCE), 0, "{}", b.log());
        ip
    };

    {
        let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key), ("TS_AUTH_ONCE", "true")]));
        b.expect_log("Startup complete, waiting for shutdown signal");
        assert_eq!(b.wait_running(), first_ip);
        assert!(
            !b.log().contains("Running 'tailscale up'"),
            "auth-once ran up on a logged-in state:\n{}",
            b.log()
        );
        b.init.signal(Signal::SIGTERM);
        assert_eq!(b.init.wait_code(REAL_PATIENCE), 0, "{}", b.log());
    }

    let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key)]));
    b.expect_log("Startup complete, waiting for shutdown signal");
    assert_eq!(b.wait_running(), first_ip);
    assert!(b.log().contains("Running 'tailscale up'"), "{}", b.log());
    let nodes = lab.nodes();
    assert_eq!(nodes.len(), 1, "a second node appeared: {nodes:#?}");
}

/// Scenario 3a: kernel mode with `TS_DEST_IP`. Node b (a second real tailscaled) connects to
/// a's tailnet IP and gets the backend's answer through tsboot's DNAT rule (real iptables).
#[test]
fn kernel_mode_dest_ip_proxies_a_peer_to_the_backend() {
    let Some(mut lab) = Lab::new("kernel_dest_ip", &["a", "b"]) else {
        return;
    };
    let backend = lab.add_backend("a", 8000, "hello from the backend behind a");
    let key = lab.preauth_key(false);
    let mut a = lab.boot(boot(
        "a",
        &[
            ("TS_AUTHKEY", &key),
            ("TS_USERSPACE", "false"),
            ("TS_DEST_IP", &backend),
        ],
    ));
    a.expect_log("Startup complete, waiting for shutdown signal");
    let a_ip = a.wait_running();

    let rules = tsboot_tests::real::run_ok(lab.node("a").command("iptables").args([
        "-t",
        "nat",
        "-S",
        "PREROUTING",
    ]));
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    let want = format!("-A PREROUTING -d {a_ip}/32 -j DNAT --to-destination {backend}");
    assert!(rules.lines().any(|l| l == want), "no {want:?} in\n{rules}");

    let b = lab.start_daemon("b", false);
    b.up(&lab, "b", &[]);
    b.ipv4();
    let body = wait_for(
        REAL_PATIENCE,
        "the backend's answer through a's tailnet IP",
        || http_get(lab.node("b"), &a_ip, 8000, "backend").ok(),
        || format!("a:\n{}\nb:\n{}", a.log(), b.proc.log()),
    );
    assert_eq!(body, "hello from the backend behind a");
}

/// Scenario 3b: kernel-mode subnet router. `TS_ROUTES` is advertised, approved with
/// headscale's CLI, and b reaches the host behind a through it.
#[test]
fn kernel_mode_subnet_router_carries_a_peer_to_the_subnet() {
    let Some(mut lab) = Lab::new("subnet_router", &["a", "b"]) else {
        return;
    };
    let backend = lab.add_backend("a", 8080, "hello from the subnet behind a");
    let key = lab.preauth_key(false);
    let mut a = lab.boot(boot(
        "a",
        &[
            ("TS_AUTHKEY", &key),
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "198.19.1.0/24"),
        ],
    ));
    a.expect_log("Startup complete, waiting for shutdown signal");
    a.wait_running();
    // ts-prep turned forwarding on in a's namespace (the real sysctl).
    let fwd = tsboot_tests::real::run_ok(
        lab.node("a")
            .command("cat")
            .arg("/proc/sys/net/ipv4/ip_forward"),
    );
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    lab.approve_routes("a", "198.19.1.0/24");

    let b = lab.start_daemon("b", false);
    b.up(&lab, "b", &["--accept-routes"]);
    let body = wait_for(
        REAL_PATIENCE,
        "the subnet host's answer through the subnet router",
        || http_get(lab.node("b"), &backend, 8080, "subnet").ok(),
        || format!("a:\n{}\nb:\n{}", a.log(), b.proc.log()),
    );
    assert_eq!(body, "hello from the subnet behind a");
}

/// Scenario 4a: SIGTERM ends everything with status 0 within the grace, and headscale sees
/// the node go offline.
#[test]
fn sigterm_exits_zero_leaves_nothing_and_the_node_goes_offline() {
    let Some(lab) = Lab::new("sigterm", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(false);
    let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key)]));
    b.expect_log("Startup complete, waiting for shutdown signal");
    b.wait_running();
    wait_for(
        REAL_PATIENCE,
        "node a online in headscale",
        || lab.node_named("a").filter(online),
        || format!("{:#?}", lab.nodes()),
    );
    let pid = b.init.pid();
    let children = children_of(pid);
    assert!(
        children.iter().any(|c| cmdline_contains(*c, "tailscaled")),
        "no tailscaled under ts-init"
    );
    b.init.signal(Signal::SIGTERM);
    assert_eq!(b.init.wait_code(Duration::from_secs(25)), 0, "{}", b.log());
    for child in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists(),
            "child {child} outlived ts-init"
        );
    }
    assert!(
        lab.node("a").pids().is_empty(),
        "processes left in the namespace"
    );
    wait_for(
        REAL_PATIENCE,
        "node a offline in headscale",
        || lab.node_named("a").filter(|n| !online(n)),
        || format!("{:#?}", lab.nodes()),
    );
}

/// Scenario 4b: tailscaled SIGKILLed → ts-init exits 137 (128+9) after stopping the rest.
#[test]
fn sigkill_of_the_real_tailscaled_exits_137() {
    let Some(lab) = Lab::new("sigkill", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(false);
    let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key)]));
    b.expect_log("Startup complete, waiting for shutdown signal");
    b.wait_running();
    let tailscaled = children_of(b.init.pid())
        .into_iter()
        .find(|c| cmdline_contains(*c, "tailscaled"))
        .expect("tailscaled under ts-init");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(tailscaled), Signal::SIGKILL)
        .expect("kill tailscaled");
    assert_eq!(b.init.wait_code(REAL_PATIENCE), 137, "{}", b.log());
    assert!(
        lab.node("a").pids().is_empty(),
        "processes left in the namespace"
    );
}

/// Scenario 4c: headscale down at boot → a clear line and exit 1 at `TS_BOOT_TIMEOUT`.
#[test]
fn control_server_down_at_boot_fails_at_the_deadline() {
    let Some(mut lab) = Lab::new("headscale_down", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(false);
    lab.stop_headscale();
    let mut b = lab.boot(boot(
        "a",
        &[("TS_AUTHKEY", &key), ("TS_BOOT_TIMEOUT", "8s")],
    ));
    assert_eq!(b.init.wait_code(REAL_PATIENCE), 1, "{}", b.log());
    let log = b.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Exiting with status 1") && l.contains("TS_BOOT_TIMEOUT")),
        "no line naming the deadline:\n{log}"
    );
    assert!(
        lab.node("a").pids().is_empty(),
        "processes left in the namespace"
    );
}

/// Scenario 4d: headscale restarted while Running → tsboot stays up and the node returns.
#[test]
fn control_server_restart_while_running_keeps_tsboot_up() {
    let Some(mut lab) = Lab::new("headscale_restart", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(false);
    let mut b = lab.boot(boot("a", &[("TS_AUTHKEY", &key)]));
    b.expect_log("Startup complete, waiting for shutdown signal");
    let ip = b.wait_running();
    lab.stop_headscale();
    // Long enough for tailscaled to notice the control connection is gone.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        b.init.try_status().is_none(),
        "ts-init exited:\n{}",
        b.log()
    );
    lab.start_headscale();
    let node = wait_for(
        REAL_PATIENCE,
        "node a back online in headscale",
        || lab.node_named("a").filter(online),
        || format!("{:#?}\n{}", lab.nodes(), b.log()),
    );
    assert!(headscale_ips(&node).contains(&ip));
    assert!(
        b.init.try_status().is_none(),
        "ts-init exited:\n{}",
        b.log()
    );
    assert_eq!(b.wait_running(), ip);
}

/// Scenario 5: the real tailscaled keeps its state in a Kubernetes secret (the repository's
/// fake apiserver, service account at the real path in a private mount namespace), tsboot
/// writes `device_id` / `device_fqdn` there, and a restart reuses the node.
#[test]
fn kube_state_secret_with_the_real_tailscaled() {
    let Some(lab) = Lab::new("kube_state", &["a"]) else {
        return;
    };
    let api = lab.fake_apiserver("a", r#"{"secrets":[{"name":"tailscale","data":{}}]}"#);
    let key = lab.preauth_key(true);
    let sa = api.service_account();
    let mut vars = vec![
        ("TS_AUTHKEY".to_string(), key.clone()),
        ("TS_KUBE_SECRET".into(), "tailscale".into()),
        (
            "TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV".into(),
            "true".into(),
        ),
        // The state lives in the secret: no state dir.
        ("TS_STATE_DIR".into(), String::new()),
    ];
    vars.extend(api.env.iter().cloned());
    let spec = |vars: &Vec<(String, String)>| BootSpec {
        node: "a",
        env: vars.clone(),
        service_account: Some(&sa),
        containerboot: false,
    };
    let ip = {
        let mut b = lab.boot(spec(&vars));
        b.expect_log("Startup complete, waiting for shutdown signal");
        let ip = b.wait_running();
        let status = b.status().expect("status");
        let stable_id = status["Self"]["ID"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dns_name = status["Self"]["DNSName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let secret = wait_for(
            REAL_PATIENCE,
            "device_id and device_fqdn in the secret",
            || {
                api.secret("tailscale")
                    .filter(|s| s.get("device_id") == Some(&stable_id))
            },
            || format!("{}\nrequests:\n{}", b.log(), api.requests().join("\n")),
        );
        assert_eq!(secret.get("device_fqdn"), Some(&dns_name));
        // tailscaled's own state keys are there too (the profile and the machine key).
        assert!(
            secret.keys().any(|k| k.starts_with("profile-")),
            "no tailscaled state in the secret: {:?}",
            secret.keys().collect::<Vec<_>>()
        );
        b.init.signal(Signal::SIGTERM);
        assert_eq!(b.init.wait_code(REAL_PATIENCE), 0, "{}", b.log());
        ip
    };
    let mut b = lab.boot(spec(&vars));
    b.expect_log("Startup complete, waiting for shutdown signal");
    assert_eq!(b.wait_running(), ip);
    assert_eq!(lab.nodes().len(), 1, "a second node: {:#?}", lab.nodes());
    assert!(!b.log().contains(&key), "the auth key reached the log");
}

/// Scenario 6: what the real daemon sends on the watches tsboot opens (mask 14 through an auth
/// key login, then mask 10 through a rename in headscale) parses with tsboot's model and carries
/// the identity the CLI reports. With `TSBOOT_CAPTURE_DIR` set, the raw streams are written
/// there: that is how `tests/fixtures/ipn-bus/real-v1.102/` was made.
#[test]
fn real_bus_messages_parse_with_tsboots_model() {
    use ts_localapi::notify::{BackendState, Notify};
    use tsboot_tests::real::BusCapture;
    let Some(lab) = Lab::new("bus_capture", &["a"]) else {
        return;
    };
    let d = lab.start_daemon("a", true);
    let login = BusCapture::start(d.socket.clone(), 14);
    login.wait_line("the first message", |_| true);
    d.up(&lab, "a", &["--accept-dns=false"]);
    let ip = d.ipv4();
    login.wait_line("Running", |l| l.contains(r#""State":6"#));

    let steady = BusCapture::start(d.socket.clone(), 10);
    steady.wait_line("the first steady message", |_| true);
    // The login stream ends here: what follows on that watch is the rename's.
    let login_lines = login.lines();
    let node = lab.node_named("a").expect("node a in headscale");
    let id = node["id"].to_string().trim_matches('"').to_string();
    lab.headscale_try(&["nodes", "rename", "--identifier", &id, "renamed-a"])
        .unwrap_or_else(|e| panic!("{e}"));
    steady.wait_line("the renamed self node", |l| l.contains("renamed-a."));

    let parse = |lines: &[String]| -> Vec<Notify> {
        lines
            .iter()
            .map(|l| {
                Notify::from_line(l.as_bytes())
                    .unwrap_or_else(|e| panic!("a real message does not parse: {e}\n{l}"))
            })
            .collect()
    };
    let steady_lines = steady.lines();
    let first = parse(&login_lines);
    assert_eq!(first[0].backend_state(), Some(BackendState::NeedsLogin));
    assert!(first
        .iter()
        .any(|n| n.backend_state() == Some(BackendState::Running)));
    let running_ip = first
        .iter()
        .chain(parse(&steady_lines).iter())
        .filter_map(|n| n.self_identity())
        .flat_map(|s| s.addresses)
        .map(|p| p.addr.to_string())
        .find(|a| *a == ip);
    assert_eq!(running_ip, Some(ip.clone()), "the bus never named {ip}");
    let renamed = parse(&steady_lines)
        .iter()
        .filter_map(|n| n.self_identity())
        .next_back()
        .expect("a self identity after the rename");
    assert!(renamed.name.starts_with("renamed-a."), "{renamed:?}");

    if let Some(dir) = std::env::var_os("TSBOOT_CAPTURE_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("capture dir");
        let write = |name: &str, lines: &[String]| {
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(dir.join(name), text).expect("write capture");
        };
        write("login-mask14.ndjson", &login_lines);
        write("steady-rename-mask10.ndjson", &steady_lines);
        println!("captured into {}", dir.display());
    }
}

/// The real daemon and tsboot's lean watch (README D26): with a peer in the netmap, a watch with
/// mask 8194 (InitialState|NoNetMap) gets no netmap and no peer in its first message nor at a
/// self change, the status without peers names this node, and tsboot's follower learns its
/// identity from it. The bytes of both kinds of watch are printed for BENCHMARKS.md.
#[test]
fn real_lean_watch_gets_no_peers_and_the_status_names_the_node() {
    use ts_localapi::localapi::{Follower, LocalApi, MASK_LEAN, MASK_STEADY, STATUS_SELF_PATH};
    use tsboot_tests::real::BusCapture;
    let Some(lab) = Lab::new("lean_watch", &["a", "b"]) else {
        return;
    };
    let a = lab.start_daemon("a", true);
    let b = lab.start_daemon("b", true);
    a.up(&lab, "a", &["--accept-dns=false"]);
    b.up(&lab, "b", &["--accept-dns=false"]);
    let ip = a.ipv4();
    let full = BusCapture::start(a.socket.clone(), MASK_STEADY);
    full.wait_line("a netmap listing peer b", |l| l.contains(r#""Peers":[{"#));
    let lean = BusCapture::start(a.socket.clone(), MASK_LEAN);
    lean.wait_line("the first lean message", |_| true);
    let first = lean.lines()[0].clone();
    assert!(first.contains(r#""State":6"#), "{first}");
    assert!(
        !first.contains("Peers") && first.contains(r#""NetMap":null"#),
        "{first}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let api = LocalApi::new(&a.socket);
    let status = rt
        .block_on(api.call(http::Method::GET, STATUS_SELF_PATH, None, None))
        .expect("status");
    assert!(status.is_success());
    let msg = rt
        .block_on(Follower::new(api, MASK_LEAN).with_self_status().next())
        .expect("first message");
    let me = msg.self_identity().expect("the status names this node");
    assert!(
        me.addresses.iter().any(|p| p.addr.to_string() == ip),
        "{me:?}"
    );
    let node = lab.node_named("a").expect("node a in headscale");
    let id = node["id"].to_string().trim_matches('"').to_string();
    lab.headscale_try(&["nodes", "rename", "--identifier", &id, "renamed-a"])
        .unwrap_or_else(|e| panic!("{e}"));
    lean.wait_line("the renamed self node", |l| l.contains("renamed-a."));
    full.wait_line("the renamed self node", |l| l.contains("renamed-a."));
    let lean_lines = lean.lines();
    assert!(
        lean_lines
            .iter()
            .all(|l| !l.contains("\"Peers\"") && !l.contains("PeersChanged")),
        "{lean_lines:#?}"
    );
    let bytes = |lines: &[String]| lines.iter().map(|l| l.len() + 1).sum::<usize>();
    let rename = |lines: &[String]| {
        lines
            .iter()
            .rev()
            .find(|l| l.contains("renamed-a."))
            .map_or(0, |l| l.len() + 1)
    };
    let full_lines = full.lines();
    println!(
        "real v1.102.5, 1 peer: first message mask {MASK_STEADY}: {} B, mask {MASK_LEAN}: {} B (+ status?peers=false {} B); rename message: mask {MASK_STEADY} {} B, mask {MASK_LEAN} {} B; whole watch: {} B vs {} B",
        full_lines[0].len() + 1,
        first.len() + 1,
        status.body.len(),
        rename(&full_lines),
        rename(&lean_lines),
        bytes(&full_lines),
        bytes(&lean_lines),
    );
}

/// Side by side, scenario 1 with the real containerboot in tsboot's place: same tailscaled,
/// same headscale, same variables. Both reach Running with the address headscale assigned.
#[test]
fn side_by_side_userspace_boot_with_containerboot() {
    let Some(lab) = Lab::new("sbs_userspace", &["a", "c"]) else {
        return;
    };
    for (node, containerboot) in [("a", false), ("c", true)] {
        let key = lab.preauth_key(false);
        let mut b = lab.boot(BootSpec {
            node,
            env: env(&[("TS_AUTHKEY", &key)]),
            service_account: None,
            containerboot,
        });
        b.expect_log("Startup complete, waiting for shutdown signal");
        let ip = b.wait_running();
        let hs = wait_for(
            REAL_PATIENCE,
            "the node in headscale",
            || lab.node_named(node),
            || format!("{:#?}", lab.nodes()),
        );
        assert!(headscale_ips(&hs).contains(&ip), "{hs}");
        b.init.signal(Signal::SIGTERM);
        let code = b.init.wait_code(REAL_PATIENCE);
        // containerboot exits 0 on SIGTERM too.
        assert_eq!(code, 0, "{}", b.log());
    }
}

/// Side by side, scenario 3a with the real containerboot: its DNAT rule carries b to the
/// backend just as tsboot's does.
#[test]
fn side_by_side_kernel_dest_ip_with_containerboot() {
    let Some(mut lab) = Lab::new("sbs_kernel", &["a", "b"]) else {
        return;
    };
    let backend = lab.add_backend("a", 8000, "hello via containerboot");
    let key = lab.preauth_key(false);
    let mut a = lab.boot(BootSpec {
        node: "a",
        env: env(&[
            ("TS_AUTHKEY", &key),
            ("TS_USERSPACE", "false"),
            ("TS_DEST_IP", &backend),
        ]),
        service_account: None,
        containerboot: true,
    });
    a.expect_log("Startup complete, waiting for shutdown signal");
    let a_ip = a.wait_running();
    let b = lab.start_daemon("b", false);
    b.up(&lab, "b", &[]);
    let body = wait_for(
        REAL_PATIENCE,
        "the backend's answer through containerboot's DNAT",
        || http_get(lab.node("b"), &a_ip, 8000, "backend").ok(),
        || format!("a:\n{}\nb:\n{}", a.log(), b.proc.log()),
    );
    assert_eq!(body, "hello via containerboot");
}
