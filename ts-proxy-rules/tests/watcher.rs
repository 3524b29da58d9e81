//! The ts-proxy-rules binary against the fake tailscaled and the fake iptables: address changes
//! from both bus eras, restarts, readiness, every exit path, `--explain`, `--help`.
//!
//! Needs the fakes of package tsboot-tests built (`cargo build --workspace`).

mod common;

use common::Scene;
use nix::sys::signal::Signal;
use tsboot_tests::fake_tailscaled_ctl::fixture;

const DEST: &str = "10.0.0.5";
const A4: &str = "100.101.102.103";
const B4: &str = "100.88.77.66";
const A6: &str = "fd7a:115c:a1e0:ab12:4843:cd96:6265:6667";
const B6: &str = "fd7a:115c:a1e0:ab12:4843:cd96:6258:4d42";

fn insert(program: &str, local: &str, dest: &str) -> String {
    format!("/usr/bin/{program} -t nat -I PREROUTING 1 -d {local} -j DNAT --to-destination {dest}")
}
fn delete(program: &str, local: &str, dest: &str) -> String {
    format!("/usr/bin/{program} -t nat -D PREROUTING -d {local} -j DNAT --to-destination {dest}")
}
fn rule(local: &str, len: u8, dest: &str) -> String {
    format!("-A PREROUTING -d {local}/{len} -j DNAT --to-destination {dest}")
}

/// Both eras: the initial Running message, an identity-only change (must not touch rules), an
/// address change; exactly one rule for the current address at each step.
fn address_changes(era: &str, initial: &str, new_id: &str, new_addr: &str) {
    for (program, dest, a, b, len) in [
        ("iptables", DEST, A4, B4, 32),
        ("ip6tables", "fd00::5", A6, B6, 128),
    ] {
        let scene = Scene::new(&format!("{era}-{program}"), Some(&fixture(initial)));
        let mut p = scene.start(dest, &[]);
        p.expect_ready();
        assert_eq!(
            scene.rules(program),
            [rule(a, len, dest)],
            "{era} {program}: after start"
        );
        scene.fake.send_fixture(new_id);
        scene.fake.send_fixture(new_addr);
        p.wait_log(&format!("DNAT rule {b} -> {dest} in place"));
        assert_eq!(
            scene.rules(program),
            [rule(b, len, dest)],
            "{era} {program}: after the change"
        );
        // The identity-only change ran nothing: insert A, then insert B and delete A.
        assert_eq!(
            scene.records(),
            [
                insert(program, a, dest),
                insert(program, b, dest),
                delete(program, a, dest)
            ],
            "{era} {program}"
        );
        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait_exit(), 0, "{}", p.log());
    }
}

#[test]
fn seed_era_address_changes() {
    address_changes(
        "seed",
        "seed-era-12-initial-running-with-netmap-mask10.json",
        "seed-era-13-netmap-new-stableid-and-name.json",
        "seed-era-14-netmap-address-change.json",
    );
}

#[test]
fn head_era_address_changes() {
    address_changes(
        "head",
        "head-era-13-initial-running-with-netmap-mask10.json",
        "head-era-14-selfchange-new-stableid-and-name.json",
        "head-era-15-selfchange-address-change.json",
    );
}

#[test]
fn whole_steady_state_streams() {
    for (era, initial, stream) in [
        (
            "seed",
            "seed-era-testharness-needslogin.json",
            "seed-era-stream-steady-state-mask10.ndjson",
        ),
        (
            "head",
            "head-era-01-initial-needslogin-mask14.json",
            "head-era-stream-steady-state-mask10.ndjson",
        ),
    ] {
        // Started before login: nothing to do until a netmap arrives.
        let scene = Scene::new(&format!("steady-{era}"), Some(&fixture(initial)));
        let mut p = scene.start(DEST, &[]);
        p.wait_log("watching tailscaled at");
        scene.fake.wait_watchers(1);
        assert!(scene.records().is_empty());
        scene.fake.send_fixture(stream);
        p.wait_log(&format!("DNAT rule {B4} -> {DEST} in place"));
        p.expect_ready();
        assert_eq!(scene.rules("iptables"), [rule(B4, 32, DEST)], "{era}");
        // The stream arrives in one burst: the first address may be coalesced away (the
        // reconcile takes the latest state), or applied and then replaced. Never a pile-up.
        let records = scene.records();
        assert!(
            records == [insert("iptables", B4, DEST)]
                || records
                    == [
                        insert("iptables", A4, DEST),
                        insert("iptables", B4, DEST),
                        delete("iptables", A4, DEST)
                    ],
            "{era}: {records:?}"
        );
        // Leaving Running is ts-init's business; the watcher keeps its rule and keeps going.
        assert!(p.try_code().is_none(), "{}", p.log());
    }
}

#[test]
fn reference_harness_notify_gives_the_references_argv() {
    let scene = Scene::new(
        "harness",
        Some(&fixture("seed-era-testharness-running.json")),
    );
    let mut p = scene.start("1.2.3.4", &[]);
    p.expect_ready();
    assert_eq!(
        scene.records(),
        ["/usr/bin/iptables -t nat -I PREROUTING 1 -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4"]
    );
    // A new StableID with the same address changes nothing.
    scene
        .fake
        .send_fixture("seed-era-testharness-running-newid.json");
    scene.fake.control("state 6");
    p.signal(Signal::SIGINT);
    assert_eq!(p.wait_exit(), 0);
    assert_eq!(scene.records().len(), 1);
}

#[test]
fn restart_in_the_same_netns_adds_nothing_and_cleans_leftovers() {
    let scene = Scene::new(
        "restart",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );
    let mut p = scene.start(DEST, &[]);
    p.expect_ready();
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0);
    // The rule survives the container, as with the reference.
    assert_eq!(scene.rules("iptables"), [rule(A4, 32, DEST)]);
    let mut p = scene.start(DEST, &[]);
    p.expect_ready();
    p.wait_log("already in place");
    assert_eq!(
        scene.records(),
        [insert("iptables", A4, DEST)],
        "no second insert"
    );
    assert_eq!(scene.rules("iptables"), [rule(A4, 32, DEST)]);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0);

    // What the reference leaves after address changes, a duplicate, and rules that are not ours.
    let foreign = [
        "-A PREROUTING -d 100.101.102.103/32 -p tcp -j DNAT --to-destination 10.0.0.5",
        "-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.0.0.6",
    ];
    scene.set_rules(
        "iptables",
        &[
            "-d 100.64.0.7/32 -j DNAT --to-destination 10.0.0.5",
            "-d 100.101.102.103/32 -p tcp -j DNAT --to-destination 10.0.0.5",
            "-d 100.101.102.103/32 -j DNAT --to-destination 10.0.0.5",
            "-d 100.64.0.1/32 -j DNAT --to-destination 10.0.0.6",
            "-d 100.101.102.103/32 -j DNAT --to-destination 10.0.0.5",
        ],
    );
    let mut p = scene.start(DEST, &[]);
    p.expect_ready();
    let mut want = vec![
        foreign[0].to_string(),
        rule(A4, 32, DEST),
        foreign[1].to_string(),
    ];
    want.sort();
    let mut got = scene.rules("iptables");
    got.sort();
    assert_eq!(got, want);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0);
}

#[test]
fn no_address_of_the_family_exits_1_with_the_references_error() {
    // The harness notify has only an IPv4 address.
    let scene = Scene::new(
        "nofamily",
        Some(&fixture("seed-era-testharness-running.json")),
    );
    let mut p = scene.start("fd00::5", &[]);
    assert_eq!(p.wait_exit(), 1, "{}", p.log());
    assert!(
        p.log()
            .contains("no tailscale IP matching family of fd00::5 found in [100.64.0.1/32]"),
        "{}",
        p.log()
    );
    assert!(!p.wait_ready(), "never ready");
    assert!(scene.records().is_empty());
}

#[test]
fn iptables_failure_exits_1_naming_the_command() {
    let scene = Scene::new(
        "fail",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );
    let mut p = scene.start(DEST, &[("FAKE_IPTABLES_FAIL", "1")]);
    assert_eq!(p.wait_exit(), 1, "{}", p.log());
    let log = p.log();
    assert!(
        log.contains(&format!(
            "executing iptables -t nat -I PREROUTING 1 -d {A4} -j DNAT --to-destination {DEST} failed: exit status 1: iptables: fake failure"
        )),
        "{log}"
    );
    assert!(!p.wait_ready());
}

#[test]
fn missing_iptables_exits_1() {
    let scene = Scene::new(
        "noipt",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );
    // Forced to iptables: the missing program is named.
    let mut p = scene.start_with_path(
        DEST,
        &[("TS_DEBUG_FIREWALL_MODE", "iptables")],
        "/nonexistent",
    );
    assert_eq!(p.wait_exit(), 1, "{}", p.log());
    assert!(
        p.log().contains("is iptables installed and on PATH?"),
        "{}",
        p.log()
    );
    // Unset: like tailscaled, no iptables means nftables, and then nft is what is missing.
    let mut p = scene.start_with_path(DEST, &[], "/nonexistent");
    assert_eq!(p.wait_exit(), 1, "{}", p.log());
    for want in [
        "firewall backend: nftables (TS_DEBUG_FIREWALL_MODE unset and iptables and ip6tables not found on PATH",
        "is nft installed and on PATH?",
    ] {
        assert!(p.log().contains(want), "{want}: {}", p.log());
    }
}

#[test]
fn tailscaled_gone_exits_1() {
    let mut scene = Scene::new(
        "gone",
        Some(&fixture(
            "head-era-13-initial-running-with-netmap-mask10.json",
        )),
    );
    let mut p = scene.start(DEST, &[]);
    p.expect_ready();
    // A stream cut is not the end: the watcher watches again.
    scene.fake.control("drop");
    p.wait_log("watching again");
    scene.fake.wait_watchers(1);
    let _ = scene.fake.try_control("exit 0");
    scene.fake.wait_exit();
    assert_eq!(p.wait_exit(), 1, "{}", p.log());
    assert!(p.log().contains("tailscaled is gone"), "{}", p.log());
    assert_eq!(
        scene.records().len(),
        1,
        "the re-watch did not re-apply anything"
    );
}

#[test]
fn no_tailscaled_at_all_exits_1_with_advice() {
    let scene = Scene::new("nodaemon", None);
    let sock = scene.fake.dir.join("elsewhere.sock");
    let mut p = scene.start(DEST, &[("TS_SOCKET", sock.to_str().unwrap())]);
    assert_eq!(p.wait_exit(), 1);
    assert!(p.log().contains("is tailscaled running?"), "{}", p.log());
}

#[test]
fn invalid_configuration_exits_2_and_changes_nothing() {
    let scene = Scene::new(
        "config",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );
    for (env, want) in [
        (
            vec![("TS_DEST_IP", "not-an-ip")],
            "TS_DEST_IP=\"not-an-ip\"",
        ),
        (
            vec![("TS_DEST_IP", "")],
            "neither TS_DEST_IP nor TS_TAILNET_TARGET_IP / TS_TAILNET_TARGET_FQDN is set",
        ),
        (
            vec![("TS_TAILNET_TARGET_IP", "100.64.0.300")],
            "TS_TAILNET_TARGET_IP=\"100.64.0.300\"",
        ),
        (
            vec![
                ("TS_TAILNET_TARGET_IP", "100.64.0.3"),
                ("TS_TAILNET_TARGET_FQDN", "db.ts.net"),
            ],
            "set only one of TS_TAILNET_TARGET_IP and TS_TAILNET_TARGET_FQDN",
        ),
        (
            vec![
                ("TS_DEST_IP", ""),
                ("TS_USERSPACE", "true"),
                ("TS_TAILNET_TARGET_FQDN", "db.ts.net"),
            ],
            "TS_TAILNET_TARGET_FQDN is not supported with TS_USERSPACE",
        ),
        (
            vec![("TS_DEBUG_FIREWALL_MODE", "nft")],
            "TS_DEBUG_FIREWALL_MODE=\"nft\"",
        ),
        (
            vec![("TS_USERSPACE", "true")],
            "TS_DEST_IP is not supported with TS_USERSPACE",
        ),
        (vec![("TS_READY_FD", "x")], "TS_READY_FD"),
    ] {
        let mut p = scene.start(DEST, &env);
        assert_eq!(p.wait_exit(), 2, "{env:?}: {}", p.log());
        assert!(p.log().contains(want), "{env:?}: {}", p.log());
    }
    assert!(scene.records().is_empty());
    assert_eq!(scene.fake.requests().len(), 0, "nothing even connected");
}

#[test]
fn flags_override_the_environment() {
    let scene = Scene::new(
        "flags",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );
    let sock = scene.fake.socket.display().to_string();
    let mut p = scene.start_args(
        "9.9.9.9",
        &[("TS_SOCKET", "/nonexistent.sock")],
        &["--dest-ip", "fd00::5", "--socket", &sock],
    );
    p.expect_ready();
    assert_eq!(scene.records(), [insert("ip6tables", A6, "fd00::5")]);
}

#[test]
fn explain_prints_the_plan_and_runs_nothing() {
    let scene = Scene::new(
        "explain",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );
    let out = scene.output(&["--explain"], DEST, &[("TS_READY_FD", "3")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "firewall backend: iptables (TS_DEBUG_FIREWALL_MODE unset: iptables, tailscaled's default)",
        "iptables -t nat -I PREROUTING 1 -d <tailnet IP> -j DNAT --to-destination 10.0.0.5",
        "iptables -t nat -S PREROUTING",
        "watch-ipn-bus?mask=8194",
        &scene.fake.socket.display().to_string(),
        "fd 3",
        &format!("now: tailnet addresses [{A4}/32"),
        &format!("ingress DNAT {A4} -> 10.0.0.5: iptables -t nat -I PREROUTING 1 -d {A4} -j DNAT --to-destination 10.0.0.5"),
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        scene.records().is_empty() && scene.readonly_records().is_empty(),
        "--explain ran iptables"
    );
}

#[test]
fn help_names_every_variable_and_version_works() {
    let scene = Scene::new("help", None);
    let out = scene.output(&["--help"], DEST, &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--dest-ip", "--socket", "--ready-fd", "--explain"] {
        assert!(help.contains(flag), "{help}");
    }
    for var in [
        "[env: TS_DEST_IP]",
        "[env: TS_SOCKET]",
        "[env: TS_READY_FD]",
        "Exit status",
    ] {
        assert!(help.contains(var), "{help}");
    }
    let out = scene.output(&["--version"], DEST, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ts-proxy-rules "));
    let out = scene.output(&["--bogus"], DEST, &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_before_the_first_netmap_exits_0() {
    let scene = Scene::new("early", None);
    let mut p = scene.start(DEST, &[]);
    p.wait_log("watching tailscaled at");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0, "{}", p.log());
}

#[test]
fn a_name_not_in_the_netmap_is_not_ready_until_it_appears() {
    let scene = Scene::new(
        "fqdn-wait",
        Some(&fixture(
            "head-era-13-initial-running-with-netmap-mask10.json",
        )),
    );
    let mut p = scene.start("", &[("TS_TAILNET_TARGET_FQDN", "web.tail1234.ts.net.")]);
    p.wait_log("TS_TAILNET_TARGET_FQDN=web.tail1234.ts.net. matches no peer with an address in the netmap (1 peers)");
    // The bus watch asks for peer changes.
    assert!(
        scene
            .fake
            .requests()
            .iter()
            .any(|r| r.contains("watch-ipn-bus?mask=12298")),
        "{:?}",
        scene.fake.requests()
    );
    assert!(scene.records().is_empty(), "{:?}", scene.records());
    // The peer appears (letter case and the trailing dot do not matter).
    scene.fake.control(
        r#"notify {"PeersChanged":[{"ID":77,"Name":"WEB.tail1234.ts.net.","Addresses":["100.90.7.7/32"]}]}"#,
    );
    p.expect_ready();
    assert_eq!(
        scene.records(),
        [
            "/usr/bin/iptables -t nat -I PREROUTING 1 ! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination 100.90.7.7".to_string(),
            format!("/usr/bin/iptables -t nat -I POSTROUTING 1 -d 100.90.7.7/32 -m comment --comment tsboot-egress -j SNAT --to-source {A4}"),
            "/usr/bin/iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu".to_string(),
            "/usr/bin/iptables -t mangle -A FORWARD -i tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu".to_string(),
        ]
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0, "{}", p.log());
}
