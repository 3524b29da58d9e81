//! The netmap's peers, for resolving `TS_TAILNET_TARGET_FQDN` (README D22).
//!
//! Kept apart from [`crate::notify::Notify`] on purpose: only a watcher that resolves a name
//! pays for reading peers ([`PeerDelta::parse_line`] on the same line), the others keep skipping
//! them. Every era is read:
//! * seed..v1.98: every netmap message carries the full `NetMap.Peers`;
//! * v1.98+ (watch mask bit 12, [`MASK_PEER_CHANGES`]): a full netmap arrives as `SelfChange`
//!   plus `PeersChanged` listing every peer; deltas as `PeersChanged` (upserts, whole nodes) and
//!   `PeersRemoved` (node IDs) without `SelfChange`;
//! * v1.100+: the first message of a watch with bit 14 carries `InitialStatus.Peer`.
//!
//! `PeerChangedPatch` never changes a name or an address, so it is not asked for.

use crate::localapi::{NOTIFY_INITIAL_NETMAP, NOTIFY_INITIAL_STATE, NOTIFY_NO_NETMAP};
use crate::notify::{single_ip, Keep, Node, Notify, PeerMode};
use std::collections::BTreeMap;
use std::net::IpAddr;
use ts_common::settings::IpPrefix;

/// `NotifyPeerChanges`: deliver `PeersChanged` / `PeersRemoved` (v1.98+; older daemons ignore it).
pub const NOTIFY_PEER_CHANGES: u64 = 1 << 12;
/// What a watcher resolving a name asks for: the state, every peer once (the initial netmap)
/// and peer changes after, but no runtime netmap where the daemon can leave it out. The only
/// watch of a boot whose cost grows with the tailnet (README D26).
pub const MASK_PEER_CHANGES: u64 =
    NOTIFY_INITIAL_STATE | NOTIFY_INITIAL_NETMAP | NOTIFY_PEER_CHANGES | NOTIFY_NO_NETMAP;

/// A bus message with its peer fields read (see [`crate::notify::PeerMode`]).
pub type PeerDelta = Notify<Keep>;

/// One peer as far as name resolution cares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Peer {
    name: String,
    addresses: Vec<IpPrefix>,
}

/// The peers known so far, by node ID (a peer without an ID is kept by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    by_id: BTreeMap<i64, Peer>,
    by_name: BTreeMap<String, Peer>,
}

impl Peers {
    fn replace_all(&mut self, nodes: impl IntoIterator<Item = (i64, Peer)>) {
        self.by_id.clear();
        self.by_name.clear();
        for (id, peer) in nodes {
            self.upsert(id, peer);
        }
    }

    fn upsert(&mut self, id: i64, peer: Peer) {
        if id != 0 {
            self.by_name.remove(&peer.name);
            self.by_id.insert(id, peer);
        } else if !peer.name.is_empty() {
            self.by_name.insert(peer.name.clone(), peer);
        }
    }

    /// Folds one message in; `true` when it said anything about peers (never in [`Skip`] mode,
    /// which reads none). Peers are folded one at a time: only a peer's name and addresses are
    /// kept.
    pub fn apply<M: PeerMode>(&mut self, delta: &Notify<M>) -> bool {
        let from_node = |n: &Node| {
            (
                n.id,
                Peer {
                    name: n.name.clone(),
                    addresses: n.addresses.clone(),
                },
            )
        };
        let mut touched = false;
        if let Some(peers) = delta
            .initial_status
            .as_ref()
            .and_then(|s| s.peer.value.as_ref())
        {
            self.replace_all(peers.values().map(|p| {
                (
                    p.node_id,
                    Peer {
                        name: p.dns_name.clone(),
                        addresses: p.tailscale_ips.iter().map(|ip| single_ip(*ip)).collect(),
                    },
                )
            }));
            touched = true;
        }
        if let Some(peers) = delta
            .net_map
            .as_ref()
            .and_then(|nm| nm.peers.value.as_ref())
        {
            self.replace_all(peers.iter().map(from_node));
            touched = true;
        }
        if let Some(changed) = &delta.peers_changed.value {
            if delta.self_change.is_some() {
                // A full netmap lists every peer: whoever is missing is gone.
                self.replace_all(changed.iter().map(from_node));
            } else {
                for node in changed {
                    let (id, peer) = from_node(node);
                    self.upsert(id, peer);
                }
            }
            touched = true;
        }
        if let Some(removed) = &delta.peers_removed.value {
            for id in removed {
                self.by_id.remove(id);
            }
            touched = true;
        }
        touched
    }

    /// The addresses of the peer named `fqdn` (letter case and the trailing dot do not matter),
    /// single IPs only, in the daemon's order. `None` when no peer has that name.
    pub fn resolve(&self, fqdn: &str) -> Option<Vec<IpAddr>> {
        let want = fqdn.trim_end_matches('.');
        self.by_id
            .values()
            .chain(self.by_name.values())
            .find(|p| p.name.trim_end_matches('.').eq_ignore_ascii_case(want))
            .map(|p| {
                p.addresses
                    .iter()
                    .filter(|a| a.len == single_ip(a.addr).len)
                    .map(|a| a.addr)
                    .collect()
            })
    }

    pub fn len(&self) -> usize {
        self.by_id.len() + self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(json: &str) -> PeerDelta {
        PeerDelta::parse_line(json.as_bytes()).expect("valid")
    }

    #[test]
    fn skip_mode_reads_no_peers() {
        let line = SEED.as_bytes();
        let skipped = Notify::<crate::notify::Skip>::from_line(line).expect("valid");
        assert!(skipped.net_map.expect("netmap").peers.value.is_none());
        let kept = PeerDelta::parse_line(line).expect("valid");
        assert_eq!(
            kept.net_map.expect("netmap").peers.value.map(|p| p.len()),
            Some(2)
        );
    }

    fn ips(list: &[&str]) -> Option<Vec<IpAddr>> {
        Some(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    const SEED: &str = r#"{"NetMap":{"Peers":[{"ID":1,"Name":"db-1.tail1234.ts.net.","Addresses":["100.90.1.2/32","fd7a::102/128","10.0.0.0/24"]},{"ID":2,"Name":"web.tail1234.ts.net.","Addresses":["100.90.1.3/32"]}]}}"#;

    #[test]
    fn seed_netmap_is_the_full_list() {
        let mut p = Peers::default();
        assert!(p.apply(&delta(SEED)));
        assert_eq!(p.len(), 2);
        // Trailing dot optional, case-insensitive; subnet routes are not addresses.
        for name in [
            "db-1.tail1234.ts.net",
            "db-1.tail1234.ts.net.",
            "DB-1.Tail1234.TS.net",
        ] {
            assert_eq!(p.resolve(name), ips(&["100.90.1.2", "fd7a::102"]), "{name}");
        }
        assert_eq!(p.resolve("db-1"), None, "no search domains");
        assert_eq!(p.resolve("nope.tail1234.ts.net"), None);
        // The next full netmap drops web.
        assert!(p.apply(&delta(
            r#"{"NetMap":{"Peers":[{"ID":1,"Name":"db-1.tail1234.ts.net.","Addresses":["100.90.9.9/32"]}]}}"#
        )));
        assert_eq!(p.resolve("web.tail1234.ts.net"), None);
        assert_eq!(p.resolve("db-1.tail1234.ts.net"), ips(&["100.90.9.9"]));
        // A message without peers changes nothing.
        assert!(!p.apply(&delta(r#"{"State":6,"NetMap":{"Addresses":[]}}"#)));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn head_deltas_and_full_netmaps() {
        let mut p = Peers::default();
        assert!(p.apply(&delta(
            r#"{"SelfChange":{"ID":9},"PeersChanged":[{"ID":1,"Name":"db.ts.net.","Addresses":["100.90.1.2/32"]},{"ID":2,"Name":"web.ts.net.","Addresses":["100.90.1.3/32"]}]}"#
        )));
        assert_eq!(p.len(), 2);
        // Delta: db moves, web removed, a new peer.
        assert!(p.apply(&delta(
            r#"{"PeersChanged":[{"ID":1,"Name":"db.ts.net.","Addresses":["100.90.7.7/32"]},{"ID":3,"Name":"new.ts.net.","Addresses":["100.90.1.4/32"]}],"PeersRemoved":[2]}"#
        )));
        assert_eq!(p.resolve("db.ts.net"), ips(&["100.90.7.7"]));
        assert_eq!(p.resolve("web.ts.net"), None);
        assert_eq!(p.resolve("new.ts.net"), ips(&["100.90.1.4"]));
        // A delta is not the whole list.
        assert!(p.apply(&delta(
            r#"{"PeersChanged":[{"ID":4,"Name":"x.ts.net.","Addresses":[]}]}"#
        )));
        assert_eq!(p.len(), 3);
        // A full netmap (SelfChange + PeersChanged) is.
        assert!(p.apply(&delta(
            r#"{"SelfChange":{"ID":9},"PeersChanged":[{"ID":3,"Name":"new.ts.net.","Addresses":["100.90.1.4/32"]}]}"#
        )));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn initial_status_peers() {
        let mut p = Peers::default();
        assert!(p.apply(&delta(
            r#"{"InitialStatus":{"BackendState":"Running","Peer":{"nodekey:ab":{"NodeID":1,"DNSName":"db.ts.net.","TailscaleIPs":["100.90.1.2","fd7a::2"]}}}}"#
        )));
        assert_eq!(p.resolve("db.ts.net"), ips(&["100.90.1.2", "fd7a::2"]));
        // A peer without a node ID is kept by name and replaced by its ID'd self later.
        assert!(p.apply(&delta(
            r#"{"PeersChanged":[{"Name":"anon.ts.net.","Addresses":["100.90.1.5/32"]}]}"#
        )));
        assert_eq!(p.resolve("anon.ts.net"), ips(&["100.90.1.5"]));
        assert!(p.apply(&delta(
            r#"{"PeersChanged":[{"ID":5,"Name":"anon.ts.net.","Addresses":["100.90.1.6/32"]}]}"#
        )));
        assert_eq!(p.len(), 2);
        assert_eq!(p.resolve("anon.ts.net"), ips(&["100.90.1.6"]));
    }

    #[test]
    fn fixtures_of_both_eras_resolve_db_1() {
        for file in [
            "seed-era-12-initial-running-with-netmap-mask10.json",
            "head-era-13-initial-running-with-netmap-mask10.json",
            "head-era-20-initial-status-headmask28804.json",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/ipn-bus")
                .join(file);
            let line = std::fs::read(&path).expect("fixture");
            let line: Vec<u8> = line.into_iter().filter(|b| *b != b'\n').collect();
            let mut p = Peers::default();
            assert!(
                p.apply(&PeerDelta::parse_line(&line).expect(file)),
                "{file}"
            );
            assert_eq!(
                p.resolve("db-1.tail1234.ts.net"),
                ips(&["100.90.1.2", "fd7a:115c:a1e0:ab12:4843:cd96:625a:102"]),
                "{file}"
            );
        }
    }
}
