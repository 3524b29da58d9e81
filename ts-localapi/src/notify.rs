//! The `ipn.Notify` messages of tailscaled's IPN bus, for both eras (seed ~v1.36 and HEAD).
//!
//! Only the fields a containerboot-like client acts on are modelled; everything else (peers,
//! DERP maps, packet filters, engine counters, private keys) is skipped while parsing, so a
//! message never costs more memory than its few interesting values and secrets never reach a
//! log line or an error message. The reader is tolerant the way Go's `encoding/json` is:
//! unknown keys are ignored and `null` means the same as an absent key (docs/tailscaled-protocol.md §3.2).
//! Types of the fields we do read are checked: a `State` that is not an integer or an address
//! that is not a prefix is an error, as it would be for the Go client.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use ts_common::settings::IpPrefix;

/// The `ErrMessage` a HEAD daemon (v1.102+) sends to a lagging watcher right before it ends the
/// stream (docs/tailscaled-protocol.md §2.2). A client that sees it should watch again.
pub const FELL_BEHIND: &str = "IPN bus consumer fell behind; closing watch";

/// `ipn.State` (docs/tailscaled-protocol.md §3.1): a JSON integer on the bus, a name in `ipnstate.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    NoState,
    InUseOtherUser,
    NeedsLogin,
    NeedsMachineAuth,
    Stopped,
    Starting,
    Running,
    /// A value this build does not know (a newer daemon); kept so it can be logged.
    Unknown(i64),
}

/// The states Go knows, in code order (`Notify.State` is the index).
const KNOWN: [(BackendState, &str); 7] = [
    (BackendState::NoState, "NoState"),
    (BackendState::InUseOtherUser, "InUseOtherUser"),
    (BackendState::NeedsLogin, "NeedsLogin"),
    (BackendState::NeedsMachineAuth, "NeedsMachineAuth"),
    (BackendState::Stopped, "Stopped"),
    (BackendState::Starting, "Starting"),
    (BackendState::Running, "Running"),
];

impl BackendState {
    /// Go's `State.String()`: the name, or the number for values Go does not know either.
    pub fn name(&self) -> String {
        match KNOWN.iter().find(|(s, _)| s == self) {
            Some((_, name)) => name.to_string(),
            None => self.code().to_string(),
        }
    }

    /// The integer form used in `Notify.State`.
    pub fn from_code(code: i64) -> Self {
        usize::try_from(code)
            .ok()
            .and_then(|i| KNOWN.get(i))
            .map_or(BackendState::Unknown(code), |(s, _)| *s)
    }

    /// The integer form (what tailscaled puts in `Notify.State`).
    pub fn code(&self) -> i64 {
        match self {
            BackendState::Unknown(n) => *n,
            known => KNOWN.iter().position(|(s, _)| s == known).unwrap_or(0) as i64,
        }
    }

    /// HEAD's `ipn.StateFromString`, for `InitialStatus.BackendState`. Unknown names give `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        KNOWN.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Whether a message's peers are read ([`Keep`], by the one watcher that resolves a peer's
/// name) or skipped unread ([`Skip`], everyone else): a netmap's peer list is most of its
/// size, and a watcher that skips it never holds any of it (see [`crate::stream`]).
pub trait PeerMode: Clone + Copy + fmt::Debug + Default + PartialEq + Eq + Send + 'static {
    const KEEP: bool;
}

/// Peer fields are skipped while parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skip;
/// Peer fields are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep;

impl PeerMode for Skip {
    const KEEP: bool = false;
}
impl PeerMode for Keep {
    const KEEP: bool = true;
}

/// A peer field: its value in [`Keep`] mode (`None` when absent or null), always `None` in
/// [`Skip`] mode, where the parser steps over it without building anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerField<M, T> {
    pub value: Option<T>,
    mode: PhantomData<M>,
}

impl<'de, M: PeerMode, T: Deserialize<'de>> Deserialize<'de> for PeerField<M, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = if M::KEEP {
            Option::<T>::deserialize(d)?
        } else {
            IgnoredAny::deserialize(d)?;
            None
        };
        Ok(PeerField {
            value,
            mode: PhantomData,
        })
    }
}

/// One message of the IPN bus. Every field is a delta: `None` means "unchanged".
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default, bound(deserialize = "M: PeerMode"))]
pub struct Notify<M = Skip> {
    pub version: Option<String>,
    /// HEAD only, first message of a watch with bit 1.
    #[serde(rename = "SessionID")]
    pub session_id: Option<String>,
    /// A user-visible backend error (bad auth key, [`FELL_BEHIND`], ...).
    pub err_message: Option<String>,
    /// `LoginFinished:{}` was present.
    #[serde(deserialize_with = "present")]
    pub login_finished: bool,
    #[serde(deserialize_with = "state_code")]
    pub state: Option<BackendState>,
    pub prefs: Option<Prefs>,
    /// An interactive-login URL; the seed's first message may carry `""`.
    #[serde(rename = "BrowseToURL")]
    pub browse_to_url: Option<String>,
    pub net_map: Option<NetMap<M>>,
    /// HEAD (v1.98+): the self node, sent instead of runtime netmaps.
    pub self_change: Option<Node>,
    /// HEAD (v1.100+): `ipnstate.Status` in the first message of a watch with bit 14; on a
    /// watch that asks for no netmap, the status read at its start (see
    /// [`crate::localapi::Follower::with_self_status`]).
    pub initial_status: Option<Status<M>>,
    /// v1.98+ with mask bit 12: peers added or changed (whole nodes); with `SelfChange`, every
    /// peer (a full netmap).
    pub peers_changed: PeerField<M, Vec<Node>>,
    /// v1.98+ with mask bit 12: node IDs of peers gone.
    pub peers_removed: PeerField<M, Vec<i64>>,
}

/// The few `ipn.Prefs` fields worth logging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Prefs {
    #[serde(rename = "ControlURL", deserialize_with = "nullable")]
    pub control_url: String,
    #[serde(deserialize_with = "nullable")]
    pub want_running: bool,
    #[serde(deserialize_with = "nullable")]
    pub logged_out: bool,
    #[serde(deserialize_with = "nullable")]
    pub hostname: String,
}

/// The parts of `netmap.NetworkMap` containerboot relies on (docs/tailscaled-protocol.md §3.4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default, bound(deserialize = "M: PeerMode"))]
pub struct NetMap<M = Skip> {
    pub self_node: Option<Node>,
    /// Seed..v1.90 only.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Top-level addresses: seed..v1.48 only (removed in v1.50).
    #[serde(deserialize_with = "prefixes")]
    pub addresses: Vec<IpPrefix>,
    /// Seed..v1.48 only (`machine-authorized`, `machine-unauthorized`, ...).
    #[serde(deserialize_with = "nullable")]
    pub machine_status: String,
    #[serde(rename = "DNS", deserialize_with = "nullable")]
    pub dns: DnsConfig,
    /// Every peer (seed..v1.98 runtime netmaps, and every first message with bit 8).
    pub peers: PeerField<M, Vec<Node>>,
}

/// The part of `tailcfg.DNSConfig` (`NetMap.DNS`, and the body of `GET /localapi/v0/dns-config`)
/// ts-serve needs: the names this node may get TLS certificates for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DnsConfig {
    #[serde(deserialize_with = "nullable")]
    pub cert_domains: Vec<String>,
}

/// The parts of `tailcfg.Node` that identify this device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: i64,
    #[serde(rename = "StableID", deserialize_with = "nullable")]
    pub stable_id: String,
    /// MagicDNS FQDN, normally with a trailing dot; kept verbatim.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "prefixes")]
    pub addresses: Vec<IpPrefix>,
    /// Omitted (false) while the machine awaits admin approval.
    #[serde(deserialize_with = "nullable")]
    pub machine_authorized: bool,
}

/// The parts of `ipnstate.Status` that carry state and identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default, bound(deserialize = "M: PeerMode"))]
pub struct Status<M = Skip> {
    #[serde(deserialize_with = "nullable")]
    pub version: String,
    /// A state *name* (`"Running"`), see [`BackendState::from_name`].
    #[serde(deserialize_with = "nullable")]
    pub backend_state: String,
    #[serde(rename = "AuthURL", deserialize_with = "nullable")]
    pub auth_url: String,
    /// Bare addresses, no prefix length.
    #[serde(rename = "TailscaleIPs", deserialize_with = "nullable")]
    pub tailscale_ips: Vec<IpAddr>,
    #[serde(rename = "Self")]
    pub self_status: Option<PeerStatus>,
    #[serde(deserialize_with = "nullable")]
    pub cert_domains: Vec<String>,
    /// The peers by node key (empty from `status?peers=false`).
    pub peer: PeerField<M, BTreeMap<String, PeerStatus>>,
}

/// The parts of `ipnstate.PeerStatus` that identify a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeerStatus {
    /// The StableNodeID.
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    /// The numeric node ID (peers' entries; what `PeersRemoved` names).
    #[serde(rename = "NodeID", deserialize_with = "nullable")]
    pub node_id: i64,
    #[serde(deserialize_with = "nullable")]
    pub host_name: String,
    /// MagicDNS FQDN with a trailing dot.
    #[serde(rename = "DNSName", deserialize_with = "nullable")]
    pub dns_name: String,
    #[serde(rename = "TailscaleIPs", deserialize_with = "nullable")]
    pub tailscale_ips: Vec<IpAddr>,
}

/// Who this device is, whichever era's field said so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfIdentity {
    pub stable_id: String,
    /// Verbatim (trailing dot or not).
    pub name: String,
    /// Single-IP prefixes (`/32`, `/128`) as the daemon listed them, IPv4 normally first.
    pub addresses: Vec<IpPrefix>,
}

/// A line that is not an `ipn.Notify`.
#[derive(Debug, thiserror::Error)]
#[error("malformed IPN bus message ({len} bytes): {source}; is the socket really tailscaled's LocalAPI (TS_SOCKET)?")]
pub struct NotifyError {
    len: usize,
    #[source]
    source: serde_json::Error,
}

/// The one long-lived phase that guards the Running state (ts-auth, or the first watcher
/// when one runs) ends the container with this error when tailscaled leaves Running; the text
/// is the reference's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tailscaled left running state (now in state {:?}), exiting", .0.name())]
pub struct LeftRunning(pub BackendState);

impl<M: PeerMode> Notify<M> {
    /// For the guard of the Running state: an error when this message reports any other
    /// state (messages without a state say nothing about it).
    pub fn check_still_running(&self) -> Result<(), LeftRunning> {
        match self.backend_state() {
            Some(BackendState::Running) | None => Ok(()),
            Some(other) => Err(LeftRunning(other)),
        }
    }

    /// Parses one line of the bus (a trailing `\n` or `\r\n` is fine); a JSON object only,
    /// as Go's decoder wants. The streaming reader ([`crate::stream`]) applies the same rule.
    /// [`Notify::from_line`] is this for the usual mode (peers skipped).
    pub fn parse_line(line: &[u8]) -> Result<Notify<M>, NotifyError> {
        serde_json::from_slice::<crate::stream::Object<Notify<M>>>(line)
            .map(|o| o.0)
            .map_err(|source| NotifyError {
                len: line.len(),
                source,
            })
    }

    /// `State`, else HEAD's `InitialStatus.BackendState` (a name; unknown names give `None`).
    pub fn backend_state(&self) -> Option<BackendState> {
        self.state.or_else(|| {
            self.initial_status
                .as_ref()
                .and_then(|s| BackendState::from_name(&s.backend_state))
        })
    }

    /// The compatible reader of docs/tailscaled-protocol.md §3.4: the self node from `SelfChange`, else
    /// `NetMap.SelfNode`; its addresses if it has any, else the top-level `NetMap.Addresses`.
    /// Failing both, `InitialStatus.Self` (when it names a node) with its bare IPs as
    /// single-IP prefixes. `None` when the message says nothing about this device.
    pub fn self_identity(&self) -> Option<SelfIdentity> {
        let net_map = self.net_map.as_ref();
        if let Some(node) = self
            .self_change
            .as_ref()
            .or_else(|| net_map?.self_node.as_ref())
        {
            let top_level = net_map.map(|nm| &nm.addresses[..]).unwrap_or_default();
            let addresses = match &node.addresses[..] {
                [] => top_level,
                own => own,
            };
            return Some(SelfIdentity {
                stable_id: node.stable_id.clone(),
                name: node.name.clone(),
                addresses: addresses.to_vec(),
            });
        }
        let status = self.initial_status.as_ref()?;
        let me = status.self_status.as_ref()?;
        // A logged-out daemon reports an empty Self; that is no identity.
        if me.id.is_empty() {
            return None;
        }
        let ips = if me.tailscale_ips.is_empty() {
            &status.tailscale_ips
        } else {
            &me.tailscale_ips
        };
        Some(SelfIdentity {
            stable_id: me.id.clone(),
            name: me.dns_name.clone(),
            addresses: ips.iter().map(|ip| single_ip(*ip)).collect(),
        })
    }

    /// The node's certificate domains when this message tells them: a netmap's `DNS` (seed
    /// and the first message of a HEAD watch) or HEAD's `InitialStatus`. `None` when the
    /// message says nothing about them; HEAD's runtime `SelfChange` does not carry them either
    /// (ask `GET /localapi/v0/dns-config` then).
    pub fn cert_domains(&self) -> Option<&[String]> {
        if let Some(nm) = &self.net_map {
            return Some(&nm.dns.cert_domains);
        }
        self.initial_status
            .as_ref()
            .map(|s| s.cert_domains.as_slice())
    }

    /// True for the last message of a stream the server cut because we lagged.
    pub fn is_fell_behind(&self) -> bool {
        self.err_message.as_deref() == Some(FELL_BEHIND)
    }
}

impl Notify {
    /// One line of the bus, peers skipped (see [`Notify::parse_line`]).
    pub fn from_line(line: &[u8]) -> Result<Notify, NotifyError> {
        Notify::<Skip>::parse_line(line)
    }
}

/// `ip` as a `/32` or `/128` prefix.
pub fn single_ip(ip: IpAddr) -> IpPrefix {
    IpPrefix {
        addr: ip,
        len: if ip.is_ipv4() { 32 } else { 128 },
    }
}

/// `null` and absent both mean the type's zero value, as in Go.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `LoginFinished` is an empty object when set; any non-null value counts.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<serde::de::IgnoredAny>::deserialize(d)?.is_some())
}

fn state_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BackendState>, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.map(BackendState::from_code))
}

fn prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpPrefix>, D::Error> {
    let raw: Vec<String> = nullable(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpPrefix>()
                .map_err(|why| serde::de::Error::custom(format!("address {s:?}: {why}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_match_go() {
        let names = [
            "NoState",
            "InUseOtherUser",
            "NeedsLogin",
            "NeedsMachineAuth",
            "Stopped",
            "Starting",
            "Running",
        ];
        for (code, name) in names.iter().enumerate() {
            let s = BackendState::from_code(code as i64);
            assert_eq!(s.name(), *name);
            assert_eq!(s.code(), code as i64);
            assert_eq!(BackendState::from_name(name), Some(s));
        }
        assert_eq!(BackendState::from_code(7), BackendState::Unknown(7));
        assert_eq!(BackendState::from_code(-1).name(), "-1");
        assert_eq!(BackendState::from_name("running"), None);
        assert_eq!(BackendState::from_name(""), None);
    }

    #[test]
    fn null_and_absent_are_the_same() {
        let a = Notify::from_line(br#"{"State":null,"NetMap":null,"LoginFinished":null}"#).unwrap();
        let b = Notify::from_line(b"{}").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Notify::default());
        let n = Notify::from_line(
            br#"{"NetMap":{"SelfNode":{"StableID":null,"Name":null,"Addresses":null},"Addresses":null}}"#,
        )
        .unwrap();
        assert_eq!(
            n.self_identity(),
            Some(SelfIdentity::default()),
            "a null SelfNode field is its zero value"
        );
    }

    #[test]
    fn type_errors_are_errors_not_panics() {
        for bad in [
            &br#"{"State":"Running"}"#[..],
            br#"{"State":6.5}"#,
            br#"{"NetMap":{"Addresses":["100.64.0.1"]}}"#,
            br#"{"NetMap":{"Addresses":["100.64.0.1/33"]}}"#,
            br#"{"SelfChange":{"StableID":5}}"#,
            br#"{"InitialStatus":{"TailscaleIPs":["100.64.0.1/32"]}}"#,
            b"[]",
            b"",
            b"null",
            b"{",
        ] {
            let err = Notify::from_line(bad).expect_err(std::str::from_utf8(bad).unwrap());
            assert!(
                err.to_string().contains("malformed IPN bus message"),
                "{err}"
            );
        }
    }

    #[test]
    fn login_finished_any_value() {
        assert!(
            Notify::from_line(br#"{"LoginFinished":{}}"#)
                .unwrap()
                .login_finished
        );
        assert!(
            !Notify::from_line(br#"{"LoginFinished":null}"#)
                .unwrap()
                .login_finished
        );
    }

    #[test]
    fn self_change_wins_and_falls_back_to_top_level_addresses() {
        let n = Notify::from_line(
            br#"{"SelfChange":{"StableID":"a","Name":"a.","Addresses":[]},
                 "NetMap":{"SelfNode":{"StableID":"b","Name":"b.","Addresses":["100.64.0.2/32"]},
                           "Addresses":["100.64.0.3/32"]}}"#,
        )
        .unwrap();
        let id = n.self_identity().unwrap();
        assert_eq!(id.stable_id, "a");
        assert_eq!(id.addresses, vec!["100.64.0.3/32".parse().unwrap()]);
    }

    #[test]
    fn netmap_without_self_node_is_no_identity() {
        let n = Notify::from_line(br#"{"NetMap":{"SelfNode":null,"Addresses":["100.64.0.3/32"]}}"#)
            .unwrap();
        assert_eq!(n.self_identity(), None);
    }

    #[test]
    fn initial_status_self_falls_back_to_top_level_ips() {
        let n = Notify::from_line(
            br#"{"InitialStatus":{"BackendState":"Starting","TailscaleIPs":["100.64.0.9","fd7a::9"],
                 "Self":{"ID":"nX","DNSName":"x.ts.net.","TailscaleIPs":null}}}"#,
        )
        .unwrap();
        assert_eq!(n.backend_state(), Some(BackendState::Starting));
        let id = n.self_identity().unwrap();
        assert_eq!(id.name, "x.ts.net.");
        assert_eq!(
            id.addresses,
            vec![
                "100.64.0.9/32".parse().unwrap(),
                "fd7a::9/128".parse().unwrap()
            ]
        );
        let empty = Notify::from_line(br#"{"InitialStatus":{"Self":{"ID":""}}}"#).unwrap();
        assert_eq!(empty.self_identity(), None);
    }

    #[test]
    fn cert_domains_from_netmap_or_initial_status() {
        let n = Notify::from_line(br#"{"NetMap":{"DNS":{"CertDomains":["a.ts.net","b.ts.net"]}}}"#)
            .unwrap();
        assert_eq!(
            n.cert_domains(),
            Some(&["a.ts.net".to_string(), "b.ts.net".to_string()][..])
        );
        let none: &[String] = &[];
        let n = Notify::from_line(br#"{"NetMap":{"DNS":null}}"#).unwrap();
        assert_eq!(n.cert_domains(), Some(none));
        let n = Notify::from_line(br#"{"InitialStatus":{"CertDomains":["c.ts.net"]}}"#).unwrap();
        assert_eq!(n.cert_domains(), Some(&["c.ts.net".to_string()][..]));
        let n = Notify::from_line(br#"{"SelfChange":{"StableID":"x"}}"#).unwrap();
        assert_eq!(n.cert_domains(), None);
        assert!(Notify::from_line(br#"{"NetMap":{"DNS":{"CertDomains":"x"}}}"#).is_err());
    }

    #[test]
    fn state_beats_initial_status() {
        let n = Notify::from_line(br#"{"State":2,"InitialStatus":{"BackendState":"Running"}}"#)
            .unwrap();
        assert_eq!(n.backend_state(), Some(BackendState::NeedsLogin));
        let n = Notify::from_line(br#"{"InitialStatus":{"BackendState":"Bogus"}}"#).unwrap();
        assert_eq!(n.backend_state(), None);
    }
}
