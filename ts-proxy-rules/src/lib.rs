//! ts-proxy-rules: keeps tsboot's firewall rules in line with the node's tailnet addresses
//! (the README's Configuration table1, README D9 and D22).
//!
//! * Ingress (`TS_DEST_IP`): exactly one DNAT rule from this node's tailnet IP (of the
//!   destination's family) to the destination — with iptables the reference's rule byte for
//!   byte, `iptables -t nat -I PREROUTING 1 -d <tailnet IP> -j DNAT --to-destination <TS_DEST_IP>`.
//! * Egress (`TS_TAILNET_TARGET_IP` / `TS_TAILNET_TARGET_FQDN`): traffic arriving on any
//!   interface but `tailscale0` is DNATed to the target and SNATed to the node's own tailnet
//!   address of the target's family, with the TCP MSS clamped to the path MTU on `tailscale0`
//!   in both directions. A name is resolved from the netmap's peers (trailing dot optional)
//!   and followed when the peer's addresses change.
//!
//! Where the reference inserted more rules on every change and never removed any, every
//! change is a reconcile through the [`firewall`] seam: the rules tsboot owns become exactly
//! the wanted set, once each — new ones first, then stale ones (another address, another
//! target, duplicates) go. Rules tsboot does not own are never touched, and a restarted
//! container in a surviving network namespace finds its rules and changes nothing. The rules
//! go into the backend tailscaled uses, iptables or nftables ([`firewall::choose`]).
//!
//! Addresses come from every bus era (D10): seed `NetMap.Addresses`, `NetMap.SelfNode.Addresses`
//! (v1.50+), `SelfChange` (v1.100+), through [`Notify::self_identity`]; peers through
//! [`ts_localapi::peers`].

pub mod firewall;
pub mod rules;

use firewall::{Backend, Choice, Driver, Runner, SystemProbe};
use rules::{Family, Rule};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use ts_common::settings::{FirewallMode, IpPrefix, Settings, TailnetTarget};
use ts_localapi::localapi::{LocalApi, LocalApiError, MASK_LEAN};
use ts_localapi::node::{NodeState, NodeWatch, Options, Resolution, WatchEnd};
use ts_localapi::notify::single_ip;
use ts_localapi::peers::MASK_PEER_CHANGES;

/// `TS_DEST_IP`, parsed and verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub ip: IpAddr,
    /// What goes after `--to-destination`, as in the reference.
    pub raw: String,
}

/// What the watcher needs, taken from [`Settings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Ingress: `TS_DEST_IP`.
    pub dest: Option<Dest>,
    /// Egress: `TS_TAILNET_TARGET_IP` / `TS_TAILNET_TARGET_FQDN`.
    pub target: Option<TailnetTarget>,
    /// `TS_DEBUG_FIREWALL_MODE`.
    pub firewall_mode: Option<FirewallMode>,
    pub socket: PathBuf,
    pub ready_fd: Option<i32>,
    /// Also guard the Running state (ts-init asks one long-lived phase to): exit 1 when
    /// tailscaled leaves it.
    pub guard: bool,
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Config, ProxyError> {
        let dest = s.dest_ip.map(|ip| Dest {
            ip,
            raw: s.dest_ip_raw.clone(),
        });
        if dest.is_none() && s.tailnet_target.is_none() {
            return Err(ProxyError::NothingToDo);
        }
        Ok(Config {
            dest,
            target: s.tailnet_target.clone(),
            firewall_mode: s.firewall_mode,
            socket: s.socket.clone(),
            ready_fd: s.ready_fd,
            guard: false,
        })
    }

    /// The bus mask: peers too when a name must be resolved (the one watch of a boot whose
    /// cost grows with the tailnet: README D26).
    pub fn mask(&self) -> u64 {
        match self.target {
            Some(TailnetTarget::Fqdn(_)) => MASK_PEER_CHANGES,
            _ => MASK_LEAN,
        }
    }

    /// How the reader task watches.
    pub fn watch_options(&self) -> Options {
        Options {
            mask: self.mask(),
            guard: self.guard,
            resolve: match &self.target {
                Some(TailnetTarget::Fqdn(name)) => Some(name.clone()),
                _ => None,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("neither TS_DEST_IP nor TS_TAILNET_TARGET_IP / TS_TAILNET_TARGET_FQDN is set, so there is no rule to keep: set TS_DEST_IP (or --dest-ip) for ingress, or a tailnet target for egress, with TS_USERSPACE=false")]
    NothingToDo,
    #[error("no tailscale IP matching family of {dest} found in [{}]; the node has no {family} tailnet address, so {dest} cannot be proxied (check the tailnet's IP settings or use a destination of the other family)", join(.addresses, " "))]
    NoFamilyAddress {
        dest: IpAddr,
        family: &'static str,
        addresses: Vec<IpPrefix>,
    },
    #[error("no forwarding rules for egress to {name} at [{}]: this node's tailnet addresses are [{}] and IPv6 NAT is {}; the target needs an address of a family this node has", join(.targets, " "), join(.addresses, " "), if *.ipv6_nat { "available" } else { "unavailable" })]
    NoEgressFamily {
        name: String,
        targets: Vec<IpAddr>,
        addresses: Vec<IpPrefix>,
        ipv6_nat: bool,
    },
    #[error("executing {command} failed: {status}{}; the container needs CAP_NET_ADMIN and a working {program}", stderr_suffix(.stderr))]
    Command {
        command: String,
        program: String,
        status: String,
        stderr: String,
    },
    #[error("executing {command} failed: {source} (is {program} installed and on PATH?)")]
    Spawn {
        command: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("executing {command} did not finish within {after:?}; it was killed (is another process holding the xtables lock, or is the kernel's netfilter stuck?)")]
    Timeout { command: String, after: Duration },
    #[error("reading the output of {command}: {why}")]
    Listing { command: String, why: String },
    #[error(transparent)]
    LeftRunning(#[from] ts_localapi::notify::LeftRunning),
    #[error("watching tailscaled: {0}")]
    Bus(#[source] LocalApiError),
    #[error("reporting readiness on TS_READY_FD={fd}: {source} (was the fd really passed to this process?)")]
    Ready {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

impl From<WatchEnd> for ProxyError {
    fn from(end: WatchEnd) -> Self {
        match end {
            WatchEnd::LeftRunning(left) => ProxyError::LeftRunning(left),
            WatchEnd::Bus(e) => ProxyError::Bus(e),
        }
    }
}

impl ts_common::cli::Failure for ProxyError {
    /// 2 for configuration problems (nothing was changed), 1 for everything else.
    fn exit_code(&self) -> i32 {
        match self {
            ProxyError::NothingToDo => ts_common::exit::USAGE,
            _ => ts_common::exit::FAILURE,
        }
    }
}

fn join<T: ToString>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The local end of a rule: the first single-IP address of `dest`'s family (reference
/// `installIPTablesRule`, `installEgressForwardingRule`).
pub fn pick_local(addresses: &[IpPrefix], dest: IpAddr) -> Result<IpAddr, ProxyError> {
    find_local(addresses, Family::of(&dest)).ok_or_else(|| ProxyError::NoFamilyAddress {
        dest,
        family: Family::of(&dest).name(),
        addresses: addresses.to_vec(),
    })
}

fn find_local(addresses: &[IpPrefix], family: Family) -> Option<IpAddr> {
    addresses
        .iter()
        .find(|p| Family::of(&p.addr) == family && p.len == single_ip(p.addr).len)
        .map(|p| p.addr)
}

/// Where egress goes right now: the configured IP, or what the name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Egress {
    None,
    /// A name not (yet) found among the peers, and no earlier answer to fall back on.
    Unresolved,
    To(Vec<IpAddr>),
}

/// The wanted rules for the node's `addresses`. `ipv6_nat` says whether IPv6 egress to a
/// resolved name can be installed (an explicit IPv6 target is always tried).
pub fn wanted(
    cfg: &Config,
    addresses: &[IpPrefix],
    egress: &Egress,
    ipv6_nat: bool,
) -> Result<Vec<Rule>, ProxyError> {
    let mut out = Vec::new();
    if let Some(d) = &cfg.dest {
        out.push(Rule::IngressDnat {
            local: pick_local(addresses, d.ip)?,
            dest: d.ip,
            dest_raw: d.raw.clone(),
        });
    }
    match (&cfg.target, egress) {
        (Some(TailnetTarget::Ip(ip)), _) => {
            out.extend(rules::egress(*ip, pick_local(addresses, *ip)?));
        }
        (Some(TailnetTarget::Fqdn(name)), Egress::To(targets)) => {
            let mut families = BTreeSet::new();
            for target in targets {
                let family = Family::of(target);
                // One target per family: a second DNAT of the same family would never match.
                if (family == Family::V6 && !ipv6_nat) || families.contains(&family) {
                    continue;
                }
                if let Some(local) = find_local(addresses, family) {
                    families.insert(family);
                    out.extend(rules::egress(*target, local));
                }
            }
            if families.is_empty() {
                return Err(ProxyError::NoEgressFamily {
                    name: name.clone(),
                    targets: targets.clone(),
                    addresses: addresses.to_vec(),
                    ipv6_nat,
                });
            }
        }
        _ => {}
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Brings the rules of every family in `families` in line with `want`; returns the changes.
pub async fn apply<R: Runner>(
    fw: &mut Driver<R>,
    families: &BTreeSet<Family>,
    want: &[Rule],
) -> Result<Vec<String>, ProxyError> {
    let mut changes = Vec::new();
    for family in families {
        changes.extend(
            fw.reconcile(*family, &rules::of_family(want, *family))
                .await?,
        );
    }
    Ok(changes)
}

/// What the watcher has seen and done so far.
#[derive(Default)]
struct Watch {
    addresses: Option<Vec<IpPrefix>>,
    /// The last lookup of the name the reader task reported.
    target: Option<Resolution>,
    /// The last answer for a name (kept while the peer is missing from a netmap).
    resolved: Option<Vec<IpAddr>>,
    /// The last "name not found" note, so it is logged once per change.
    unresolved_note: Option<String>,
    applied: Option<Vec<Rule>>,
    families: BTreeSet<Family>,
}

impl Watch {
    /// Takes in the node's latest state; `true` when something the rules depend on may have
    /// changed.
    fn update(&mut self, cfg: &Config, node: &NodeState) -> bool {
        let mut changed = false;
        if let Some(me) = &node.me {
            changed |= self.addresses.as_ref() != Some(&me.addresses);
            self.addresses = Some(me.addresses.clone());
        }
        if let (Some(TailnetTarget::Fqdn(name)), Some(found)) = (&cfg.target, &node.target) {
            if self.target.as_ref() != Some(found) {
                self.target = Some(found.clone());
                changed |= self.resolve(name, found);
            }
        }
        changed
    }

    fn resolve(&mut self, name: &str, found: &Resolution) -> bool {
        match &found.addresses {
            Some(ips) if !ips.is_empty() => {
                let ips = ips.clone();
                self.unresolved_note = None;
                if self.resolved.as_ref() != Some(&ips) {
                    tracing::info!("TS_TAILNET_TARGET_FQDN={name} is [{}]", join(&ips, " "));
                    self.resolved = Some(ips);
                    return true;
                }
                false
            }
            _ => {
                let note = format!(
                    "TS_TAILNET_TARGET_FQDN={name} matches no peer with an address in the netmap ({} peers); it either does not exist or is not reachable because of ACLs; {}",
                    found.peers,
                    match &self.resolved {
                        Some(ips) => format!("keeping the rules for [{}]", join(ips, " ")),
                        None => "no egress rules until it appears".into(),
                    }
                );
                if self.unresolved_note.as_ref() != Some(&note) {
                    tracing::warn!("{note}");
                    self.unresolved_note = Some(note);
                }
                false
            }
        }
    }

    fn egress(&self, cfg: &Config) -> Egress {
        match &cfg.target {
            None => Egress::None,
            Some(TailnetTarget::Ip(ip)) => Egress::To(vec![*ip]),
            Some(TailnetTarget::Fqdn(_)) => match &self.resolved {
                Some(ips) => Egress::To(ips.clone()),
                None => Egress::Unresolved,
            },
        }
    }
}

/// Follows the IPN bus and reconciles on every change of the node's addresses or the target,
/// forever. Returns only with an error: tailscaled gone, no address of a needed family, a
/// firewall command failing. The bus is read by a task of its own ([`NodeWatch`]): changes
/// that arrive while a reconcile runs are coalesced into the next one, and the guard ends the
/// watcher even while a firewall command hangs (the command is killed).
pub async fn watch<R: Runner>(cfg: &Config, fw: &mut Driver<R>) -> Result<Infallible, ProxyError> {
    let mut node = NodeWatch::spawn(LocalApi::new(&cfg.socket), cfg.watch_options());
    let mut ready_fd = cfg.ready_fd;
    let mut st = Watch::default();
    tracing::info!(
        "watching tailscaled at {} to keep {} in {} (inspect: {})",
        cfg.socket.display(),
        describe(cfg),
        fw.backend.name(),
        fw.backend.inspect_hint()
    );
    loop {
        let now = node.changed().await?;
        if !st.update(cfg, &now) && st.applied.is_some() {
            continue;
        }
        let Some(addresses) = st.addresses.clone() else {
            continue;
        };
        let egress = st.egress(cfg);
        let ipv6_nat = match &egress {
            Egress::To(ips) if ips.iter().any(IpAddr::is_ipv6) => {
                node.guarded(fw.ipv6_nat()).await?
            }
            _ => false,
        };
        let want = wanted(cfg, &addresses, &egress, ipv6_nat)?;
        if st.applied.as_ref() == Some(&want) {
            continue;
        }
        let mut families: BTreeSet<Family> = want.iter().map(Rule::family).collect();
        families.extend(st.families.iter().copied());
        let changes = node
            .guarded(ts_common::status::track(apply(fw, &families, &want)))
            .await??;
        let summary = if want.is_empty() {
            "no rules".to_string()
        } else {
            join(&want, ", ")
        };
        let state = if changes.is_empty() {
            tracing::info!("rules already in place, nothing to change: {summary}");
            "already in place, nothing to change"
        } else {
            tracing::info!("rules in place ({} changes): {summary}", changes.len());
            "in place"
        };
        for rule in &want {
            if let Rule::IngressDnat {
                local, dest_raw, ..
            } = rule
            {
                // The line operators (and tests) look for since the first version.
                tracing::info!("DNAT rule {local} -> {dest_raw} {state}");
            }
        }
        st.families = want.iter().map(Rule::family).collect();
        st.applied = Some(want);
        if egress == Egress::Unresolved {
            // Not ready while egress, the thing asked for, cannot work yet.
            continue;
        }
        if let Some(fd) = ready_fd.take() {
            ts_common::process::notify_ready(Some(fd))
                .map_err(|source| ProxyError::Ready { fd, source })?;
            tracing::info!("first reconcile done, readiness reported on fd {fd}");
        }
    }
}

fn describe(cfg: &Config) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &cfg.dest {
        parts.push(format!("the DNAT rule to {}", d.raw));
    }
    if let Some(t) = &cfg.target {
        parts.push(format!("egress to {}={t}", t.var()));
    }
    parts.join(" and ")
}

/// Picks the backend (logged once) and builds its driver.
pub async fn driver<R: Runner>(cfg: &Config, mut runner: R) -> (Choice, Driver<R>) {
    let choice = firewall::choose(cfg.firewall_mode, &mut SystemProbe(&mut runner)).await;
    tracing::info!(
        "firewall backend: {} ({})",
        choice.backend.name(),
        choice.why
    );
    let backend = choice.backend;
    (choice, Driver::new(backend, runner))
}

/// [`watch`] until SIGTERM or SIGINT (then `Ok`). The handlers are installed before the first
/// connection so a shutdown during startup is a clean exit too.
pub async fn run_until_signal<R: Runner>(cfg: &Config, runner: R) -> Result<(), ProxyError> {
    let mut stop = ts_localapi::signals::StopSignals::install();
    tokio::select! {
        r = async {
            let (_, mut fw) = driver(cfg, runner).await;
            watch(cfg, &mut fw).await
        } => r.map(|never| match never {}),
        sig = stop.recv() => {
            tracing::info!("received {sig}, exiting");
            ts_common::status::stopped();
            Ok(())
        }
    }
}

/// Example rules for `--explain`, with placeholder-like documentation addresses.
fn example_commands(backend: Backend, rule: &Rule) -> String {
    match backend {
        Backend::Iptables => firewall::iptables::add(rule).display_redacted(),
        Backend::Nftables => format!("nft '{}'", firewall::nftables::add(rule)),
    }
}

/// The `--explain` plan: what would be run and kept, without changing anything. The backend
/// choice may read the rule sets (`auto`); when tailscaled answers, the rules for its current
/// addresses are shown too (a read of the bus, nothing else).
pub async fn explain<R: Runner>(cfg: &Config, mut runner: R) -> Vec<String> {
    let choice = firewall::choose(cfg.firewall_mode, &mut SystemProbe(&mut runner)).await;
    let backend = choice.backend;
    let mut out = vec![
        "ts-proxy-rules plan (nothing is changed by --explain):".to_string(),
        format!("  firewall backend: {} ({})", backend.name(), choice.why),
    ];
    for program in match backend {
        Backend::Iptables => &["iptables", "ip6tables"][..],
        Backend::Nftables => &["nft"][..],
    } {
        let on_path = ts_common::process::look_path(program).map_or_else(
            || "not found on PATH".to_string(),
            |p| p.display().to_string(),
        );
        out.push(format!("  {program}: {on_path}"));
    }
    if let Some(d) = &cfg.dest {
        out.push(format!(
            "  ingress: traffic to this node's {} tailnet address goes to TS_DEST_IP={}",
            Family::of(&d.ip).name(),
            d.raw
        ));
    }
    match &cfg.target {
        Some(TailnetTarget::Ip(ip)) => out.push(format!(
            "  egress: traffic arriving on any interface but {} goes to TS_TAILNET_TARGET_IP={ip}, SNATed to this node's {} tailnet address, TCP MSS clamped on {}",
            rules::TUN,
            Family::of(ip).name(),
            rules::TUN
        )),
        Some(TailnetTarget::Fqdn(name)) => out.push(format!(
            "  egress: traffic arriving on any interface but {} goes to the addresses of the peer TS_TAILNET_TARGET_FQDN={name} (from the netmap's peers, followed as they change), SNATed to this node's address of each family, TCP MSS clamped on {}",
            rules::TUN,
            rules::TUN
        )),
        None => {}
    }
    out.push(format!(
        "  watch: GET /localapi/v0/watch-ipn-bus?mask={} on {}, watching again whenever the stream ends, until tailscaled is gone",
        cfg.mask(),
        cfg.socket.display()
    ));
    out.push(match backend {
        Backend::Iptables => format!(
            "  on every change, read the rules with: {}, then insert what is missing and delete stale ones (other address, other target, duplicates); the ingress rule is the reference's ({}), egress rules carry --comment {}; rules of any other shape are left alone",
            firewall::iptables::CHAINS
                .iter()
                .map(|(t, c)| firewall::iptables::list(Family::V4, t, c).display_redacted())
                .collect::<Vec<_>>()
                .join(", "),
            ts_common::argv::dnat_rule(ts_common::argv::RuleOp::Insert, "iptables", "<tailnet IP>", cfg.dest.as_ref().map_or("<TS_DEST_IP>", |d| d.raw.as_str())).display_redacted(),
            firewall::iptables::EGRESS_TAG
        ),
        Backend::Nftables => format!(
            "  on every change, read tsboot's own tables with: {} (and ip6), then in one nft transaction add what is missing and delete every other rule in them; tailscaled's and iptables-nft's tables are never touched",
            firewall::nftables::list_table(Family::V4).display_redacted()
        ),
    });
    out.push(format!("  inspect by hand: {}", backend.inspect_hint()));
    out.push(match cfg.ready_fd {
        Some(fd) => format!(
            "  readiness: write \"\\n\" to fd {fd} after the first reconcile{}, then close it",
            if matches!(cfg.target, Some(TailnetTarget::Fqdn(_))) {
                " with the name resolved"
            } else {
                ""
            }
        ),
        None => "  readiness: none (TS_READY_FD / --ready-fd unset)".to_string(),
    });
    out.push("  exit: 0 on SIGTERM/SIGINT; 1 when tailscaled is gone, the node has no address of a needed family, or a firewall command fails or hangs; 2 on invalid configuration".to_string());
    let opts = cfg.watch_options();
    let current = tokio::time::timeout(
        Duration::from_secs(2),
        ts_localapi::node::first_state(LocalApi::new(&cfg.socket), &opts),
    )
    .await;
    match current {
        Ok(Ok(now)) => match &now.me {
            Some(me) => {
                let mut st = Watch::default();
                st.update(cfg, &now);
                let egress = st.egress(cfg);
                match wanted(cfg, &me.addresses, &egress, true) {
                    Ok(want) => {
                        out.push(format!(
                            "  now: tailnet addresses [{}]{}, so the rules would be:",
                            join(&me.addresses, " "),
                            match (&cfg.target, &egress) {
                                (Some(TailnetTarget::Fqdn(n)), Egress::To(ips)) =>
                                    format!(", {n} is [{}]", join(ips, " ")),
                                (Some(TailnetTarget::Fqdn(n)), _) =>
                                    format!(", {n} matches no peer yet"),
                                _ => String::new(),
                            }
                        ));
                        for rule in &want {
                            out.push(format!("    {rule}: {}", example_commands(backend, rule)));
                        }
                    }
                    Err(e) => out.push(format!("  now: {e}")),
                }
            }
            None => out.push("  now: tailscaled has no netmap yet (not logged in?)".to_string()),
        },
        Ok(Err(e)) => out.push(format!("  now: {e}")),
        Err(_) => out.push("  now: tailscaled did not answer within 2s".to_string()),
    }
    out
}

#[cfg(test)]
mod tests;
