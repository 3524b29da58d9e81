//! The iptables driver: `iptables` for IPv4, `ip6tables` for IPv6, rules in the standard
//! chains where the reference puts them.
//!
//! Ownership, so nobody else's rule is ever touched:
//! * the ingress DNAT is the reference's rule byte for byte (`-t nat -I PREROUTING 1 -d <tailnet
//!   IP> -j DNAT --to-destination <TS_DEST_IP>`, no tag, so a container started from today's
//!   image and one started from tsboot recognise each other's rule). Ours: nat PREROUTING rules
//!   of exactly that shape to the same destination;
//! * the egress rules carry `-m comment --comment tsboot-egress`; every rule with that tag in
//!   nat PREROUTING, nat POSTROUTING or mangle FORWARD is ours.
//!
//! Reconcile lists the three chains (`-S`), inserts what is missing, then deletes owned rules
//! that are not wanted (another address, another target, duplicates) by their own spec.

use super::Runner;
use crate::rules::{Direction, Family, Rule, TUN};
use crate::ProxyError;
use std::net::IpAddr;
use ts_common::argv::{self, Command, RuleOp};
use ts_localapi::notify::single_ip;

/// The comment that marks tsboot's egress rules.
pub const EGRESS_TAG: &str = "tsboot-egress";

pub fn program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// The (table, chain) pairs a reconcile reads.
pub const CHAINS: [(&str, &str); 3] = [
    ("nat", "PREROUTING"),
    ("nat", "POSTROUTING"),
    ("mangle", "FORWARD"),
];

/// `iptables -t <table>` (`ip6tables` for IPv6).
fn ipt(family: Family, table: &str) -> Command {
    Command::new(program(family)).arg("-t").arg(table)
}

pub fn list(family: Family, table: &str, chain: &str) -> Command {
    ipt(family, table).arg("-S").arg(chain)
}

/// Where a rule lives: (table, chain).
fn home(rule: &Rule) -> (&'static str, &'static str) {
    match rule {
        Rule::IngressDnat { .. } | Rule::EgressDnat { .. } => ("nat", "PREROUTING"),
        Rule::EgressSnat { .. } => ("nat", "POSTROUTING"),
        Rule::ClampMss { .. } => ("mangle", "FORWARD"),
    }
}

/// The command that installs `rule` (DNAT and SNAT inserted first, as the reference and
/// tailscale's linuxfw do; the clamp appended, as linuxfw does).
pub fn add(rule: &Rule) -> Command {
    let family = rule.family();
    let (table, chain) = home(rule);
    match rule {
        Rule::IngressDnat {
            local, dest_raw, ..
        } => argv::dnat_rule(
            RuleOp::Insert,
            program(family),
            &local.to_string(),
            dest_raw,
        ),
        Rule::ClampMss { .. } => ipt(family, table).arg("-A").arg(chain),
        _ => ipt(family, table).arg("-I").arg(chain).arg("1"),
    }
    .args(&spec(rule, false))
}

/// An egress rule's words after its chain: match, tag, target; `printed` as `-S` prints them,
/// with the implicit `-m tcp` of `-p tcp` that the command adding the rule leaves out.
fn spec(rule: &Rule, printed: bool) -> Vec<String> {
    let mut words = Vec::new();
    let mut push = |w: &[&str]| words.extend(w.iter().map(|s| s.to_string()));
    let tag = ["-m", "comment", "--comment", EGRESS_TAG];
    match rule {
        // Compared by parsing instead (see `ingress_rule`): TS_DEST_IP is kept verbatim.
        Rule::IngressDnat { .. } => {}
        Rule::EgressDnat { target } => {
            push(&["!", "-i", TUN]);
            push(&tag);
            push(&["-j", "DNAT", "--to-destination", &target.to_string()]);
        }
        Rule::EgressSnat { target, local } => {
            push(&["-d", &single_ip(*target).to_string()]);
            push(&tag);
            push(&["-j", "SNAT", "--to-source", &local.to_string()]);
        }
        Rule::ClampMss { dir, .. } => {
            let flag = match dir {
                Direction::Out => "-o",
                Direction::In => "-i",
            };
            push(&[flag, TUN, "-p", "tcp"]);
            if printed {
                push(&["-m", "tcp"]);
            }
            push(&["--tcp-flags", "SYN,RST", "SYN"]);
            push(&tag);
            push(&["-j", "TCPMSS", "--clamp-mss-to-pmtu"]);
        }
    }
    words
}

/// The address of an ingress rule of the reference's shape to `dest`:
/// `-A PREROUTING -d <addr>[/full] -j DNAT --to-destination <dest>`.
pub fn ingress_rule(words: &[&str], dest: IpAddr) -> Option<IpAddr> {
    let ["-A", "PREROUTING", "-d", d, "-j", "DNAT", "--to-destination", to] = words else {
        return None;
    };
    if to.parse::<IpAddr>().ok()? != dest {
        return None;
    }
    // iptables-save prints `-d` as a prefix; only a single address is ours.
    let (addr, len) = match d.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (d.parse::<IpAddr>().ok()?, None),
    };
    match len {
        Some(l) if l != single_ip(addr).len => None,
        _ => Some(addr),
    }
}

fn is_tagged(words: &[&str]) -> bool {
    words
        .windows(2)
        .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == EGRESS_TAG)
}

/// The commands that make `listing` (the `-S` output of `table`/`chain`) hold exactly the
/// `want` rules that live there: inserts first, then deletions of owned, unwanted rules.
pub fn plan_chain(
    family: Family,
    table: &str,
    chain: &str,
    listing: &str,
    want: &[Rule],
) -> (Vec<Command>, Vec<Command>) {
    let want: Vec<&Rule> = want.iter().filter(|r| home(r) == (table, chain)).collect();
    let mut found = vec![false; want.len()];
    let mut deletes = Vec::new();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 3 || words[0] != "-A" || words[1] != chain {
            continue;
        }
        // An ingress-shaped rule is ours only while its destination is configured: the
        // delete is then the reference's command for that address.
        let mut ingress_delete = None;
        let mut matched = None;
        for (i, rule) in want.iter().enumerate() {
            let hit = match rule {
                Rule::IngressDnat {
                    local,
                    dest,
                    dest_raw,
                } => match ingress_rule(&words, *dest) {
                    Some(addr) => {
                        ingress_delete = Some(argv::dnat_rule(
                            RuleOp::Delete,
                            program(family),
                            &addr.to_string(),
                            dest_raw,
                        ));
                        addr == *local
                    }
                    None => false,
                },
                _ => spec(rule, true) == words[2..],
            };
            if hit && !found[i] {
                matched = Some(i);
                break;
            }
        }
        if let Some(i) = matched {
            found[i] = true;
        } else if let Some(del) = ingress_delete {
            deletes.push(del);
        } else if is_tagged(&words) {
            let mut del = ipt(family, table).arg("-D").arg(chain);
            for w in &words[2..] {
                del = del.arg(w.trim_matches('"'));
            }
            deletes.push(del);
        }
    }
    let adds = want
        .iter()
        .zip(&found)
        .filter(|(_, f)| !**f)
        .map(|(r, _)| add(r))
        .collect();
    (adds, deletes)
}

/// Lists the three chains, then inserts what is missing and deletes the owned rules that are
/// not wanted; returns the commands run.
pub async fn reconcile<R: Runner>(
    runner: &mut R,
    family: Family,
    want: &[Rule],
) -> Result<Vec<String>, ProxyError> {
    let mut adds = Vec::new();
    let mut deletes = Vec::new();
    for (table, chain) in CHAINS {
        let listing = runner.run(&list(family, table, chain)).await?;
        let (a, d) = plan_chain(family, table, chain, &listing, want);
        adds.extend(a);
        deletes.extend(d);
    }
    let mut done = Vec::new();
    for cmd in adds.iter().chain(&deletes) {
        runner.run(cmd).await?;
        tracing::info!("ran {}", cmd.display_redacted());
        done.push(cmd.display_redacted());
    }
    Ok(done)
}
