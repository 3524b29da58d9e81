//! The rules tsboot owns, independent of the backend that carries them (README D9, D22).
//!
//! The watcher computes the wanted set from the node's addresses, `TS_DEST_IP` and the tailnet
//! target; a [`crate::firewall::Driver`] makes the kernel hold exactly that set, once each.

use std::fmt;
use std::net::IpAddr;

/// tailscaled's kernel interface, the one egress never DNATs and MSS clamping is about.
pub const TUN: &str = "tailscale0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Prefix length of a single address.
    pub fn full_len(&self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Which side of `tailscale0` a clamped handshake packet crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Leaving through `tailscale0` (the SYN towards the tailnet).
    Out,
    /// Arriving on `tailscale0` and forwarded on (the SYN-ACK back to the client).
    In,
}

impl Direction {
    pub fn name(&self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Ingress (`TS_DEST_IP`): traffic to the node's tailnet address `local` goes to `dest`.
    /// `dest_raw` is `TS_DEST_IP` verbatim, what the reference passes to iptables.
    IngressDnat {
        local: IpAddr,
        dest: IpAddr,
        dest_raw: String,
    },
    /// Egress: traffic arriving on any interface but `tailscale0` goes to `target`.
    EgressDnat { target: IpAddr },
    /// Egress: traffic to `target` leaves with the node's own tailnet address `local`.
    EgressSnat { target: IpAddr, local: IpAddr },
    /// Egress: TCP MSS of forwarded handshakes on `tailscale0` clamped to the path MTU.
    ClampMss { family: Family, dir: Direction },
}

impl Rule {
    pub fn family(&self) -> Family {
        match self {
            Rule::IngressDnat { local, .. } => Family::of(local),
            Rule::EgressDnat { target } | Rule::EgressSnat { target, .. } => Family::of(target),
            Rule::ClampMss { family, .. } => *family,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::IngressDnat { local, dest, .. } => write!(f, "ingress DNAT {local} -> {dest}"),
            Rule::EgressDnat { target } => write!(f, "egress DNAT non-{TUN} -> {target}"),
            Rule::EgressSnat { target, local } => write!(f, "egress SNAT to {local} for {target}"),
            Rule::ClampMss { dir, .. } => write!(f, "MSS clamp {} {TUN}", dir.name()),
        }
    }
}

/// The egress rules towards `target` from the node's address `local` of the same family.
pub fn egress(target: IpAddr, local: IpAddr) -> [Rule; 4] {
    let family = Family::of(&target);
    [
        Rule::EgressDnat { target },
        Rule::EgressSnat { target, local },
        Rule::ClampMss {
            family,
            dir: Direction::Out,
        },
        Rule::ClampMss {
            family,
            dir: Direction::In,
        },
    ]
}

/// The wanted rules of one family, sorted and without repeats.
pub fn of_family(rules: &[Rule], family: Family) -> Vec<Rule> {
    let mut out: Vec<Rule> = rules
        .iter()
        .filter(|r| r.family() == family)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}
