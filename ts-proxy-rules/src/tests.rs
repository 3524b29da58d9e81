//! Unit tests: address choice, listing parsing, the reconcile plan (tables of listings and a
//! property test against the fake iptables' rule model), and errors.

use super::*;
use proptest::prelude::*;
use tsboot_tests::fake_cli::{apply, parse_iptables, Tables};

fn cfg(dest: &str) -> Config {
    let ip: IpAddr = dest.parse().unwrap();
    Config {
        program: argv::dnat_program(&ip),
        dest: ip,
        dest_raw: dest.to_string(),
        socket: "/tmp/tailscaled.sock".into(),
        ready_fd: None,
        guard: false,
    }
}

fn prefixes(list: &[&str]) -> Vec<IpPrefix> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

fn shown(cmds: &[Command]) -> Vec<String> {
    cmds.iter().map(Command::display_redacted).collect()
}

/// The fake iptables' rule model as a runner, recording every command.
#[derive(Default)]
struct ModelIptables {
    tables: Tables,
    log: Vec<String>,
    fail_on: Option<&'static str>,
}

impl Iptables for ModelIptables {
    async fn run(&mut self, cmd: &Command) -> Result<String, ProxyError> {
        self.log.push(cmd.display_redacted());
        let (table, parsed) = parse_iptables(&cmd.argv()).expect("our argv parses");
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
        let (code, out, err) = apply(&cmd.program, &mut self.tables, &table, &parsed);
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
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn pick_local_takes_first_single_ip_of_the_family() {
    let both = prefixes(&["100.64.0.1/32", "fd7a::1/128", "100.64.0.2/32"]);
    assert_eq!(
        pick_local(&both, "1.2.3.4".parse().unwrap()).unwrap(),
        "100.64.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        pick_local(&both, "fd00::5".parse().unwrap()).unwrap(),
        "fd7a::1".parse::<IpAddr>().unwrap()
    );
    // IPv4-mapped IPv6 is IPv6 (as the reference's Is4() check has it).
    assert_eq!(
        pick_local(&both, "::ffff:1.2.3.4".parse().unwrap()).unwrap(),
        "fd7a::1".parse::<IpAddr>().unwrap()
    );
    // Not single IPs: skipped.
    let wide = prefixes(&["100.64.0.0/10", "100.64.0.9/32"]);
    assert_eq!(
        pick_local(&wide, "1.2.3.4".parse().unwrap()).unwrap(),
        "100.64.0.9".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn no_family_address_is_the_references_error() {
    let v4 = prefixes(&["100.64.0.1/32", "100.64.0.0/10"]);
    let err = pick_local(&v4, "fd00::5".parse().unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "no tailscale IP matching family of fd00::5 found in [100.64.0.1/32 100.64.0.0/10]"
        ),
        "{msg}"
    );
    assert_eq!(err.exit_code(), 1);
    let err = pick_local(&[], "1.2.3.4".parse().unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no tailscale IP matching family of 1.2.3.4 found in []"),
        "{err}"
    );
}

#[test]
fn listing_recognises_only_our_shape() {
    let dest: IpAddr = "1.2.3.4".parse().unwrap();
    let ours = |l: &str| our_rule(l, dest);
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        ours("-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4"),
        ip("100.64.0.1")
    );
    assert_eq!(
        ours("-A PREROUTING -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4"),
        ip("100.64.0.1")
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
    let v6: IpAddr = "fd00::5".parse().unwrap();
    assert_eq!(
        our_rule(
            "-A PREROUTING -d fd7a::1/128 -j DNAT --to-destination fd00::5",
            v6
        ),
        ip("fd7a::1")
    );
    assert_eq!(
        our_rule(
            "-A PREROUTING -d fd7a::/64 -j DNAT --to-destination fd00::5",
            v6
        ),
        None
    );
}

#[test]
fn plan_table() {
    let c = cfg("1.2.3.4");
    let local: IpAddr = "100.64.0.1".parse().unwrap();
    let rule = |a: &str| format!("-A PREROUTING -d {a}/32 -j DNAT --to-destination 1.2.3.4");
    let foreign = "-A PREROUTING -d 100.64.0.9/32 -p tcp -j DNAT --to-destination 1.2.3.4";
    let cases: Vec<(String, Vec<&str>)> =
        vec![
        // Nothing yet: the reference's insert.
        (
            "-P PREROUTING ACCEPT\n".into(),
            vec!["iptables -t nat -I PREROUTING 1 -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4"],
        ),
        // Already there (a restart in the same netns): nothing.
        (format!("-P PREROUTING ACCEPT\n{}\n", rule("100.64.0.1")), vec![]),
        // Address changed: insert the new one, then drop the old one.
        (
            format!("-P PREROUTING ACCEPT\n{}\n", rule("100.64.0.7")),
            vec![
                "iptables -t nat -I PREROUTING 1 -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -D PREROUTING -d 100.64.0.7 -j DNAT --to-destination 1.2.3.4",
            ],
        ),
        // The reference's leak (old rules piled up) and a duplicate: cleaned, one kept.
        (
            format!(
                "{}\n{}\n{}\n{}\n{foreign}\n",
                rule("100.64.0.7"),
                rule("100.64.0.1"),
                rule("100.64.0.8"),
                rule("100.64.0.1")
            ),
            vec![
                "iptables -t nat -D PREROUTING -d 100.64.0.7 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -D PREROUTING -d 100.64.0.8 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -D PREROUTING -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
            ],
        ),
    ];
    for (listing, want) in cases {
        assert_eq!(shown(&plan_changes(&listing, &c, local)), want, "{listing}");
    }
}

#[test]
fn reconcile_against_the_model_converges_and_is_idempotent() {
    block_on(async {
        let c = cfg("1.2.3.4");
        let mut ipt = ModelIptables::default();
        let a: IpAddr = "100.64.0.1".parse().unwrap();
        let b: IpAddr = "100.64.0.2".parse().unwrap();
        assert_eq!(reconcile(&c, &mut ipt, a).await.unwrap().len(), 1);
        assert!(
            reconcile(&c, &mut ipt, a).await.unwrap().is_empty(),
            "second run changes nothing"
        );
        assert_eq!(reconcile(&c, &mut ipt, b).await.unwrap().len(), 2);
        assert_eq!(
            ipt.tables["nat"]["PREROUTING"],
            ["-d 100.64.0.2/32 -j DNAT --to-destination 1.2.3.4"]
        );
        assert_eq!(
            ipt.log,
            [
                "iptables -t nat -S PREROUTING",
                "iptables -t nat -I PREROUTING 1 -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -S PREROUTING",
                "iptables -t nat -S PREROUTING",
                "iptables -t nat -I PREROUTING 1 -d 100.64.0.2 -j DNAT --to-destination 1.2.3.4",
                "iptables -t nat -D PREROUTING -d 100.64.0.1 -j DNAT --to-destination 1.2.3.4",
            ]
        );
    });
}

#[test]
fn iptables_failure_names_the_command_and_its_stderr() {
    block_on(async {
        let c = cfg("1.2.3.4");
        let mut ipt = ModelIptables {
            fail_on: Some("-I"),
            ..Default::default()
        };
        let err = reconcile(&c, &mut ipt, "100.64.0.1".parse().unwrap())
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
fn system_runner_reports_a_missing_program() {
    block_on(async {
        let cmd = argv::dnat_rule(
            RuleOp::Check,
            "/nonexistent/iptables",
            "100.64.0.1",
            "1.2.3.4",
        );
        let err = SystemIptables.run(&cmd).await.unwrap_err();
        assert!(matches!(err, ProxyError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("is /nonexistent/iptables installed and on PATH?"),
            "{err}"
        );
    });
}

#[test]
fn config_needs_a_destination() {
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
    assert_eq!(
        (c.program, c.dest_raw.as_str(), c.socket.to_str()),
        ("ip6tables", "fd00::5", Some("/s"))
    );
}

fn arb_addr() -> impl Strategy<Value = String> {
    (0u8..6).prop_map(|n| format!("100.64.0.{n}"))
}

proptest! {
    /// Whatever rules exist (ours for any address, duplicates, foreign ones), one reconcile
    /// leaves exactly one rule of our shape — for the current address — and every foreign
    /// rule as it was; a second reconcile changes nothing.
    #[test]
    fn one_rule_after_any_history(
        existing in proptest::collection::vec((arb_addr(), 0u8..4), 0..8),
        local in arb_addr(),
    ) {
        block_on(async {
            let c = cfg("1.2.3.4");
            let mut ipt = ModelIptables::default();
            let mut foreign = Vec::new();
            for (addr, kind) in &existing {
                let spec = match kind {
                    0 | 1 => format!("-d {addr}/32 -j DNAT --to-destination 1.2.3.4"),
                    2 => format!("-d {addr}/32 -p tcp -j DNAT --to-destination 1.2.3.4"),
                    _ => format!("-d {addr}/32 -j DNAT --to-destination 9.9.9.9"),
                };
                if *kind >= 2 {
                    foreign.push(tsboot_tests::fake_cli::canonical_rule(
                        &spec.split(' ').map(str::to_string).collect::<Vec<_>>(),
                    ));
                }
                ipt.tables.entry("nat".into()).or_default().entry("PREROUTING".into()).or_default().push(
                    tsboot_tests::fake_cli::canonical_rule(&spec.split(' ').map(str::to_string).collect::<Vec<_>>()),
                );
            }
            let local: IpAddr = local.parse().unwrap();
            reconcile(&c, &mut ipt, local).await.unwrap();
            let rules = ipt.tables["nat"]["PREROUTING"].clone();
            let ours: Vec<String> = rules
                .iter()
                .filter(|r| our_rule(&format!("-A PREROUTING {r}"), c.dest).is_some())
                .cloned()
                .collect();
            prop_assert_eq!(ours, vec![format!("-d {local}/32 -j DNAT --to-destination 1.2.3.4")]);
            let left: Vec<_> = rules.iter().filter(|r| foreign.contains(r)).cloned().collect();
            prop_assert_eq!(left, foreign);
            prop_assert!(reconcile(&c, &mut ipt, local).await.unwrap().is_empty());
            Ok(())
        })?;
    }

    #[test]
    fn any_listing_plans_without_panicking(listing in ".{0,400}") {
        let _ = plan_changes(&listing, &cfg("1.2.3.4"), "100.64.0.1".parse().unwrap());
        let _ = plan_changes(&listing, &cfg("fd00::5"), "fd7a::1".parse().unwrap());
    }
}
