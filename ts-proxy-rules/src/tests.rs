//! Unit tests: address choice, the wanted rule set, both drivers' plans (tables of listings,
//! a property test against the fake iptables' rule model), the backend choice, and errors.

use super::firewall::iptables::ingress_rule;
use super::firewall::nftables::{self, Listing};
use super::firewall::{self as fw, Backend, Driver, Probe, Runner};
use super::rules::{Direction, Family, Rule};
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use ts_common::argv::Command;
use ts_common::cli::Failure as _;
use tsboot_tests::fake_cli::{apply as ipt_apply, parse_iptables, Tables};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg(dest: Option<&str>, target: Option<TailnetTarget>) -> Config {
    Config {
        dest: dest.map(|d| Dest {
            ip: ip(d),
            raw: d.to_string(),
        }),
        target,
        firewall_mode: None,
        socket: "/tmp/tailscaled.sock".into(),
        ready_fd: None,
        guard: false,
    }
}

fn prefixes(list: &[&str]) -> Vec<IpPrefix> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

/// The fake iptables' rule model (both programs) as a runner, recording every command.
#[derive(Default)]
struct Model {
    tables: BTreeMap<String, Tables>,
    log: Vec<String>,
    fail_on: Option<&'static str>,
}

impl Model {
    fn chain(&self, program: &str, table: &str, chain: &str) -> Vec<String> {
        self.tables
            .get(program)
            .and_then(|t| t.get(table))
            .and_then(|t| t.get(chain))
            .cloned()
            .unwrap_or_default()
    }

    fn seed(&mut self, program: &str, table: &str, chain: &str, spec: &str) {
        let words: Vec<String> = spec.split(' ').map(str::to_string).collect();
        self.tables
            .entry(program.into())
            .or_default()
            .entry(table.into())
            .or_default()
            .entry(chain.into())
            .or_default()
            .push(tsboot_tests::fake_cli::canonical_rule(&words));
    }

    fn mutations(&self) -> Vec<&str> {
        self.log
            .iter()
            .filter(|l| !l.contains(" -S"))
            .map(String::as_str)
            .collect()
    }
}

impl Runner for Model {
    async fn run(&mut self, cmd: &Command) -> Result<String, ProxyError> {
        self.log.push(cmd.display_redacted());
        if self
            .fail_on
            .is_some_and(|f| cmd.argv().iter().any(|a| a == f))
        {
            return Err(ProxyError::Command {
                command: cmd.display_redacted(),
                program: cmd.program.clone(),
                status: "exit status 4".into(),
                stderr: "iptables: Resource temporarily unavailable.\n".into(),
            });
        }
        let (table, parsed) = parse_iptables(&cmd.argv()).expect("our argv parses");
        let tables = self.tables.entry(cmd.program.clone()).or_default();
        let (code, out, err) = ipt_apply(&cmd.program, tables, &table, &parsed);
        if code != 0 {
            return Err(ProxyError::Command {
                command: cmd.display_redacted(),
                program: cmd.program.clone(),
                status: format!("exit status {code}"),
                stderr: err,
            });
        }
        Ok(out)
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn ingress(local: &str, dest: &str) -> Rule {
    Rule::IngressDnat {
        local: ip(local),
        dest: ip(dest),
        dest_raw: dest.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses and the wanted set

#[test]
fn pick_local_takes_first_single_ip_of_the_family() {
    let both = prefixes(&["100.64.0.1/32", "fd7a::1/128", "100.64.0.2/32"]);
    assert_eq!(pick_local(&both, ip("1.2.3.4")).unwrap(), ip("100.64.0.1"));
    assert_eq!(pick_local(&both, ip("fd00::5")).unwrap(), ip("fd7a::1"));
    // IPv4-mapped IPv6 is IPv6 (as the reference's Is4() check has it).
    assert_eq!(
        pick_local(&both, ip("::ffff:1.2.3.4")).unwrap(),
        ip("fd7a::1")
    );
    // Not single IPs: skipped.
    let wide = prefixes(&["100.64.0.0/10", "100.64.0.9/32"]);
    assert_eq!(pick_local(&wide, ip("1.2.3.4")).unwrap(), ip("100.64.0.9"));
}

#[test]
fn no_family_address_is_the_references_error() {
    let v4 = prefixes(&["100.64.0.1/32", "100.64.0.0/10"]);
    let err = pick_local(&v4, ip("fd00::5")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "no tailscale IP matching family of fd00::5 found in [100.64.0.1/32 100.64.0.0/10]"
        ),
        "{msg}"
    );
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn wanted_rules_for_ingress_and_egress() {
    let addrs = prefixes(&["100.64.0.1/32", "fd7a::1/128"]);
    let c = cfg(Some("10.0.0.5"), None);
    assert_eq!(
        wanted(&c, &addrs, &Egress::None, false).unwrap(),
        [ingress("100.64.0.1", "10.0.0.5")]
    );
    let c = cfg(None, Some(TailnetTarget::Ip(ip("100.64.0.2"))));
    let want = wanted(&c, &addrs, &Egress::To(vec![ip("100.64.0.2")]), false).unwrap();
    assert_eq!(want.len(), 4);
    assert!(want.contains(&Rule::EgressDnat {
        target: ip("100.64.0.2")
    }));
    assert!(want.contains(&Rule::EgressSnat {
        target: ip("100.64.0.2"),
        local: ip("100.64.0.1")
    }));
    for dir in [Direction::Out, Direction::In] {
        assert!(want.contains(&Rule::ClampMss {
            family: Family::V4,
            dir
        }));
    }
    // An explicit IPv6 target on a node without IPv6: the reference's error.
    let c = cfg(None, Some(TailnetTarget::Ip(ip("fd7a::2"))));
    let err = wanted(&c, &prefixes(&["100.64.0.1/32"]), &Egress::None, true).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no tailscale IP matching family of fd7a::2"),
        "{err}"
    );
}

#[test]
fn wanted_rules_for_a_name_take_each_family_once() {
    let c = cfg(None, Some(TailnetTarget::Fqdn("db.ts.net".into())));
    let both = prefixes(&["100.64.0.1/32", "fd7a::1/128"]);
    let to = Egress::To(vec![ip("100.90.1.2"), ip("fd7a::2"), ip("100.90.1.9")]);
    let want = wanted(&c, &both, &to, true).unwrap();
    assert_eq!(want.len(), 8, "{want:?}");
    assert!(want.contains(&Rule::EgressSnat {
        target: ip("fd7a::2"),
        local: ip("fd7a::1")
    }));
    assert!(!want.contains(&Rule::EgressDnat {
        target: ip("100.90.1.9")
    }));
    // No IPv6 NAT: IPv4 only. A node without IPv6: IPv4 only.
    assert_eq!(wanted(&c, &both, &to, false).unwrap().len(), 4);
    assert_eq!(
        wanted(&c, &prefixes(&["100.64.0.1/32"]), &to, true)
            .unwrap()
            .len(),
        4
    );
    // Nothing usable: an error naming the name and the addresses.
    let err = wanted(
        &c,
        &prefixes(&["fd7a::1/128"]),
        &Egress::To(vec![ip("100.90.1.2")]),
        true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("egress to db.ts.net"), "{err}");
    // Unresolved: ingress only (here: nothing).
    assert!(wanted(&c, &both, &Egress::Unresolved, true)
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// iptables driver

#[test]
fn ingress_listing_recognises_only_our_shape() {
    let dest = ip("1.2.3.4");
    let ours = |l: &str| ingress_rule(&l.split_whitespace().collect::<Vec<_>>(), dest);
    assert_eq!(
        ours("-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4"),
        Some(ip("100.64.0.1"))
    );
    assert_eq!(
        ours("-A PREROUTING -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4"),
        Some(ip("100.64.0.1"))
    );
    for other in [
        "-P PREROUTING ACCEPT",
        "-A PREROUTING -d 100.64.0.0/24 -j DNAT --to-destination 1.2.3.4",
        "-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.5",
        "-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4:80",
        "-A PREROUTING -d 100.64.0.1/32 -p tcp -j DNAT --to-destination 1.2.3.4",
        "-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4 --random",
        "-A OUTPUT -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4",
        "-A PREROUTING -s 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4",
        "-A PREROUTING -d 100.64.0.1/32 -j ACCEPT --to-destination 1.2.3.4",
        "-A PREROUTING -d bogus/32 -j DNAT --to-destination 1.2.3.4",
        "",
    ] {
        assert_eq!(ours(other), None, "{other:?}");
    }
}

#[test]
fn ingress_reconcile_keeps_the_references_commands() {
    block_on(async {
        let mut d = Driver::new(Backend::Iptables, Model::default());
        let a = [ingress("100.64.0.1", "1.2.3.4")];
        let b = [ingress("100.64.0.2", "1.2.3.4")];
        assert_eq!(d.reconcile(Family::V4, &a).await.unwrap().len(), 1);
        assert!(
            d.reconcile(Family::V4, &a).await.unwrap().is_empty(),
            "second run changes nothing"
        );
        assert_eq!(d.reconcile(Family::V4, &b).await.unwrap().len(), 2);
        assert_eq!(
            d.runner.chain("iptables", "nat", "PREROUTING"),
            ["-d 100.64.0.2/32 -j DNAT --to-destination 1.2.3.4"]
        );
        assert_eq!(
            d.runner.mutations(),
            [
                "iptables -t nat -I PREROUTING 1 -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -I PREROUTING 1 -d 100.64.0.2 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -D PREROUTING -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
            ]
        );
        // Every reconcile reads the three chains.
        assert_eq!(
            &d.runner.log[..3],
            [
                "iptables -t nat -S PREROUTING",
                "iptables -t nat -S POSTROUTING",
                "iptables -t mangle -S FORWARD",
            ]
        );
    });
}

#[test]
fn ingress_leaks_and_duplicates_are_cleaned_foreign_rules_kept() {
    block_on(async {
        let mut m = Model::default();
        for spec in [
            "-d 100.64.0.7 -j DNAT --to-destination 1.2.3.4",
            "-d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
            "-d 100.64.0.8 -j DNAT --to-destination 1.2.3.4",
            "-d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
            "-d 100.64.0.9 -p tcp -j DNAT --to-destination 1.2.3.4",
            "-d 100.64.0.9 -j DNAT --to-destination 9.9.9.9",
        ] {
            m.seed("iptables", "nat", "PREROUTING", spec);
        }
        let mut d = Driver::new(Backend::Iptables, m);
        let changes = d
            .reconcile(Family::V4, &[ingress("100.64.0.1", "1.2.3.4")])
            .await
            .unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(
            d.runner.chain("iptables", "nat", "PREROUTING"),
            [
                "-d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4",
                "-d 100.64.0.9/32 -p tcp -j DNAT --to-destination 1.2.3.4",
                "-d 100.64.0.9/32 -j DNAT --to-destination 9.9.9.9",
            ]
        );
    });
}

fn egress4(target: &str, local: &str) -> Vec<Rule> {
    rules::egress(ip(target), ip(local)).to_vec()
}

#[test]
fn egress_rules_in_iptables_and_every_reconcile_path() {
    block_on(async {
        let mut d = Driver::new(Backend::Iptables, Model::default());
        // Someone else's rules in the same chains.
        d.runner.seed(
            "iptables",
            "nat",
            "POSTROUTING",
            "-d 100.64.0.2/32 -j SNAT --to-source 10.9.9.9",
        );
        d.runner.seed(
            "iptables",
            "nat",
            "PREROUTING",
            "! -i eth9 -j DNAT --to-destination 100.64.0.2",
        );
        d.runner.seed(
            "iptables",
            "mangle",
            "FORWARD",
            "-o tailscale0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
        );
        let foreign = |m: &Model| {
            (
                m.chain("iptables", "nat", "POSTROUTING")
                    .into_iter()
                    .filter(|r| !r.contains("tsboot"))
                    .collect::<Vec<_>>(),
                m.chain("iptables", "nat", "PREROUTING")
                    .into_iter()
                    .filter(|r| !r.contains("tsboot"))
                    .collect::<Vec<_>>(),
                m.chain("iptables", "mangle", "FORWARD")
                    .into_iter()
                    .filter(|r| !r.contains("tsboot"))
                    .collect::<Vec<_>>(),
            )
        };
        let before = foreign(&d.runner);
        let tagged = |m: &Model, table: &str, chain: &str| {
            m.chain("iptables", table, chain)
                .into_iter()
                .filter(|r| r.contains("tsboot-egress"))
                .collect::<Vec<_>>()
        };

        let want = egress4("100.64.0.2", "100.64.0.1");
        assert_eq!(d.reconcile(Family::V4, &want).await.unwrap().len(), 4);
        assert_eq!(
            d.runner.mutations(),
            [
                "iptables -t nat -I PREROUTING 1 ! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination 100.64.0.2",
                "iptables -t nat -I POSTROUTING 1 -d 100.64.0.2/32 -m comment --comment tsboot-egress -j SNAT --to-source 100.64.0.1",
                "iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu",
                "iptables -t mangle -A FORWARD -i tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu",
            ]
        );
        // Restart with the rules in place: nothing.
        assert!(d.reconcile(Family::V4, &want).await.unwrap().is_empty());

        // Node address change: only the SNAT moves.
        let want = egress4("100.64.0.2", "100.64.0.77");
        let changes = d.reconcile(Family::V4, &want).await.unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(
            tagged(&d.runner, "nat", "POSTROUTING"),
            ["-d 100.64.0.2/32 -m comment --comment tsboot-egress -j SNAT --to-source 100.64.0.77"]
        );

        // Target change: DNAT and SNAT move, the clamp stays.
        let want = egress4("100.64.0.3", "100.64.0.77");
        let changes = d.reconcile(Family::V4, &want).await.unwrap();
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert_eq!(
            tagged(&d.runner, "nat", "PREROUTING"),
            ["! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination 100.64.0.3"]
        );
        assert_eq!(
            tagged(&d.runner, "nat", "POSTROUTING"),
            ["-d 100.64.0.3/32 -m comment --comment tsboot-egress -j SNAT --to-source 100.64.0.77"]
        );
        assert_eq!(tagged(&d.runner, "mangle", "FORWARD").len(), 2);

        // Duplicates (today's image accumulates them): one of each is left.
        for cmd in want.iter().map(fw::iptables::add) {
            d.runner.run(&cmd).await.unwrap();
        }
        assert_eq!(tagged(&d.runner, "mangle", "FORWARD").len(), 4);
        assert_eq!(d.reconcile(Family::V4, &want).await.unwrap().len(), 4);
        assert_eq!(tagged(&d.runner, "nat", "PREROUTING").len(), 1);
        assert_eq!(tagged(&d.runner, "nat", "POSTROUTING").len(), 1);
        assert_eq!(tagged(&d.runner, "mangle", "FORWARD").len(), 2);

        // Egress no longer wanted: every tagged rule goes.
        assert_eq!(d.reconcile(Family::V4, &[]).await.unwrap().len(), 4);
        assert!(tagged(&d.runner, "nat", "PREROUTING").is_empty());
        assert!(tagged(&d.runner, "mangle", "FORWARD").is_empty());
        assert_eq!(foreign(&d.runner), before, "foreign rules untouched");
    });
}

#[test]
fn egress_ipv6_uses_ip6tables() {
    block_on(async {
        let mut d = Driver::new(Backend::Iptables, Model::default());
        let want = rules::egress(ip("fd7a::2"), ip("fd7a::1")).to_vec();
        d.reconcile(Family::V6, &want).await.unwrap();
        assert_eq!(
            d.runner.chain("ip6tables", "nat", "POSTROUTING"),
            ["-d fd7a::2/128 -m comment --comment tsboot-egress -j SNAT --to-source fd7a::1"]
        );
        assert!(d.runner.log.iter().all(|l| l.starts_with("ip6tables ")));
        assert!(d.reconcile(Family::V6, &want).await.unwrap().is_empty());
    });
}

#[test]
fn iptables_failure_names_the_command_and_its_stderr() {
    block_on(async {
        let mut d = Driver::new(
            Backend::Iptables,
            Model {
                fail_on: Some("-I"),
                ..Default::default()
            },
        );
        let err = d
            .reconcile(Family::V4, &[ingress("100.64.0.1", "1.2.3.4")])
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "executing iptables -t nat -I PREROUTING 1 -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4 failed: exit status 4: iptables: Resource temporarily unavailable."
            ),
            "{msg}"
        );
        assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
        assert_eq!(err.exit_code(), 1);
    });
}

#[test]
fn a_tools_stderr_cannot_forge_a_log_line() {
    block_on(async {
        let script = "printf 'bad\\nboot: 2026/01/01 00:00:00 ts-init: forged\\n' >&2; exit 3";
        let cmd = Command::new("sh").arg("-c").arg(script);
        let err = fw::SystemRunner::default().run(&cmd).await.unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains("exit status 3: bad\\nboot: 2026/01/01"),
            "{msg}"
        );
    });
}

#[test]
fn system_runner_reports_a_missing_program_and_kills_a_hung_one() {
    block_on(async {
        let cmd = Command::new("/nonexistent/iptables").arg("-S");
        let err = fw::SystemRunner::default().run(&cmd).await.unwrap_err();
        assert!(matches!(err, ProxyError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("is /nonexistent/iptables installed and on PATH?"),
            "{err}"
        );
        let mut quick = fw::SystemRunner {
            timeout: Duration::from_millis(200),
        };
        let err = quick
            .run(&Command::new("sleep").arg("30"))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("sleep 30 did not finish within"),
            "{err}"
        );
        let err = quick
            .run(
                &Command::new("sh")
                    .arg("-c")
                    .arg("printf 'bad\\033[2J' >&2; exit 3"),
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status 3: bad\\u{1b}[2J"), "{msg}");
    });
}

#[test]
fn config_needs_something_to_do() {
    let s = Settings::from_vars([("TS_USERSPACE", "false")]).unwrap();
    let err = Config::from_settings(&s).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("set TS_DEST_IP"), "{err}");
    let s = Settings::from_vars([
        ("TS_USERSPACE", "false"),
        ("TS_DEST_IP", "fd00::5"),
        ("TS_SOCKET", "/s"),
    ])
    .unwrap();
    let c = Config::from_settings(&s).unwrap();
    assert_eq!(c.dest.as_ref().map(|d| d.raw.as_str()), Some("fd00::5"));
    assert_eq!(
        c.mask(),
        ts_localapi::localapi::MASK_LEAN,
        "the state, no netmap"
    );
    let s = Settings::from_vars([
        ("TS_USERSPACE", "false"),
        ("TS_TAILNET_TARGET_FQDN", "db.ts.net."),
        ("TS_DEBUG_FIREWALL_MODE", "nftables"),
    ])
    .unwrap();
    let c = Config::from_settings(&s).unwrap();
    assert_eq!(c.target, Some(TailnetTarget::Fqdn("db.ts.net.".into())));
    assert_eq!(c.firewall_mode, Some(FirewallMode::Nftables));
    assert_eq!(c.mask(), 8192 | 4096 | 8 | 2, "peers are needed for a name");
}

fn arb_addr() -> impl Strategy<Value = String> {
    (0u8..6).prop_map(|n| format!("100.64.0.{n}"))
}

proptest! {
    /// Whatever rules exist (ours for any address or target, duplicates, foreign ones), one
    /// reconcile leaves exactly the wanted rules once each and every foreign rule as it was;
    /// a second reconcile changes nothing.
    #[test]
    fn exactly_the_wanted_rules_after_any_history(
        existing in proptest::collection::vec((arb_addr(), arb_addr(), 0u8..6), 0..10),
        local in arb_addr(),
        target in arb_addr(),
        with_ingress in any::<bool>(),
        with_egress in any::<bool>(),
    ) {
        block_on(async {
            let mut m = Model::default();
            let mut foreign = Vec::new();
            for (a, b, kind) in &existing {
                let (table, chain, spec) = match kind {
                    0 => ("nat", "PREROUTING", format!("-d {a} -j DNAT --to-destination 1.2.3.4")),
                    1 => ("nat", "PREROUTING", format!("-d {a} -p tcp -j DNAT --to-destination 1.2.3.4")),
                    2 => ("nat", "PREROUTING", format!("! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination {a}")),
                    3 => ("nat", "POSTROUTING", format!("-d {a}/32 -m comment --comment tsboot-egress -j SNAT --to-source {b}")),
                    4 => ("nat", "POSTROUTING", format!("-d {a}/32 -j SNAT --to-source {b}")),
                    _ => ("mangle", "FORWARD", "-o tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu".to_string()),
                };
                m.seed("iptables", table, chain, &spec);
                let ours = *kind == 0 && with_ingress || matches!(kind, 2 | 3 | 5);
                if !ours {
                    foreign.push((chain, m.chain("iptables", table, chain).last().cloned().unwrap()));
                }
            }
            let mut want = Vec::new();
            if with_ingress {
                want.push(ingress(&local, "1.2.3.4"));
            }
            if with_egress {
                want.extend(egress4(&target, &local));
            }
            let mut d = Driver::new(Backend::Iptables, m);
            d.reconcile(Family::V4, &want).await.unwrap();
            for (table, chain) in [("nat", "PREROUTING"), ("nat", "POSTROUTING"), ("mangle", "FORWARD")] {
                let rules = d.runner.chain("iptables", table, chain);
                let left: Vec<_> = foreign.iter().filter(|(c, _)| *c == chain).map(|(_, r)| r.clone()).collect();
                let kept: Vec<_> = rules.iter().filter(|r| left.contains(r)).cloned().collect();
                prop_assert_eq!(&kept, &left, "foreign rules in {}", chain);
                let ours = rules.len() - kept.len();
                let expected = want.iter().filter(|r| match r {
                    Rule::IngressDnat { .. } | Rule::EgressDnat { .. } => chain == "PREROUTING",
                    Rule::EgressSnat { .. } => chain == "POSTROUTING",
                    Rule::ClampMss { .. } => chain == "FORWARD",
                }).count();
                prop_assert_eq!(ours, expected, "{:?} in {}", rules, chain);
            }
            prop_assert!(d.reconcile(Family::V4, &want).await.unwrap().is_empty());
            Ok(())
        })?;
    }

    #[test]
    fn any_listing_plans_without_panicking(listing in ".{0,400}") {
        let want = egress4("100.64.0.2", "100.64.0.1");
        let _ = fw::iptables::plan_chain(Family::V4, "nat", "PREROUTING", &listing, &want);
        let _ = nftables::parse_listing(&listing);
    }
}

// ---------------------------------------------------------------------------------------------
// nftables driver (the real nft is exercised in tests/real_firewall.rs)

/// `nft -j list table ip tsboot` of the real nft 1.0.6, with an ingress rule and a stale one.
const NFT_LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "tsboot", "handle": 1}}, {"chain": {"family": "ip", "table": "tsboot", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "tsboot", "name": "postrouting", "handle": 2, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"chain": {"family": "ip", "table": "tsboot", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"}}, {"rule": {"family": "ip", "table": "tsboot", "chain": "prerouting", "handle": 4, "comment": "tsboot ingress 100.64.0.1 to 10.0.0.5", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "100.64.0.1"}}, {"dnat": {"addr": "10.0.0.5"}}]}}, {"rule": {"family": "ip", "table": "tsboot", "chain": "prerouting", "handle": 5, "comment": "tsboot ingress 100.64.0.9 to 10.0.0.5", "expr": []}}, {"rule": {"family": "ip", "table": "tsboot", "chain": "prerouting", "handle": 6, "expr": []}}]}"#;

#[test]
fn nft_listing_is_read() {
    let l = nftables::parse_listing(NFT_LISTING).unwrap();
    assert!(l.exists);
    assert_eq!(l.chains.len(), 3);
    assert_eq!(
        l.rules,
        [
            (
                "prerouting".into(),
                4,
                "tsboot ingress 100.64.0.1 to 10.0.0.5".into()
            ),
            (
                "prerouting".into(),
                5,
                "tsboot ingress 100.64.0.9 to 10.0.0.5".into()
            ),
            ("prerouting".into(), 6, String::new()),
        ]
    );
    assert_eq!(nftables::count_rules(NFT_LISTING).unwrap(), 3);
    assert!(nftables::parse_listing("{}").is_err());
    assert!(nftables::parse_listing("not json").is_err());
}

#[test]
fn nft_plan_every_path() {
    let have = nftables::parse_listing(NFT_LISTING).unwrap();
    let a = ingress("100.64.0.1", "10.0.0.5");
    // Keep handle 4, drop the stale and the unlabelled rule, add the egress rules.
    let mut want = vec![a.clone()];
    want.extend(egress4("100.64.0.2", "100.64.0.1"));
    let plan = nftables::plan(Family::V4, &have, &want);
    assert_eq!(
        plan,
        [
            "add rule ip tsboot prerouting iifname != \"tailscale0\" dnat to 100.64.0.2 comment \"tsboot egress non-tailscale0 to 100.64.0.2\"",
            "add rule ip tsboot postrouting ip daddr 100.64.0.2 snat to 100.64.0.1 comment \"tsboot egress snat 100.64.0.1 for 100.64.0.2\"",
            "add rule ip tsboot forward oifname \"tailscale0\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment \"tsboot clamp mss out tailscale0\"",
            "add rule ip tsboot forward iifname \"tailscale0\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment \"tsboot clamp mss in tailscale0\"",
            "delete rule ip tsboot prerouting handle 5",
            "delete rule ip tsboot prerouting handle 6",
        ]
    );
    // In place: nothing.
    let only = Listing {
        rules: vec![(
            "prerouting".into(),
            4,
            "tsboot ingress 100.64.0.1 to 10.0.0.5".into(),
        )],
        ..nftables::parse_listing(NFT_LISTING).unwrap()
    };
    assert!(nftables::plan(Family::V4, &only, std::slice::from_ref(&a)).is_empty());
    // A duplicate (same comment twice): one goes.
    let dup = Listing {
        rules: vec![
            (
                "prerouting".into(),
                4,
                "tsboot ingress 100.64.0.1 to 10.0.0.5".into(),
            ),
            (
                "prerouting".into(),
                7,
                "tsboot ingress 100.64.0.1 to 10.0.0.5".into(),
            ),
        ],
        ..nftables::parse_listing(NFT_LISTING).unwrap()
    };
    assert_eq!(
        nftables::plan(Family::V4, &dup, std::slice::from_ref(&a)),
        ["delete rule ip tsboot prerouting handle 7"]
    );
    // The right comment in the wrong chain is not the rule.
    let wrong = Listing {
        rules: vec![(
            "forward".into(),
            4,
            "tsboot ingress 100.64.0.1 to 10.0.0.5".into(),
        )],
        ..nftables::parse_listing(NFT_LISTING).unwrap()
    };
    assert_eq!(
        nftables::plan(Family::V4, &wrong, std::slice::from_ref(&a)).len(),
        2
    );
    // No table: built whole, in one transaction.
    let plan = nftables::plan(
        Family::V6,
        &Listing::default(),
        &[ingress("fd7a::1", "fd00::5")],
    );
    assert_eq!(
        plan,
        [
            "add table ip6 tsboot",
            "delete table ip6 tsboot",
            "add table ip6 tsboot",
            "add chain ip6 tsboot prerouting { type nat hook prerouting priority dstnat; policy accept; }",
            "add chain ip6 tsboot postrouting { type nat hook postrouting priority srcnat; policy accept; }",
            "add chain ip6 tsboot forward { type filter hook forward priority mangle; policy accept; }",
            "add rule ip6 tsboot prerouting ip6 daddr fd7a::1 dnat to fd00::5 comment \"tsboot ingress fd7a::1 to fd00::5\"",
        ]
    );
    // A chain changed behind tsboot's back: rebuilt.
    let mut odd = nftables::parse_listing(NFT_LISTING).unwrap();
    odd.chains[0].3 = 0;
    assert_eq!(
        nftables::plan(Family::V4, &odd, std::slice::from_ref(&a))[1],
        "delete table ip tsboot"
    );
    // Nothing wanted: the table goes (and a missing one stays missing).
    assert_eq!(
        nftables::plan(Family::V4, &have, &[]),
        ["delete table ip tsboot"]
    );
    assert!(nftables::plan(Family::V4, &Listing::default(), &[]).is_empty());
    // One nft invocation for the whole change.
    let cmd = nftables::transaction(&[
        "add table ip tsboot".into(),
        "delete table ip tsboot".into(),
    ]);
    assert_eq!(cmd.argv(), ["add table ip tsboot; delete table ip tsboot"]);
}

// ---------------------------------------------------------------------------------------------
// Backend choice

/// Answers from a table: which programs exist, and each read command's result.
struct TableProbe {
    on_path: Vec<&'static str>,
    answers: Vec<(&'static str, Result<&'static str, &'static str>)>,
    asked: Vec<String>,
}

impl Probe for TableProbe {
    fn on_path(&self, program: &str) -> bool {
        self.on_path.contains(&program)
    }

    async fn read(&mut self, cmd: &Command) -> Result<String, ProxyError> {
        let shown = cmd.display_redacted();
        self.asked.push(shown.clone());
        match self.answers.iter().find(|(c, _)| *c == shown) {
            Some((_, Ok(out))) => Ok(out.to_string()),
            Some((_, Err(e))) => Err(ProxyError::Command {
                command: shown,
                program: cmd.program.clone(),
                status: "exit status 1".into(),
                stderr: e.to_string(),
            }),
            None => Err(ProxyError::Spawn {
                command: shown,
                program: cmd.program.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }
}

/// Canned answers of read commands, by command line.
type Answers = Vec<(&'static str, Result<&'static str, &'static str>)>;

const IPT_RULES: &str = "-P INPUT ACCEPT\n-A INPUT -j ts-input\n";
const IPT_EMPTY: &str = "-P INPUT ACCEPT\n";
const NFT_RULES: &str =
    r#"{"nftables":[{"table":{}},{"rule":{"handle":1}},{"rule":{"handle":2}}]}"#;
const NFT_EMPTY: &str = r#"{"nftables":[{"metainfo":{}}]}"#;

fn choose_with(
    mode: Option<FirewallMode>,
    on_path: &[&'static str],
    answers: &[(&'static str, Result<&'static str, &'static str>)],
) -> (Backend, String, Vec<String>) {
    let mut p = TableProbe {
        on_path: on_path.to_vec(),
        answers: answers.to_vec(),
        asked: Vec::new(),
    };
    let c = block_on(fw::choose(mode, &mut p));
    (c.backend, c.why, p.asked)
}

#[test]
fn forced_and_default_choices() {
    let all = ["iptables", "ip6tables", "nft"];
    let (b, why, asked) = choose_with(Some(FirewallMode::Nftables), &all, &[]);
    assert_eq!((b, asked.len()), (Backend::Nftables, 0), "{why}");
    let (b, _, _) = choose_with(Some(FirewallMode::Iptables), &[], &[]);
    assert_eq!(b, Backend::Iptables);
    // Unset: iptables whenever it is there, without running anything.
    let (b, why, asked) = choose_with(None, &all, &[]);
    assert_eq!((b, asked.len()), (Backend::Iptables, 0));
    assert!(why.contains("tailscaled's default"), "{why}");
    // Neither program: nftables.
    let (b, why, _) = choose_with(None, &["nft"], &[]);
    assert_eq!(b, Backend::Nftables);
    assert!(why.contains("iptables and ip6tables not found"), "{why}");
    // One missing, the other fails: nftables; the other works: iptables.
    let (b, _, asked) = choose_with(None, &["iptables"], &[("iptables -S", Err("no"))]);
    assert_eq!(
        (b, asked),
        (Backend::Nftables, vec!["iptables -S".to_string()])
    );
    let (b, _, _) = choose_with(None, &["ip6tables"], &[("ip6tables -S", Ok(IPT_EMPTY))]);
    assert_eq!(b, Backend::Iptables);
}

#[test]
fn auto_follows_the_rules_in_use() {
    let all = ["iptables", "ip6tables", "nft"];
    let ipt = |v4: Result<&'static str, &'static str>, v6: Result<&'static str, &'static str>| {
        vec![("iptables -S", v4), ("ip6tables -S", v6)]
    };
    let auto = Some(FirewallMode::Auto);
    let cases: Vec<(Answers, Backend, &str)> = vec![
        // nftables rules only.
        (
            [
                ipt(Ok(IPT_EMPTY), Ok(IPT_EMPTY)),
                vec![("nft -j list ruleset", Ok(NFT_RULES))],
            ]
            .concat(),
            Backend::Nftables,
            "nftables in use",
        ),
        // iptables rules only (legacy: nft sees none).
        (
            [
                ipt(Ok(IPT_RULES), Ok(IPT_EMPTY)),
                vec![("nft -j list ruleset", Ok(NFT_EMPTY))],
            ]
            .concat(),
            Backend::Iptables,
            "iptables in use",
        ),
        // Both (iptables-nft): nftables.
        (
            [
                ipt(Ok(IPT_RULES), Ok(IPT_RULES)),
                vec![("nft -j list ruleset", Ok(NFT_RULES))],
            ]
            .concat(),
            Backend::Nftables,
            "nftables available",
        ),
        // Neither: nftables when it works.
        (
            [
                ipt(Ok(IPT_EMPTY), Ok(IPT_EMPTY)),
                vec![("nft -j list ruleset", Ok(NFT_EMPTY))],
            ]
            .concat(),
            Backend::Nftables,
            "nftables available",
        ),
        // nft broken: iptables.
        (
            [
                ipt(Ok(IPT_EMPTY), Ok(IPT_EMPTY)),
                vec![("nft -j list ruleset", Err("Operation not permitted"))],
            ]
            .concat(),
            Backend::Iptables,
            "iptables available",
        ),
        // iptables broken, nft rules: nftables.
        (
            [
                ipt(Err("x"), Err("y")),
                vec![("nft -j list ruleset", Ok(NFT_RULES))],
            ]
            .concat(),
            Backend::Nftables,
            "nftables in use",
        ),
        // Nothing works: iptables, as tailscaled falls back.
        (
            [
                ipt(Err("x"), Err("y")),
                vec![("nft -j list ruleset", Err("z"))],
            ]
            .concat(),
            Backend::Iptables,
            "neither works",
        ),
    ];
    for (answers, want, reason) in cases {
        let (b, why, _) = choose_with(auto, &all, &answers);
        assert_eq!(b, want, "{why}");
        assert!(why.contains(reason), "{why}");
    }
    // No nft binary at all.
    let (b, why, _) = choose_with(
        auto,
        &["iptables", "ip6tables"],
        &ipt(Ok(IPT_EMPTY), Ok(IPT_EMPTY)),
    );
    assert_eq!(b, Backend::Iptables, "{why}");
    assert!(why.contains("nft not found"), "{why}");
}
