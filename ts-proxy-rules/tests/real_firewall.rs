//! Both firewall drivers against the REAL iptables, ip6tables and nft, in private network
//! namespaces: every rule shape (ingress DNAT, egress DNAT, SNAT, MSS clamp in both directions,
//! IPv4 and IPv6) and every reconcile path (first install over leftovers and duplicates,
//! restart with the rules in place, node address change, target change, nothing wanted), with
//! other tools' rules left alone; then real TCP through the egress rules of each backend
//! (client namespace -> node namespace -> "tailscale0" -> target namespace), checking the
//! DNAT, the SNAT and the MSS clamp on the wire; then the ts-proxy-rules binary following a
//! name through the fake tailscaled in each backend.
//!
//! Needs root, `unshare`, `nsenter`, `iptables`, `ip6tables`, `nft`, `ip`; otherwise each test
//! prints a loud `SKIPPED:` line (CI runs as root with all of them installed). The rule sets
//! seen at each step are printed (`--nocapture` shows them).

mod common;

use common::netns::{Netns, SYSTEM_PATH};
use common::Scene;
use nix::sys::signal::Signal;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use ts_proxy_rules::firewall::{Backend, Driver};
use ts_proxy_rules::rules::{self, Family, Rule};
use tsboot_tests::fake_tailscaled_ctl::fixture;
use tsboot_tests::harness::PATIENCE;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn ipt_ns(test: &str) -> Option<Netns> {
    Netns::new(
        test,
        &["iptables", "ip6tables"],
        &[
            &["iptables", "-t", "nat", "-S"],
            &["ip6tables", "-t", "nat", "-S"],
            &["iptables", "-t", "mangle", "-S"],
        ],
    )
}

fn nft_ns(test: &str) -> Option<Netns> {
    Netns::new(test, &["nft"], &[&["nft", "list", "ruleset"]])
}

/// One family's scenario: (ingress destination, node addresses A then B, targets T1 then T2).
struct Case {
    family: Family,
    dest: &'static str,
    a: &'static str,
    b: &'static str,
    t1: &'static str,
    t2: &'static str,
}

const V4: Case = Case {
    family: Family::V4,
    dest: "10.0.0.5",
    a: "100.101.102.103",
    b: "100.88.77.66",
    t1: "100.90.1.2",
    t2: "100.90.1.9",
};

const V6: Case = Case {
    family: Family::V6,
    dest: "fd00::5",
    a: "fd7a:115c:a1e0::1",
    b: "fd7a:115c:a1e0::2",
    t1: "fd7a:115c:a1e0::90",
    t2: "fd7a:115c:a1e0::99",
};

fn want(c: &Case, local: &str, target: &str) -> Vec<Rule> {
    let mut v = vec![Rule::IngressDnat {
        local: ip(local),
        dest: ip(c.dest),
        dest_raw: c.dest.to_string(),
    }];
    v.extend(rules::egress(ip(target), ip(local)));
    v.sort();
    v
}

fn len(c: &Case) -> u8 {
    c.family.full_len()
}

// ---------------------------------------------------------------------------------------------
// iptables / ip6tables

/// Every `-A` line of the three chains tsboot uses.
fn ipt_rules(ns: &Netns, program: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (table, chain) in [
        ("nat", "PREROUTING"),
        ("nat", "POSTROUTING"),
        ("mangle", "FORWARD"),
    ] {
        for r in ns.rules(program, table, chain) {
            out.push(format!("-t {table} {r}"));
        }
    }
    out
}

fn ipt_expected(c: &Case, local: &str, target: &str, foreign: &[String]) -> Vec<String> {
    let l = len(c);
    let mut v = vec![
        format!("-t nat -A PREROUTING -d {local}/{l} -j DNAT --to-destination {}", c.dest),
        format!("-t nat -A PREROUTING ! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination {target}"),
        format!("-t nat -A POSTROUTING -d {target}/{l} -m comment --comment tsboot-egress -j SNAT --to-source {local}"),
        "-t mangle -A FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu".to_string(),
        "-t mangle -A FORWARD -i tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu".to_string(),
    ];
    v.extend(foreign.iter().cloned());
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn real_iptables(test: &str, c: &Case) {
    let Some(ns) = ipt_ns(test) else { return };
    let program = if c.family == Family::V4 {
        "iptables"
    } else {
        "ip6tables"
    };
    let l = len(c);
    let run = |args: &[&str]| {
        let mut v = vec![program];
        v.extend(args);
        ns.run(&v);
    };
    // Someone else's rules in the same chains, and leftovers of an earlier container: a rule
    // for an old address, a duplicate, a stale egress target and SNAT.
    run(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        "eth0",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        c.dest,
    ]);
    run(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "eth0",
        "-j",
        "MASQUERADE",
    ]);
    run(&[
        "-t",
        "mangle",
        "-A",
        "FORWARD",
        "-o",
        "tailscale0",
        "-p",
        "tcp",
        "--tcp-flags",
        "SYN,RST",
        "SYN",
        "-j",
        "TCPMSS",
        "--clamp-mss-to-pmtu",
    ]);
    let foreign = sorted(ipt_rules(&ns, program));
    assert_eq!(foreign.len(), 3, "{foreign:?}");
    run(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        c.b,
        "-j",
        "DNAT",
        "--to-destination",
        c.dest,
    ]);
    run(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        c.a,
        "-j",
        "DNAT",
        "--to-destination",
        c.dest,
    ]);
    run(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        c.a,
        "-j",
        "DNAT",
        "--to-destination",
        c.dest,
    ]);
    run(&[
        "-t",
        "nat",
        "-I",
        "PREROUTING",
        "1",
        "!",
        "-i",
        "tailscale0",
        "-m",
        "comment",
        "--comment",
        "tsboot-egress",
        "-j",
        "DNAT",
        "--to-destination",
        c.t2,
    ]);
    let snat_dst = format!("{}/{l}", c.t2);
    run(&[
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "1",
        "-d",
        &snat_dst,
        "-m",
        "comment",
        "--comment",
        "tsboot-egress",
        "-j",
        "SNAT",
        "--to-source",
        c.b,
    ]);
    eprintln!(
        "{test}: leftovers before the first reconcile:\n{}",
        ipt_rules(&ns, program).join("\n")
    );

    block_on(async {
        let mut d = Driver::new(Backend::Iptables, ns.runner());
        let changes = d.reconcile(c.family, &want(c, c.a, c.t1)).await.unwrap();
        eprintln!("{test}: first reconcile ran:\n{}", changes.join("\n"));
        assert_eq!(
            sorted(ipt_rules(&ns, program)),
            ipt_expected(c, c.a, c.t1, &foreign),
            "{test}: first"
        );
        eprintln!(
            "{test}: rules with address {} and target {}:\n{}",
            c.a,
            c.t1,
            ipt_rules(&ns, program).join("\n")
        );

        // A restart (a new driver) with the rules in place: nothing.
        let mut d = Driver::new(Backend::Iptables, ns.runner());
        assert!(
            d.reconcile(c.family, &want(c, c.a, c.t1))
                .await
                .unwrap()
                .is_empty(),
            "{test}: restart"
        );

        // Address change.
        let changes = d.reconcile(c.family, &want(c, c.b, c.t1)).await.unwrap();
        eprintln!(
            "{test}: address change {} -> {} ran:\n{}",
            c.a,
            c.b,
            changes.join("\n")
        );
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert_eq!(
            sorted(ipt_rules(&ns, program)),
            ipt_expected(c, c.b, c.t1, &foreign),
            "{test}: address change"
        );
        eprintln!(
            "{test}: rules after the address change:\n{}",
            ipt_rules(&ns, program).join("\n")
        );

        // Target change.
        let changes = d.reconcile(c.family, &want(c, c.b, c.t2)).await.unwrap();
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert_eq!(
            sorted(ipt_rules(&ns, program)),
            ipt_expected(c, c.b, c.t2, &foreign),
            "{test}: target change"
        );

        // Duplicates of every rule (what today's image piles up): one of each is left.
        for rule in want(c, c.b, c.t2) {
            let cmd = ts_proxy_rules::firewall::iptables::add(&rule);
            let mut v = vec![cmd.program.as_str()];
            let argv = cmd.argv();
            v.extend(argv.iter().map(String::as_str));
            ns.run(&v);
        }
        let changes = d.reconcile(c.family, &want(c, c.b, c.t2)).await.unwrap();
        assert_eq!(changes.len(), 5, "{changes:?}");
        assert_eq!(
            sorted(ipt_rules(&ns, program)),
            ipt_expected(c, c.b, c.t2, &foreign),
            "{test}: duplicates"
        );

        // Nothing wanted (egress and ingress switched off): only the foreign rules remain.
        let ingress_only = vec![Rule::IngressDnat {
            local: ip(c.b),
            dest: ip(c.dest),
            dest_raw: c.dest.to_string(),
        }];
        d.reconcile(c.family, &ingress_only).await.unwrap();
        let mut left = foreign.clone();
        left.push(format!(
            "-t nat -A PREROUTING -d {}/{l} -j DNAT --to-destination {}",
            c.b, c.dest
        ));
        assert_eq!(
            sorted(ipt_rules(&ns, program)),
            sorted(left),
            "{test}: egress off"
        );
    });
}

#[test]
fn real_iptables_every_shape_and_reconcile_path() {
    real_iptables("real-ipt-v4", &V4);
}

#[test]
fn real_ip6tables_every_shape_and_reconcile_path() {
    real_iptables("real-ipt-v6", &V6);
}

// ---------------------------------------------------------------------------------------------
// nftables

fn nft_table(ns: &Netns, family: Family) -> String {
    let fam = if family == Family::V4 { "ip" } else { "ip6" };
    ns.try_run(&["nft", "list", "table", fam, "tsboot"])
        .unwrap_or_else(|_| format!("(no table {fam} tsboot)"))
}

/// The rule lines of tsboot's table, without handles, sorted.
fn nft_rules(ns: &Netns, family: Family) -> Vec<String> {
    sorted(
        nft_table(ns, family)
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(" comment \""))
            .map(str::to_string)
            .collect(),
    )
}

fn nft_expected(c: &Case, local: &str, target: &str) -> Vec<String> {
    let daddr = if c.family == Family::V4 {
        "ip daddr"
    } else {
        "ip6 daddr"
    };
    sorted(vec![
        format!("{daddr} {local} dnat to {} comment \"tsboot ingress {local} to {}\"", c.dest, c.dest),
        format!("iifname != \"tailscale0\" dnat to {target} comment \"tsboot egress non-tailscale0 to {target}\""),
        format!("{daddr} {target} snat to {local} comment \"tsboot egress snat {local} for {target}\""),
        "oifname \"tailscale0\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment \"tsboot clamp mss out tailscale0\"".to_string(),
        "iifname \"tailscale0\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment \"tsboot clamp mss in tailscale0\"".to_string(),
    ])
}

/// Everything but tsboot's tables, for "never touched".
fn nft_others(ns: &Netns) -> String {
    let all = ns.run(&["nft", "list", "ruleset"]);
    let mut out = Vec::new();
    let mut skipping = false;
    for line in all.lines() {
        if line.starts_with("table ") {
            skipping = line.contains(" tsboot ");
        }
        if !skipping {
            out.push(line);
        }
    }
    out.join("\n")
}

fn real_nft(test: &str, c: &Case) {
    let Some(ns) = nft_ns(test) else { return };
    let fam = if c.family == Family::V4 { "ip" } else { "ip6" };
    // tailscaled's own table and chains, an iptables-nft style nat table: never touched.
    ns.run(&["nft", &format!("add table {fam} filter; add chain {fam} filter ts-forward; add rule {fam} filter ts-forward iifname \"tailscale0\" accept; add table {fam} nat; add chain {fam} nat POSTROUTING {{ type nat hook postrouting priority srcnat; policy accept; }}; add rule {fam} nat POSTROUTING oifname \"eth0\" masquerade")]);
    // Leftovers in tsboot's table: a stale rule, a rule without a comment, a duplicate.
    let mut stale = want(c, c.b, c.t2);
    stale.push(Rule::EgressDnat { target: ip(c.t1) });
    block_on(async {
        let mut d = Driver::new(Backend::Nftables, ns.runner());
        d.reconcile(c.family, &stale).await.unwrap();
    });
    ns.run(&[
        "nft",
        &format!("add rule {fam} tsboot prerouting meta l4proto tcp accept"),
    ]);
    let others = nft_others(&ns);
    eprintln!(
        "{test}: leftovers before the first reconcile:\n{}",
        nft_table(&ns, c.family)
    );

    block_on(async {
        let mut d = Driver::new(Backend::Nftables, ns.runner());
        let changes = d.reconcile(c.family, &want(c, c.a, c.t1)).await.unwrap();
        eprintln!(
            "{test}: first reconcile ran (one transaction):\n{}",
            changes.join("\n")
        );
        assert_eq!(
            nft_rules(&ns, c.family),
            nft_expected(c, c.a, c.t1),
            "{test}: first"
        );
        eprintln!(
            "{test}: rules with address {} and target {}:\n{}",
            c.a,
            c.t1,
            nft_table(&ns, c.family)
        );

        let mut d = Driver::new(Backend::Nftables, ns.runner());
        assert!(
            d.reconcile(c.family, &want(c, c.a, c.t1))
                .await
                .unwrap()
                .is_empty(),
            "{test}: restart"
        );

        let changes = d.reconcile(c.family, &want(c, c.b, c.t1)).await.unwrap();
        eprintln!(
            "{test}: address change {} -> {} ran:\n{}",
            c.a,
            c.b,
            changes.join("\n")
        );
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert_eq!(
            nft_rules(&ns, c.family),
            nft_expected(c, c.b, c.t1),
            "{test}: address change"
        );
        eprintln!(
            "{test}: rules after the address change:\n{}",
            nft_table(&ns, c.family)
        );

        let changes = d.reconcile(c.family, &want(c, c.b, c.t2)).await.unwrap();
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert_eq!(
            nft_rules(&ns, c.family),
            nft_expected(c, c.b, c.t2),
            "{test}: target change"
        );

        // Duplicates, added by hand with the driver's own statements.
        for rule in want(c, c.b, c.t2) {
            ns.run(&["nft", &ts_proxy_rules::firewall::nftables::add(&rule)]);
        }
        let changes = d.reconcile(c.family, &want(c, c.b, c.t2)).await.unwrap();
        assert_eq!(changes.len(), 5, "{changes:?}");
        assert_eq!(
            nft_rules(&ns, c.family),
            nft_expected(c, c.b, c.t2),
            "{test}: duplicates"
        );

        // A chain replaced behind tsboot's back: the table is rebuilt.
        ns.run(&[
            "nft",
            &format!("flush chain {fam} tsboot forward; delete chain {fam} tsboot forward"),
        ]);
        d.reconcile(c.family, &want(c, c.b, c.t2)).await.unwrap();
        assert_eq!(
            nft_rules(&ns, c.family),
            nft_expected(c, c.b, c.t2),
            "{test}: rebuilt"
        );

        // Nothing wanted: the table goes.
        d.reconcile(c.family, &[]).await.unwrap();
        assert!(
            ns.try_run(&["nft", "list", "table", fam, "tsboot"])
                .is_err(),
            "{test}: table left"
        );
        assert!(d.reconcile(c.family, &[]).await.unwrap().is_empty());
    });
    assert_eq!(nft_others(&ns), others, "{test}: other tables touched");
}

#[test]
fn real_nft_every_shape_and_reconcile_path_v4() {
    real_nft("real-nft-v4", &V4);
}

#[test]
fn real_nft_every_shape_and_reconcile_path_v6() {
    real_nft("real-nft-v6", &V6);
}

// ---------------------------------------------------------------------------------------------
// Real traffic through the egress rules

/// client (10.1.0.2) --c0/n0-- node (10.1.0.1; tailscale0 100.64.0.1, MTU 1280) --t0-- target
/// (100.64.0.2). The target has a route to the node's tailnet address only, so an answer
/// proves the SNAT; the MSS the target sees proves the clamp (the client's link allows 1460).
struct Topology {
    client: Netns,
    node: Netns,
    target: Netns,
}

const NODE_TS: &str = "100.64.0.1";
const TARGET_TS: &str = "100.64.0.2";
const NODE_LAN: &str = "10.1.0.1";

fn topology(test: &str, tools: &[&str]) -> Option<Topology> {
    let mut tools = tools.to_vec();
    tools.push("ip");
    let node = Netns::new(test, &tools, &[&["ip", "link", "show", "lo"]])?;
    let client = Netns::new(test, &["ip"], &[])?;
    let target = Netns::new(test, &["ip"], &[])?;
    let c = client.pid().to_string();
    let t = target.pid().to_string();
    for cmd in [
        vec![
            "ip", "link", "add", "n0", "type", "veth", "peer", "name", "c0", "netns", &c,
        ],
        vec![
            "ip",
            "link",
            "add",
            "tailscale0",
            "mtu",
            "1280",
            "type",
            "veth",
            "peer",
            "name",
            "t0",
            "netns",
            &t,
        ],
        vec!["ip", "addr", "add", "10.1.0.1/24", "dev", "n0"],
        vec!["ip", "addr", "add", "100.64.0.1/32", "dev", "tailscale0"],
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "link", "set", "n0", "up"],
        vec!["ip", "link", "set", "tailscale0", "up"],
        vec!["ip", "route", "add", "100.64.0.0/10", "dev", "tailscale0"],
        vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ] {
        node.run(&cmd);
    }
    for cmd in [
        vec!["ip", "addr", "add", "10.1.0.2/24", "dev", "c0"],
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "link", "set", "c0", "up"],
        vec!["ip", "route", "add", "default", "via", "10.1.0.1"],
    ] {
        client.run(&cmd);
    }
    for cmd in [
        vec!["ip", "link", "set", "t0", "mtu", "1500"],
        vec!["ip", "addr", "add", "100.64.0.2/32", "dev", "t0"],
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "link", "set", "t0", "up"],
        vec!["ip", "route", "add", "100.64.0.1/32", "dev", "t0"],
    ] {
        target.run(&cmd);
    }
    Some(Topology {
        client,
        node,
        target,
    })
}

/// What the target saw: the peer address and the MSS of the accepted connection.
fn serve_once(target: &Netns) -> std::sync::mpsc::Receiver<(SocketAddr, i32)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let pid = target.pid();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("ns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind((TARGET_TS, 8080)).expect("bind on the target");
        let _ = ready_tx.send(());
        let (mut s, peer) = listener.accept().expect("accept");
        let mss = tcp_maxseg(&s);
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf);
        let _ = s.write_all(format!("pong {peer}").as_bytes());
        let _ = tx.send((peer, mss));
    });
    ready_rx.recv_timeout(PATIENCE).expect("server ready");
    rx
}

#[allow(unsafe_code, reason = "TCP_MAXSEG has no safe getter")]
fn tcp_maxseg(s: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd as _;
    let mut v: nix::libc::c_int = 0;
    let mut l = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: valid fd, out-pointers to properly sized locals.
    let r = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_MAXSEG,
            (&mut v as *mut nix::libc::c_int).cast(),
            &mut l,
        )
    };
    assert_eq!(r, 0, "getsockopt TCP_MAXSEG");
    v
}

/// The client connects to the node's LAN address (anything not on tailscale0 is egress).
fn client_request(client: &Netns) -> Result<String, String> {
    let pid = client.pid();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let addr: SocketAddr = format!("{NODE_LAN}:8080")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(PATIENCE))
            .map_err(|e| e.to_string())?;
        s.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        Ok(answer)
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}

fn traffic(test: &str, nft: bool) {
    let tools: &[&str] = if nft { &["nft"] } else { &["iptables"] };
    let Some(t) = topology(test, tools) else {
        return;
    };
    // Without rules nothing answers on the node's LAN address.
    assert!(
        client_request(&t.client).is_err(),
        "{test}: answered without egress rules"
    );
    let want = rules::egress(ip(TARGET_TS), ip(NODE_TS)).to_vec();
    block_on(async {
        if nft {
            Driver::new(Backend::Nftables, t.node.runner())
                .reconcile(Family::V4, &want)
                .await
                .unwrap();
        } else {
            Driver::new(Backend::Iptables, t.node.runner())
                .reconcile(Family::V4, &want)
                .await
                .unwrap();
        }
    });
    let seen = serve_once(&t.target);
    let answer = client_request(&t.client).unwrap_or_else(|e| {
        panic!(
            "{test}: no answer through egress: {e}\nnode rules:\n{}",
            if nft {
                t.node.run(&["nft", "list", "ruleset"])
            } else {
                t.node.run(&["iptables-save"])
            }
        )
    });
    let (peer, mss) = seen
        .recv_timeout(PATIENCE)
        .expect("target saw the connection");
    assert_eq!(
        peer.ip(),
        ip(NODE_TS),
        "{test}: SNAT to the node's tailnet address"
    );
    assert_eq!(answer, format!("pong {peer}"));
    // tailscale0's MTU 1280 => at most 1240 (less with options); unclamped it would be ~1448.
    assert!(
        mss <= 1240,
        "{test}: MSS {mss} not clamped to tailscale0's path MTU"
    );
    eprintln!(
        "{test}: client -> {NODE_LAN}:8080 answered {answer:?}; target saw peer {peer}, MSS {mss}"
    );
}

#[test]
fn real_traffic_through_iptables_egress() {
    traffic("traffic-ipt", false);
}

#[test]
fn real_traffic_through_nftables_egress() {
    traffic("traffic-nft", true);
}

// ---------------------------------------------------------------------------------------------
// The binary: a name followed through the fake tailscaled, in each backend

const DB1: &str = "db-1.tail1234.ts.net";
const A4: &str = "100.101.102.103";
const B4: &str = "100.88.77.66";
const DB1_V4: &str = "100.90.1.2";

fn start_egress(ns: &Netns, scene: &Scene, mode: &str) -> tsboot_tests::harness::Proc {
    let mut args: Vec<String> = ns.enter_args();
    args.push(common::BIN.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.spawn(
        &ns.nsenter,
        &args,
        "",
        &[
            ("TS_TAILNET_TARGET_FQDN", DB1),
            ("TS_DEBUG_FIREWALL_MODE", mode),
        ],
        SYSTEM_PATH,
    )
}

fn binary_follows_a_name(test: &str, mode: &str) {
    let ns = match mode {
        "nftables" => nft_ns(test),
        _ => ipt_ns(test),
    };
    let Some(ns) = ns else { return };
    let scene = Scene::new(
        test,
        Some(&fixture(
            "head-era-13-initial-running-with-netmap-mask10.json",
        )),
    );
    let snat = |local: &str, target: &str| -> String {
        match mode {
            "nftables" => format!("ip daddr {target} snat to {local} comment \"tsboot egress snat {local} for {target}\""),
            _ => format!("-A POSTROUTING -d {target}/32 -m comment --comment tsboot-egress -j SNAT --to-source {local}"),
        }
    };
    let listing = || -> String {
        match mode {
            "nftables" => format!(
                "{}\n{}",
                nft_table(&ns, Family::V4),
                nft_table(&ns, Family::V6)
            ),
            _ => format!(
                "{}\n{}",
                ipt_rules(&ns, "iptables").join("\n"),
                ipt_rules(&ns, "ip6tables").join("\n")
            ),
        }
    };
    let count = |needle: &str| listing().lines().filter(|l| l.contains(needle)).count();

    let mut p = start_egress(&ns, &scene, mode);
    p.expect_ready();
    p.wait_log(&format!("firewall backend: {mode}"));
    p.wait_log(&format!("TS_TAILNET_TARGET_FQDN={DB1} is [{DB1_V4}"));
    assert_eq!(
        count(&snat(A4, DB1_V4)),
        1,
        "{test}: start\n{}\n{}",
        listing(),
        p.log()
    );
    eprintln!(
        "{test}: rules at start (node {A4}, {DB1} = {DB1_V4}):\n{}",
        listing()
    );

    // The node's address changes (HEAD SelfChange): the SNAT follows.
    scene
        .fake
        .send_fixture("head-era-15-selfchange-address-change.json");
    p.wait_log(&format!("egress SNAT to {B4} for {DB1_V4}"));
    assert_eq!(
        count(&snat(B4, DB1_V4)),
        1,
        "{test}: address change\n{}",
        listing()
    );
    assert_eq!(
        count(&snat(A4, DB1_V4)),
        0,
        "{test}: stale SNAT left\n{}",
        listing()
    );
    eprintln!(
        "{test}: rules after the address change (node {B4}):\n{}",
        listing()
    );

    // Restart in the same namespace: the rules are found, nothing changes.
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0, "{}", p.log());
    let before = listing();
    let mut p = start_egress(&ns, &scene, mode);
    p.expect_ready();
    p.wait_log("rules already in place, nothing to change");
    assert_eq!(listing(), before, "{test}: restart changed the rules");

    // The peer moves (a PeersChanged delta): DNAT and SNAT follow.
    scene.fake.control(
        r#"notify {"PeersChanged":[{"ID":4711234500001,"StableID":"nK3pQ8rCNTRL","Name":"db-1.tail1234.ts.net.","Addresses":["100.90.1.9/32"]}]}"#,
    );
    p.wait_log(&format!("TS_TAILNET_TARGET_FQDN={DB1} is [100.90.1.9]"));
    p.wait_log(&format!("egress SNAT to {B4} for 100.90.1.9"));
    assert_eq!(
        count(&snat(B4, "100.90.1.9")),
        1,
        "{test}: target change\n{}",
        listing()
    );
    assert_eq!(count(DB1_V4), 0, "{test}: stale target left\n{}", listing());
    eprintln!(
        "{test}: rules after the target moved to 100.90.1.9:\n{}",
        listing()
    );

    // The peer leaves the netmap: the last rules stay, with a warning.
    scene
        .fake
        .control(r#"notify {"PeersRemoved":[4711234500001]}"#);
    p.wait_log("matches no peer with an address in the netmap");
    assert_eq!(count(&snat(B4, "100.90.1.9")), 1);
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_exit(), 0, "{}", p.log());
}

#[test]
fn binary_follows_a_name_with_iptables() {
    binary_follows_a_name("bin-fqdn-ipt", "iptables");
}

#[test]
fn binary_follows_a_name_with_nftables() {
    binary_follows_a_name("bin-fqdn-nft", "nftables");
}
