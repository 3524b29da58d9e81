//! ts-proxy-rules against the REAL iptables/ip6tables, in a private network namespace.
//!
//! A holder process (`unshare -n sleep`) owns the namespace; ts-proxy-rules and every listing
//! run inside it through `nsenter -n`, so the namespace outlives one watcher and a restart in
//! the same namespace can be tested. The fake tailscaled stays outside: its socket is a path in
//! the filesystem, reachable from any network namespace.
//!
//! Needs root, `unshare`, `nsenter`, `iptables`, `ip6tables`; otherwise each test prints a loud
//! `SKIPPED:` line (CI runs as root with iptables installed).

mod common;

use common::netns::{Netns, SYSTEM_PATH};
use common::{Scene, BIN};
use nix::sys::signal::Signal;
use tsboot_tests::fake_tailscaled_ctl::fixture;

fn start_in(ns: &Netns, scene: &Scene, dest: &str) -> tsboot_tests::harness::Proc {
    let mut args: Vec<String> = ns.enter_args();
    args.push(BIN.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.spawn(&ns.nsenter, &args, dest, &[], SYSTEM_PATH)
}

fn real(test: &str, program: &str, dest: &str, a: &str, b: &str, len: u8) {
    let Some(ns) = Netns::new(
        test,
        &["iptables", "ip6tables"],
        &[
            &["iptables", "-t", "nat", "-S", "PREROUTING"],
            &["ip6tables", "-t", "nat", "-S", "PREROUTING"],
        ],
    ) else {
        return;
    };
    let rule =
        |addr: &str| format!("-A PREROUTING -d {addr}/{len} -j DNAT --to-destination {dest}");
    let scene = Scene::new(
        test,
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );

    // Leftovers of an earlier container in this namespace: a stale address (the reference's
    // leak), a duplicate of the current rule, and a rule that is not ours.
    let foreign = format!(
        "-A PREROUTING -d {b}/{len} -p tcp -m tcp --dport 80 -j DNAT --to-destination {dest}"
    );
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        b,
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        a,
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        a,
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        b,
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);

    let mut p = start_in(&ns, &scene, dest);
    p.expect_ready();
    assert_eq!(
        ns.rules(program, "nat", "PREROUTING"),
        [rule(a), foreign.clone()],
        "{test}: after the first reconcile\n{}",
        p.log()
    );

    // Address changes: A -> B -> A -> B, exactly one rule of ours each time.
    let steps = [
        ("seed-era-14-netmap-address-change.json", b),
        ("seed-era-12-initial-running-with-netmap-mask10.json", a),
        ("seed-era-14-netmap-address-change.json", b),
    ];
    for (file, now) in steps {
        scene.fake.send_fixture(file);
        p.wait_log(&format!("DNAT rule {now} -> {dest} in place"));
        let mut got = ns.rules(program, "nat", "PREROUTING");
        got.sort();
        let mut want = vec![rule(now), foreign.clone()];
        want.sort();
        assert_eq!(got, want, "{test}: after {file}\n{}", p.log());
        // Re-arm the log wait: the next step's address appears in this step's log too.
        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait_exit(), 0, "{}", p.log());
        p = start_in(&ns, &scene, dest);
        p.expect_ready();
        // A restart in the same namespace finds its rule and changes nothing.
        p.wait_log(&format!("DNAT rule {now} -> {dest} already in place"));
    }
    let mut got = ns.rules(program, "nat", "PREROUTING");
    got.sort();
    let mut want = vec![rule(b), foreign];
    want.sort();
    assert_eq!(got, want, "{test}: final");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0);
}

#[test]
fn real_iptables_keeps_one_rule_across_address_changes_and_restarts() {
    real(
        "real-v4",
        "iptables",
        "10.0.0.5",
        "100.101.102.103",
        "100.88.77.66",
        32,
    );
}

#[test]
fn real_ip6tables_keeps_one_rule_across_address_changes_and_restarts() {
    real(
        "real-v6",
        "ip6tables",
        "fd00::5",
        "fd7a:115c:a1e0:ab12:4843:cd96:6265:6667",
        "fd7a:115c:a1e0:ab12:4843:cd96:6258:4d42",
        128,
    );
}
