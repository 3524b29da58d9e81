//! Egress to a tailnet target and the firewall backend choice (README D22):
//! `TS_TAILNET_TARGET_IP`, `TS_TAILNET_TARGET_FQDN`, `TS_DEBUG_FIREWALL_MODE`.

use super::SettingsError;
use std::fmt;
use std::net::IpAddr;

/// Where traffic arriving on a non-`tailscale0` interface is sent (kernel mode only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailnetTarget {
    /// `TS_TAILNET_TARGET_IP`.
    Ip(IpAddr),
    /// `TS_TAILNET_TARGET_FQDN`, verbatim (trailing dot optional); resolved from the netmap's
    /// peers by the watcher.
    Fqdn(String),
}

impl TailnetTarget {
    /// The variable the target came from.
    pub fn var(&self) -> &'static str {
        match self {
            TailnetTarget::Ip(_) => "TS_TAILNET_TARGET_IP",
            TailnetTarget::Fqdn(_) => "TS_TAILNET_TARGET_FQDN",
        }
    }
}

impl fmt::Display for TailnetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailnetTarget::Ip(ip) => write!(f, "{ip}"),
            TailnetTarget::Fqdn(name) => f.write_str(name),
        }
    }
}

/// `TS_DEBUG_FIREWALL_MODE`: which netfilter interface tailscaled (and so tsboot) programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirewallMode {
    Iptables,
    Nftables,
    /// Decide from the rules already installed (tailscaled's `auto`).
    Auto,
}

impl FirewallMode {
    const ALL: [FirewallMode; 3] = [
        FirewallMode::Iptables,
        FirewallMode::Nftables,
        FirewallMode::Auto,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            FirewallMode::Iptables => "iptables",
            FirewallMode::Nftables => "nftables",
            FirewallMode::Auto => "auto",
        }
    }
}

impl fmt::Display for FirewallMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unset or empty: tailscaled's default choice. tailscaled silently treats any other spelling
/// as "iptables", tsboot refuses it so a typo cannot pick the wrong backend.
pub(super) fn parse_firewall_mode(
    value: Option<&str>,
) -> Result<Option<FirewallMode>, SettingsError> {
    let Some(value) = value else {
        return Ok(None);
    };
    match FirewallMode::ALL.into_iter().find(|m| m.as_str() == value) {
        Some(mode) => Ok(Some(mode)),
        None => Err(SettingsError::invalid(
            "TS_DEBUG_FIREWALL_MODE",
            value,
            "use iptables, nftables or auto (or leave it unset for tailscaled's default)",
        )),
    }
}

/// The longest DNS name, counting the trailing dot.
const MAX_NAME: usize = 254;
const MAX_LABEL: usize = 63;

/// A MagicDNS name as tailscale's `dnsname.ToFQDN` accepts it (labels of 1..=63 bytes, at most
/// 254 bytes with the trailing dot), and printable ASCII without spaces so a pasted value with
/// a stray space or newline is caught here rather than never matching a peer.
fn check_fqdn(value: &str) -> Result<(), String> {
    let name = value.strip_suffix('.').unwrap_or(value);
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() + 1 > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("contains {c:?}"));
    }
    if let Some(label) = name
        .split('.')
        .find(|l| l.is_empty() || l.len() > MAX_LABEL)
    {
        return Err(format!(
            "label {label:?} is not 1 to {MAX_LABEL} bytes long"
        ));
    }
    Ok(())
}

/// `TS_TAILNET_TARGET_IP` / `TS_TAILNET_TARGET_FQDN`, both "" = unset; exclusive, kernel mode only.
pub(super) fn parse_tailnet_target(
    ip: Option<&str>,
    fqdn: Option<&str>,
    userspace: bool,
) -> Result<Option<TailnetTarget>, SettingsError> {
    let target = match (ip, fqdn) {
        (None, None) => return Ok(None),
        (Some(ip), Some(fqdn)) => {
            return Err(SettingsError::invalid(
                "TS_TAILNET_TARGET_IP",
                ip,
                format!("TS_TAILNET_TARGET_FQDN={fqdn:?} is set too; set only one of TS_TAILNET_TARGET_IP and TS_TAILNET_TARGET_FQDN"),
            ))
        }
        (Some(ip), None) => TailnetTarget::Ip(ip.parse().map_err(|_| {
            SettingsError::invalid(
                "TS_TAILNET_TARGET_IP",
                ip,
                "not an IP address; use the tailnet IPv4 or IPv6 address of the target node",
            )
        })?),
        (None, Some(fqdn)) => {
            check_fqdn(fqdn).map_err(|why| {
                SettingsError::invalid(
                    "TS_TAILNET_TARGET_FQDN",
                    fqdn,
                    format!("not a DNS name ({why}); use the target's MagicDNS name, e.g. db.tail1234.ts.net"),
                )
            })?;
            TailnetTarget::Fqdn(fqdn.to_string())
        }
    };
    if userspace {
        let var = target.var();
        return Err(SettingsError::invalid(
            var,
            &target.to_string(),
            format!("{var} is not supported with TS_USERSPACE: egress to a tailnet target needs kernel networking, set TS_USERSPACE=false"),
        ));
    }
    Ok(Some(target))
}
