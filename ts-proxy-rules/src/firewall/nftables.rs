//! The nftables driver: tsboot's own tables `ip tsboot` and `ip6 tsboot`, never tailscaled's
//! (`ts-*` chains) nor iptables-nft's (`nat`, `filter`, `mangle`).
//!
//! Each table has three base chains, at the priorities iptables' chains have, so the rules
//! behave as the iptables driver's do:
//! * `prerouting`: `type nat hook prerouting priority dstnat` — ingress and egress DNAT;
//! * `postrouting`: `type nat hook postrouting priority srcnat` — egress SNAT;
//! * `forward`: `type filter hook forward priority mangle` — the MSS clamp.
//!
//! Everything in the table is tsboot's, so reconcile is: list the table (`nft -j list table`),
//! keep one rule per wanted rule (recognised by its comment, which spells the whole rule),
//! delete every other rule by handle, add what is missing — all in one `nft` invocation, which
//! the kernel applies as one transaction. A table whose chains are not exactly these three is
//! rebuilt in that same transaction; a family with nothing wanted loses its table.

use super::{Backend, Runner};
use crate::rules::{Direction, Family, Rule, TUN};
use crate::ProxyError;
use serde_json::Value;
use ts_common::argv::Command;

/// The name of tsboot's table in each family.
pub const TABLE: &str = "tsboot";

pub fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// (name, spec) of the base chains, the spec as `nft -j` reports it: type, hook, priority.
const CHAINS: [(&str, &str, &str, i64); 3] = [
    ("prerouting", "nat", "prerouting", -100),
    ("postrouting", "nat", "postrouting", 100),
    ("forward", "filter", "forward", -150),
];

fn chain_decl(family: Family, name: &str) -> String {
    let prio = match name {
        "prerouting" => "dstnat",
        "postrouting" => "srcnat",
        _ => "mangle",
    };
    let (_, kind, hook, _) = CHAINS
        .iter()
        .find(|c| c.0 == name)
        .copied()
        .unwrap_or(CHAINS[0]);
    format!(
        "add chain {} {TABLE} {name} {{ type {kind} hook {hook} priority {prio}; policy accept; }}",
        nft_family(family)
    )
}

/// `nft -j list ruleset`, for the backend choice.
pub fn list_ruleset() -> Command {
    Command::new("nft").arg("-j").arg("list").arg("ruleset")
}

pub fn list_table(family: Family) -> Command {
    Command::new("nft")
        .arg("-j")
        .arg("list")
        .arg("table")
        .arg(nft_family(family))
        .arg(TABLE)
}

/// Rule objects in a `nft -j list …` document.
pub fn count_rules(json: &str) -> Result<usize, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    Ok(doc
        .get("nftables")
        .and_then(Value::as_array)
        .map_or(0, |items| {
            items.iter().filter(|i| i.get("rule").is_some()).count()
        }))
}

fn chain_of(rule: &Rule) -> &'static str {
    match rule {
        Rule::IngressDnat { .. } | Rule::EgressDnat { .. } => "prerouting",
        Rule::EgressSnat { .. } => "postrouting",
        Rule::ClampMss { .. } => "forward",
    }
}

/// The comment that identifies a rule: it names every value of the rule, so an equal comment
/// in the right chain means an equal rule.
pub fn comment(rule: &Rule) -> String {
    match rule {
        Rule::IngressDnat { local, dest, .. } => format!("tsboot ingress {local} to {dest}"),
        Rule::EgressDnat { target } => format!("tsboot egress non-{TUN} to {target}"),
        Rule::EgressSnat { target, local } => {
            format!("tsboot egress snat {local} for {target}")
        }
        Rule::ClampMss { dir, .. } => match dir {
            Direction::Out => format!("tsboot clamp mss out {TUN}"),
            Direction::In => format!("tsboot clamp mss in {TUN}"),
        },
    }
}

/// The nft statement that adds `rule` to tsboot's table.
pub fn add(rule: &Rule) -> String {
    let family = rule.family();
    let fam = nft_family(family);
    let daddr = match family {
        Family::V4 => "ip daddr",
        Family::V6 => "ip6 daddr",
    };
    let body = match rule {
        Rule::IngressDnat { local, dest, .. } => format!("{daddr} {local} dnat to {dest}"),
        Rule::EgressDnat { target } => format!("iifname != \"{TUN}\" dnat to {target}"),
        Rule::EgressSnat { target, local } => format!("{daddr} {target} snat to {local}"),
        Rule::ClampMss { dir, .. } => format!(
            "{} \"{TUN}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
            match dir {
                Direction::Out => "oifname",
                Direction::In => "iifname",
            }
        ),
    };
    format!(
        "add rule {fam} {TABLE} {} {body} comment \"{}\"",
        chain_of(rule),
        comment(rule)
    )
}

/// What `nft -j list table` showed of tsboot's table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub exists: bool,
    /// (name, type, hook, prio) of every chain.
    pub chains: Vec<(String, String, String, i64)>,
    /// (chain, handle, comment) of every rule.
    pub rules: Vec<(String, u64, String)>,
}

pub fn parse_listing(json: &str) -> Result<Listing, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft -j output has no \"nftables\" array")?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = Listing::default();
    for item in items {
        if item.get("table").is_some() {
            out.exists = true;
        } else if let Some(c) = item.get("chain") {
            out.chains.push((
                text(c, "name"),
                text(c, "type"),
                text(c, "hook"),
                c.get("prio").and_then(Value::as_i64).unwrap_or(i64::MIN),
            ));
        } else if let Some(r) = item.get("rule") {
            let handle = r
                .get("handle")
                .and_then(Value::as_u64)
                .ok_or("nft -j listed a rule without a handle")?;
            out.rules
                .push((text(r, "chain"), handle, text(r, "comment")));
        }
    }
    Ok(out)
}

/// The statements (one transaction) that turn `have` into exactly `want`; empty when nothing
/// differs.
pub fn plan(family: Family, have: &Listing, want: &[Rule]) -> Vec<String> {
    let fam = nft_family(family);
    if want.is_empty() {
        return if have.exists {
            vec![format!("delete table {fam} {TABLE}")]
        } else {
            Vec::new()
        };
    }
    let chains_ok = have.exists
        && have.chains.len() == CHAINS.len()
        && CHAINS.iter().all(|(name, kind, hook, prio)| {
            have.chains.iter().any(|c| {
                (c.0.as_str(), c.1.as_str(), c.2.as_str(), c.3) == (name, kind, hook, *prio)
            })
        });
    let mut out = Vec::new();
    let mut missing: Vec<&Rule> = Vec::new();
    if chains_ok {
        let mut kept = vec![false; want.len()];
        let mut deletes = Vec::new();
        for (chain, handle, text) in &have.rules {
            let hit = want
                .iter()
                .enumerate()
                .find(|(i, r)| !kept[*i] && chain_of(r) == chain && comment(r) == *text);
            match hit {
                Some((i, _)) => kept[i] = true,
                None => deletes.push(format!("delete rule {fam} {TABLE} {chain} handle {handle}")),
            }
        }
        missing.extend(want.iter().zip(&kept).filter(|(_, k)| !**k).map(|(r, _)| r));
        if missing.is_empty() && deletes.is_empty() {
            return Vec::new();
        }
        out.extend(missing.iter().map(|r| add(r)));
        out.extend(deletes);
        return out;
    }
    // Missing, or not the chains tsboot makes: build the table afresh in one transaction (the
    // `add table` first makes the `delete` valid when there was none).
    out.push(format!("add table {fam} {TABLE}"));
    out.push(format!("delete table {fam} {TABLE}"));
    out.push(format!("add table {fam} {TABLE}"));
    for (name, ..) in CHAINS {
        out.push(chain_decl(family, name));
    }
    out.extend(want.iter().map(add));
    out
}

/// `nft '<s1>; <s2>; …'`: nft reads its arguments as one script and commits it as one batch.
pub fn transaction(statements: &[String]) -> Command {
    Command::new("nft").arg(statements.join("; "))
}

pub struct NftDriver<R: Runner> {
    pub runner: R,
    ipv6_nat: Option<bool>,
}

/// nft's answer when the table does not exist.
const NO_SUCH_TABLE: &str = "No such file or directory";

impl<R: Runner> NftDriver<R> {
    pub fn new(runner: R) -> Self {
        NftDriver {
            runner,
            ipv6_nat: None,
        }
    }

    async fn listing(&mut self, family: Family) -> Result<Listing, ProxyError> {
        let cmd = list_table(family);
        match self.runner.run(&cmd).await {
            Ok(out) => parse_listing(&out).map_err(|why| ProxyError::Listing {
                command: cmd.display_redacted(),
                why,
            }),
            Err(ProxyError::Command { stderr, .. }) if stderr.contains(NO_SUCH_TABLE) => {
                Ok(Listing::default())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn reconcile(
        &mut self,
        family: Family,
        want: &[Rule],
    ) -> Result<Vec<String>, ProxyError> {
        let have = self.listing(family).await?;
        let statements = plan(family, &have, want);
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let cmd = transaction(&statements);
        self.runner.run(&cmd).await?;
        for s in &statements {
            tracing::info!("nft: {s}");
        }
        Ok(statements)
    }

    /// Whether an IPv6 NAT chain is accepted (`nft -c`: checked, never committed).
    pub async fn ipv6_nat(&mut self) -> bool {
        if let Some(ok) = self.ipv6_nat {
            return ok;
        }
        let probe = Command::new("nft").arg("-c").arg(format!(
            "add table ip6 {TABLE}-probe; add chain ip6 {TABLE}-probe p {{ type nat hook postrouting priority srcnat; }}"
        ));
        let ok = self.runner.run(&probe).await.is_ok();
        self.ipv6_nat = Some(ok);
        ok
    }

    pub fn inspect_hint(&self) -> String {
        format!("nft list table ip {TABLE}; nft list table ip6 {TABLE}")
    }

    pub fn backend(&self) -> Backend {
        Backend::Nftables
    }
}
