//! The IPN bus under pressure (issue 12: items 1, 4, 9, 10b): a message larger than any buffer,
//! malformed lines, a guard whose watcher is stuck in its work, and an identity flapping
//! thousands of times. Every assertion is about what happened and in which order, never
//! about how long it took.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use ts_localapi::localapi::LocalApi;
use ts_localapi::notify::BackendState;
use tsboot_tests::fake_apiserver::Match;
use tsboot_tests::fake_tailscaled::synthetic_peer;
use tsboot_tests::fake_tailscaled_ctl::{accept_chunked, fixture};
use tsboot_tests::harness::{temp_dir, wait_until, Root, HEAD};
use tsboot_tests::kube_watch::KubeWatch;

const STARTUP: &str = " Startup complete, waiting for shutdown signal";
const LEFT_RUNNING: &str = "tailscaled left running state (now in state \"NeedsLogin\"), exiting";
const RUNNING: &str = "seed-era-testharness-running.json";
const RUNNING_NEWID: &str = "seed-era-testharness-running-newid.json";

/// Malformed lines of every kind a watcher may meet: not JSON, cut short, a known field of the
/// wrong type, an array, a bare value.
const MALFORMED: &[&str] = &[
    "this is not json",
    "{\"State\":6,\"NetMap\":{\"SelfNode\"",
    "{\"State\":\"Running\"}",
    "[6]",
    "null",
];

// ---------------------------------------------------------------------------------------------
// 12.4: a message larger than the old 64 MiB cap, read without buffering it.

/// Serves one watch whose first message is a seed-era netmap of `peers` peers (generated while
/// it is written, never held whole), then `{"State":2}`, then the end of the stream.
async fn huge_netmap_server(listener: tokio::net::UnixListener, peers: u32) -> u64 {
    let (mut s, _) = accept_chunked(&listener).await;
    let mut sent = 0u64;
    let mut chunk = String::from(
        r#"{"Version":"1.36.0-t","State":6,"NetMap":{"SelfNode":{"ID":7,"StableID":"nBigCNTRL","Name":"big.tail1234.ts.net.","Addresses":["100.64.9.9/32"]},"Peers":["#,
    );
    for n in 1..=peers {
        if n > 1 {
            chunk.push(',');
        }
        chunk.push_str(&synthetic_peer(n));
        if chunk.len() >= 64 << 10 || n == peers {
            if n == peers {
                chunk.push_str(
                    r#"],"DNS":{"CertDomains":["big.tail1234.ts.net"]},"Addresses":["100.64.9.9/32"]}}"#,
                );
                chunk.push_str("\n{\"State\":2}\n");
            }
            sent += chunk.len() as u64;
            s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .expect("write");
            s.write_all(chunk.as_bytes()).await.expect("write");
            s.write_all(b"\r\n").await.expect("write");
            chunk.clear();
        }
    }
    s.write_all(b"0\r\n\r\n").await.expect("write");
    let _ = s.flush().await;
    sent
}

#[tokio::test(flavor = "current_thread")]
async fn a_netmap_larger_than_64_mib_is_read_and_the_stream_goes_on() {
    let dir = temp_dir("huge");
    let sock = dir.join("s.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    // ~100k peers: about 80 MiB in one line, more than the old 64 MiB cap.
    let server = tokio::spawn(huge_netmap_server(listener, 110_000));
    let mut w = LocalApi::new(&sock).watch_ipn_bus(10).await.expect("watch");
    let first = w
        .next()
        .await
        .expect("the huge message is read")
        .expect("one");
    let me = first.self_identity().expect("the self node");
    assert_eq!(me.stable_id, "nBigCNTRL");
    assert_eq!(me.name, "big.tail1234.ts.net.");
    assert_eq!(first.backend_state(), Some(BackendState::Running));
    let second = w.next().await.expect("the next message").expect("one");
    assert_eq!(second.backend_state(), Some(BackendState::NeedsLogin));
    assert!(w.next().await.expect("clean end").is_none());
    let sent = server.await.expect("server");
    assert!(sent > 64 << 20, "the message must exceed 64 MiB: {sent}");
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 10b: one rule for a malformed line in every watcher: skipped, counted, logged (bounded).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubestate_skips_malformed_lines_and_keeps_watching() {
    let k = KubeWatch::new("bh-kube-bad", RUNNING).await;
    let mut w = k.watch(&["--can-patch", "true", "--guard"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    for line in MALFORMED {
        k.tsd.control(&format!("raw {line}"));
    }
    k.tsd.send_fixture(RUNNING_NEWID);
    wait_until("the change after the malformed lines", || {
        k.device_is("newID")
    });
    assert!(w.running(), "{}", w.log());
    let err = w.log();
    assert!(
        err.contains("skipping a malformed IPN bus message"),
        "{err}"
    );
    assert!(
        !err.contains("this is not json"),
        "the line itself is not logged: {err}"
    );
}

/// ts-proxy-rules under ts-init (the guard, kernel mode, the DNAT rule).
fn proxy_env(root: &Root) -> Vec<(String, String)> {
    let mut env = root.era_env(&HEAD);
    env.push(("TS_USERSPACE".into(), "false".into()));
    env.push(("TS_DEST_IP".into(), "10.0.0.5".into()));
    env
}

/// The DNAT rules the fake iptables holds now (`-d <local> ... --to-destination <dest>`).
fn dnat_rules(root: &Root) -> Vec<String> {
    let state = root.read("args.iptables.state");
    let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(chain) = v.pointer("/nat/PREROUTING").and_then(|c| c.as_array()) {
        out.extend(chain.iter().filter_map(|r| r.as_str().map(str::to_string)));
    }
    out
}

#[test]
fn proxy_rules_skips_malformed_lines_and_keeps_watching() {
    let root = Root::new("bh-proxy-bad");
    let mut init = root.start_init(&proxy_env(&root), &[]);
    init.expect_log(STARTUP);
    for line in MALFORMED {
        root.control(&format!("raw {line}"));
    }
    // The address change after them still moves the rule.
    root.notify_file("head-era-15-selfchange-address-change.json");
    wait_until("the DNAT rule on the new address", || {
        dnat_rules(&root)
            .iter()
            .any(|r| r.contains("-d 100.88.77.66/32"))
    });
    assert!(init.try_status().is_none(), "{}", init.log());
    assert!(
        init.log().contains("skipping a malformed IPN bus message"),
        "{}",
        init.log()
    );
    root.control("state 2");
    assert_eq!(init.wait_code(Duration::from_secs(30)), 1, "{}", init.log());
    assert!(init.log().contains(LEFT_RUNNING), "{}", init.log());
}

#[test]
fn ts_auth_guard_skips_malformed_lines_and_still_guards() {
    // No watcher: ts-auth stays resident as the guard.
    let root = Root::new("bh-auth-bad");
    let mut init = root.start_init(&root.era_env(&HEAD), &[]);
    init.expect_log(STARTUP);
    for line in MALFORMED {
        root.control(&format!("raw {line}"));
    }
    root.control("state 2");
    assert_eq!(init.wait_code(Duration::from_secs(30)), 1, "{}", init.log());
    let log = init.log();
    assert!(log.contains(LEFT_RUNNING), "the guard saw the state: {log}");
    assert!(
        log.contains("skipping a malformed IPN bus message"),
        "{log}"
    );
}

#[test]
fn serve_skips_malformed_lines_and_keeps_watching() {
    let root = Root::new("bh-serve-bad");
    let config = root.dir.join("serve.json");
    std::fs::write(
        &config,
        r#"{"TCP":{"443":{"HTTPS":true}},"Web":{"${TS_CERT_DOMAIN}:443":{"Handlers":{"/":{"Proxy":"http://127.0.0.1:8080"}}}}}"#,
    )
    .expect("serve config");
    let mut env = root.era_env(&HEAD);
    env.push(("TS_SERVE_CONFIG".into(), config.display().to_string()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    for line in MALFORMED {
        root.control(&format!("raw {line}"));
    }
    // A new certificate domain, told by a self change after the malformed lines.
    root.control("cert-domains other.tail1234.ts.net");
    root.notify_file("head-era-15-selfchange-address-change.json");
    wait_until("the config re-applied for the new domain", || {
        root.control("serve-config")
            .contains("other.tail1234.ts.net:443")
    });
    assert!(init.try_status().is_none(), "{}", init.log());
    assert!(
        init.log().contains("skipping a malformed IPN bus message"),
        "{}",
        init.log()
    );
}

#[test]
fn health_skips_malformed_lines_and_keeps_watching() {
    let root = Root::new("bh-health-bad");
    let port = free_port();
    let mut env = root.era_env(&HEAD);
    env.push(("TS_ENABLE_HEALTH_CHECK".into(), "true".into()));
    env.push(("TS_LOCAL_ADDR_PORT".into(), format!("127.0.0.1:{port}")));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    wait_until("healthy", || healthz(port).starts_with("HTTP/1.1 200"));
    for line in MALFORMED {
        root.control(&format!("raw {line}"));
    }
    // Still following the bus: the node losing its addresses makes it unhealthy.
    root.control(
        r#"notify {"SelfChange":{"ID":1,"StableID":"n5Ez6W7CNTRL","Name":"test-node.tail1234.ts.net.","Addresses":[]}}"#,
    );
    wait_until("unhealthy without addresses", || {
        healthz(port).starts_with("HTTP/1.1 503")
    });
    assert!(init.try_status().is_none(), "{}", init.log());
    assert!(
        init.log().contains("skipping a malformed IPN bus message"),
        "{}",
        init.log()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn healthz(port: u16) -> String {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// 12.1: the guard is never blind while its watcher works.

#[test]
fn leaving_running_ends_the_container_while_iptables_hangs() {
    let root = Root::new("bh-guard-hang");
    let hang = root.dir.join("iptables.hang");
    let mut env = proxy_env(&root);
    env.push(("FAKE_IPTABLES_HANG_FILE".into(), hang.display().to_string()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    std::fs::write(&hang, "").expect("hang file");
    // The address moves: ts-proxy-rules runs iptables, which hangs.
    root.notify_file("head-era-15-selfchange-address-change.json");
    let hung = root.dir.join("iptables.hang.hung");
    wait_until("an iptables command hanging", || hung.exists());
    root.control("state 2");
    let code = init.wait_code(Duration::from_secs(60));
    let log = init.log();
    assert!(hang.exists(), "the test never released iptables");
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(LEFT_RUNNING),
        "the guard, not the hung command, ended the container: {log}"
    );
    assert!(
        !log.contains("did not finish within"),
        "the container outlived the Running loss until iptables timed out: {log}"
    );
    let _ = std::fs::remove_file(&hang);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_running_ends_the_watcher_while_a_patch_keeps_failing() {
    let k = KubeWatch::new("bh-guard-kube", RUNNING).await;
    let mut w = k.watch(&["--can-patch", "true", "--guard"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    // Every write fails from now on: after startup ts-kubestate retries without end.
    k.api.fail_next(Match::secret_patch(), 503, 100_000);
    let before = k.patches().len();
    k.tsd.send_fixture(RUNNING_NEWID);
    wait_until("the write being retried", || {
        k.patches().len() >= before + 5
    });
    k.tsd.control("state 2");
    assert_eq!(w.wait_exit(), 1, "{}", w.log());
    let err = w.log();
    assert!(err.contains(LEFT_RUNNING), "{err}");
    assert!(!k.device_is("newID"), "the write never succeeded");
}

// ---------------------------------------------------------------------------------------------
// 12.9: flapping is coalesced; the final state is exact.

const FLAPS: usize = 2000;

/// `FLAPS` messages alternating between the fixtures `first` and `second`, then one last
/// message: `second` with each `(from, to)` of `last` replaced, a state seen nowhere before.
fn flap_file(dir: &Path, first: &str, second: &str, last: &[(&str, &str)]) -> PathBuf {
    let a = std::fs::read_to_string(fixture(first)).expect("fixture");
    let b = std::fs::read_to_string(fixture(second)).expect("fixture");
    let path = dir.join("flaps.ndjson");
    let mut f = std::fs::File::create(&path).expect("flap file");
    for i in 0..FLAPS {
        let line = if i % 2 == 0 { a.trim() } else { b.trim() };
        writeln!(f, "{line}").expect("write");
    }
    let mut end = b.trim().to_string();
    for (from, to) in last {
        end = end.replace(from, to);
    }
    writeln!(f, "{end}").expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_flapping_makes_few_apiserver_requests_and_ends_exact() {
    let k = KubeWatch::new("bh-flap-kube", RUNNING).await;
    let mut w = k.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    let before = k.patches().len();
    let dir = temp_dir("flap");
    let file = flap_file(
        &dir,
        RUNNING,
        RUNNING_NEWID,
        &[("newID", "lastID"), ("new-name", "last-name")],
    );
    k.tsd.control(&format!("replay {}", file.display()));
    wait_until("the last identity in the secret", || k.device_is("lastID"));
    let writes = k.patches().len() - before;
    assert!(
        writes <= FLAPS / 100,
        "{FLAPS} flaps made {writes} PATCHes; coalescing bounds the work"
    );
    assert_eq!(
        k.data().get("device_fqdn").map(String::as_str),
        Some("last-name.test.ts.net")
    );
    assert!(w.running(), "{}", w.log());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_address_flapping_runs_few_iptables_commands_and_ends_exact() {
    let root = Root::new("bh-flap-proxy");
    let mut init = root.start_init(&proxy_env(&root), &[]);
    init.expect_log(STARTUP);
    let mutating = || {
        std::fs::read_to_string(&root.record)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("iptables"))
            .count()
    };
    let before = mutating();
    let file = flap_file(
        &root.dir,
        "head-era-13-initial-running-with-netmap-mask10.json",
        "head-era-15-selfchange-address-change.json",
        &[("100.88.77.66", "100.99.99.99")],
    );
    root.control(&format!("replay {}", file.display()));
    wait_until("the DNAT rule on the last address alone", || {
        let rules = dnat_rules(&root);
        rules.len() == 1 && rules[0].contains("-d 100.99.99.99/32")
    });
    let runs = mutating() - before;
    assert!(
        runs <= FLAPS / 50,
        "{FLAPS} flaps ran {runs} mutating iptables commands; coalescing bounds the work"
    );
    assert!(init.try_status().is_none(), "{}", init.log());
}
