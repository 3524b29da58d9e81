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

use super::Runner;
use crate::rules::{Direction, Family, Rule, TUN};
use crate::ProxyError;
use serde::de::IgnoredAny;
use serde::Deserialize;
use ts_common::argv::Command;

/// The name of tsboot's table in each family.
pub const TABLE: &str = "tsboot";

pub fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The base chains, each named after its hook: (name, type, priority as `nft -j` reports it,
/// priority as declared).
const CHAINS: [(&str, &str, i64, &str); 3] = [
    ("prerouting", "nat", -100, "dstnat"),
    ("postrouting", "nat", 100, "srcnat"),
    ("forward", "filter", -150, "mangle"),
];

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

/// A `nft -j list …` document, as far as tsboot reads it.
#[derive(Deserialize)]
struct Doc {
    nftables: Option<Vec<Item>>,
}

/// One object of the `nftables` array (`metainfo`, `table`, `chain`, `rule`, …).
#[derive(Deserialize)]
struct Item {
    table: Option<IgnoredAny>,
    chain: Option<NftChain>,
    rule: Option<NftRule>,
}

/// A regular chain has no type, hook or priority; it matches none of [`CHAINS`].
#[derive(Default, Deserialize)]
#[serde(default)]
struct NftChain {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    hook: String,
    prio: i64,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct NftRule {
    chain: String,
    handle: Option<u64>,
    comment: String,
}

fn items(json: &str) -> Result<Option<Vec<Item>>, String> {
    serde_json::from_str::<Doc>(json)
        .map(|doc| doc.nftables)
        .map_err(|e| format!("nft -j output: {e}"))
}

/// Rule objects in a `nft -j list …` document.
pub fn count_rules(json: &str) -> Result<usize, String> {
    Ok(items(json)?.map_or(0, |items| items.iter().filter(|i| i.rule.is_some()).count()))
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
        Rule::ClampMss { dir, .. } => format!("tsboot clamp mss {} {TUN}", dir.name()),
    }
}

/// The nft statement that adds `rule` to tsboot's table.
pub fn add(rule: &Rule) -> String {
    let fam = nft_family(rule.family());
    let body = match rule {
        Rule::IngressDnat { local, dest, .. } => format!("{fam} daddr {local} dnat to {dest}"),
        Rule::EgressDnat { target } => format!("iifname != \"{TUN}\" dnat to {target}"),
        Rule::EgressSnat { target, local } => format!("{fam} daddr {target} snat to {local}"),
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
    let items = items(json)?.ok_or("nft -j output has no \"nftables\" array")?;
    let mut out = Listing::default();
    for item in items {
        out.exists |= item.table.is_some();
        if let Some(c) = item.chain {
            out.chains.push((c.name, c.kind, c.hook, c.prio));
        }
        if let Some(r) = item.rule {
            let handle = r.handle.ok_or("nft -j listed a rule without a handle")?;
            out.rules.push((r.chain, handle, r.comment));
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
        && CHAINS.iter().all(|(name, kind, prio, _)| {
            have.chains.iter().any(|c| {
                (c.0.as_str(), c.1.as_str(), c.2.as_str(), c.3) == (name, kind, name, *prio)
            })
        });
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
        let mut out: Vec<String> = want
            .iter()
            .zip(&kept)
            .filter(|(_, k)| !**k)
            .map(|(r, _)| add(r))
            .collect();
        out.extend(deletes);
        return out;
    }
    // Missing, or not the chains tsboot makes: build the table afresh in one transaction (the
    // `add table` first makes the `delete` valid when there was none).
    let mut out = vec![
        format!("add table {fam} {TABLE}"),
        format!("delete table {fam} {TABLE}"),
        format!("add table {fam} {TABLE}"),
    ];
    out.extend(CHAINS.iter().map(|(name, kind, _, prio)| {
        format!("add chain {fam} {TABLE} {name} {{ type {kind} hook {name} priority {prio}; policy accept; }}")
    }));
    out.extend(want.iter().map(add));
    out
}

/// `nft '<s1>; <s2>; …'`: nft reads its arguments as one script and commits it as one batch.
pub fn transaction(statements: &[String]) -> Command {
    Command::new("nft").arg(statements.join("; "))
}

/// nft's answer when the table does not exist.
const NO_SUCH_TABLE: &str = "No such file or directory";

async fn listing<R: Runner>(runner: &mut R, family: Family) -> Result<Listing, ProxyError> {
    let cmd = list_table(family);
    match runner.run(&cmd).await {
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

/// Lists tsboot's table and applies the [`plan`] as one transaction; returns its statements.
pub async fn reconcile<R: Runner>(
    runner: &mut R,
    family: Family,
    want: &[Rule],
) -> Result<Vec<String>, ProxyError> {
    let statements = plan(family, &listing(runner, family).await?, want);
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    runner.run(&transaction(&statements)).await?;
    for s in &statements {
        tracing::info!("nft: {s}");
    }
    Ok(statements)
}

/// Whether an IPv6 NAT chain is accepted (`nft -c`: checked, never committed).
pub fn ipv6_nat_probe() -> Command {
    Command::new("nft").arg("-c").arg(format!(
        "add table ip6 {TABLE}-probe; add chain ip6 {TABLE}-probe p {{ type nat hook postrouting priority srcnat; }}"
    ))
}
