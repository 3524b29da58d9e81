//! The local HTTP endpoint's variables: `TS_LOCAL_ADDR_PORT`, `TS_ENABLE_HEALTH_CHECK`,
//! `TS_ENABLE_METRICS` and the deprecated `TS_HEALTHCHECK_ADDR_PORT` (README, "Health and
//! metrics endpoint"; D20).
//!
//! Parsing follows containerboot's: an address is `ip:port` as Go's `netip.ParseAddrPort`
//! reads it (IPv6 in brackets, an optional `%zone`, a decimal port 0-65535), the listen address
//! is only parsed when a handler is enabled, and a Kubernetes `$(POD_IP):PORT` whose IPv6 pod
//! address (from `POD_IPS`) lacks brackets gets them.

use super::{Env, SettingsError};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// containerboot's default listen address for the local endpoint.
pub const DEFAULT_LOCAL_ADDR_PORT: &str = "[::]:9002";

/// Name of the directory, beside tailscaled's socket, where the long-lived phases publish their
/// reconcile status for ts-health (see `ts_common::status`).
pub const STATUS_DIR_NAME: &str = "tsboot-status";

/// An `ip:port` to listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    pub ip: IpAddr,
    /// IPv6 zone (`%eth0` or `%2`), resolved to a scope id when binding.
    pub zone: Option<String>,
    pub port: u16,
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.ip, &self.zone) {
            (IpAddr::V4(ip), _) => write!(f, "{ip}:{}", self.port),
            (IpAddr::V6(ip), None) => write!(f, "[{ip}]:{}", self.port),
            (IpAddr::V6(ip), Some(zone)) => write!(f, "[{ip}%{zone}]:{}", self.port),
        }
    }
}

impl ListenAddr {
    /// Go's `netip.ParseAddrPort`: the error says what is wrong with `s`.
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "not an ip:port (no ':')".to_string())?;
        if host.is_empty() {
            return Err("no IP before the ':'".into());
        }
        if port.is_empty() {
            return Err("no port after the ':'".into());
        }
        let (host, bracketed) = match host.strip_prefix('[') {
            Some(inner) => (
                inner
                    .strip_suffix(']')
                    .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?,
                true,
            ),
            None => (host, false),
        };
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid port {port:?}"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("port {port} is out of range (0-65535)"))?;
        let (addr, zone) = match host.split_once('%') {
            Some((a, z)) => (a, Some(z.to_string())),
            None => (host, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        if zone.is_some() && (ip.is_ipv4() || zone.as_deref() == Some("")) {
            return Err(format!("invalid zone in {host:?}"));
        }
        match (ip.is_ipv4(), bracketed) {
            (true, true) => Err("square brackets can only be used with IPv6 addresses".into()),
            (false, false) => Err("IPv6 addresses must be surrounded by square brackets".into()),
            _ => Ok(ListenAddr { ip, zone, port }),
        }
    }
}

/// What the local HTTP endpoint serves, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalEndpoints {
    /// `TS_ENABLE_HEALTH_CHECK`: `/healthz` on [`LocalEndpoints::addr`].
    pub health_check: bool,
    /// `TS_ENABLE_METRICS`: `/metrics` on [`LocalEndpoints::addr`].
    pub metrics: bool,
    /// `TS_LOCAL_ADDR_PORT` (default `[::]:9002`), parsed only when a handler above is enabled.
    pub addr: Option<ListenAddr>,
    /// `TS_HEALTHCHECK_ADDR_PORT` (deprecated): `/healthz` alone on its own listener.
    pub deprecated_health_addr: Option<ListenAddr>,
    /// Where the phases publish their reconcile status; set when any handler is enabled.
    pub status_dir: Option<PathBuf>,
}

impl LocalEndpoints {
    /// Anything to serve at all (then ts-init starts ts-health).
    pub fn enabled(&self) -> bool {
        self.addr.is_some() || self.deprecated_health_addr.is_some()
    }

    pub(super) fn from_env(env: &Env, socket: &Path) -> Result<LocalEndpoints, SettingsError> {
        let health_check = env.boolean("TS_ENABLE_HEALTH_CHECK", false)?;
        let metrics = env.boolean("TS_ENABLE_METRICS", false)?;
        let deprecated_raw = env.get("TS_HEALTHCHECK_ADDR_PORT").unwrap_or("");
        let deprecated_health_addr = if deprecated_raw.is_empty() {
            None
        } else {
            if health_check {
                return Err(SettingsError::invalid(
                    "TS_HEALTHCHECK_ADDR_PORT",
                    deprecated_raw,
                    "cannot be combined with TS_ENABLE_HEALTH_CHECK=true; it is deprecated: \
                     unset it and use TS_ENABLE_HEALTH_CHECK with TS_LOCAL_ADDR_PORT",
                ));
            }
            Some(listen_addr("TS_HEALTHCHECK_ADDR_PORT", deprecated_raw)?)
        };
        let addr = if health_check || metrics {
            let raw = env
                .non_empty("TS_LOCAL_ADDR_PORT")
                .unwrap_or(DEFAULT_LOCAL_ADDR_PORT);
            let raw = bracket_pod_ipv6(raw, pod_ipv6(env)?.as_deref());
            Some(listen_addr("TS_LOCAL_ADDR_PORT", &raw)?)
        } else {
            None
        };
        if let (Some(a), Some(d)) = (&addr, &deprecated_health_addr) {
            // Port 0 asks for any free port: two of those never collide.
            if a == d && a.port != 0 {
                return Err(SettingsError::invalid(
                    "TS_HEALTHCHECK_ADDR_PORT",
                    deprecated_raw,
                    format!(
                        "the same address as TS_LOCAL_ADDR_PORT ({a}), which serves /metrics; \
                         unset TS_HEALTHCHECK_ADDR_PORT and set TS_ENABLE_HEALTH_CHECK=true"
                    ),
                ));
            }
        }
        let status_dir = (addr.is_some() || deprecated_health_addr.is_some()).then(|| {
            socket
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(STATUS_DIR_NAME)
        });
        Ok(LocalEndpoints {
            health_check,
            metrics,
            addr,
            deprecated_health_addr,
            status_dir,
        })
    }
}

fn listen_addr(var: &'static str, value: &str) -> Result<ListenAddr, SettingsError> {
    ListenAddr::parse(value).map_err(|why| {
        SettingsError::invalid(
            var,
            value,
            format!("{why}; use an IP address and a port, IPv6 in brackets, e.g. [::]:9002 or 0.0.0.0:9002"),
        )
    })
}

/// The pod's IPv6 address from `POD_IPS` (at most two comma-separated addresses, as the
/// Kubernetes downward API gives them).
fn pod_ipv6(env: &Env) -> Result<Option<String>, SettingsError> {
    let Some(raw) = env.non_empty("POD_IPS") else {
        return Ok(None);
    };
    let ips: Vec<&str> = raw.split(',').collect();
    let invalid = |why: String| SettingsError::invalid("POD_IPS", raw, why);
    if ips.len() > 2 {
        return Err(invalid(format!(
            "at most 2 IP addresses (one per family), got {}",
            ips.len()
        )));
    }
    let mut v6 = None;
    for ip in ips {
        let parsed: IpAddr = ip
            .parse()
            .map_err(|_| invalid(format!("{ip:?} is not an IP address")))?;
        if parsed.is_ipv6() {
            v6 = Some(parsed.to_string());
        }
    }
    Ok(v6)
}

/// `$(POD_IP):PORT` with an IPv6 pod address gives `fd00::1:9002`; containerboot brackets the
/// pod's address when it appears unbracketed, and so does tsboot.
fn bracket_pod_ipv6(value: &str, pod_v6: Option<&str>) -> String {
    match pod_v6 {
        Some(ip) if value.contains(ip) && !value.contains(['[', ']']) => {
            value.replacen(ip, &format!("[{ip}]"), 1)
        }
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn load(vars: &[(&str, &str)]) -> Result<LocalEndpoints, SettingsError> {
        Settings::from_vars(vars.iter().copied()).map(|s| s.local)
    }

    fn addr(s: &str) -> ListenAddr {
        ListenAddr::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parse_follows_netip_parse_addr_port() {
        for (input, shown) in [
            ("[::]:9002", "[::]:9002"),
            ("0.0.0.0:9002", "0.0.0.0:9002"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("[fe80::1%eth0]:80", "[fe80::1%eth0]:80"),
            ("[::ffff:1.2.3.4]:65535", "[::ffff:1.2.3.4]:65535"),
            ("10.0.0.1:0080", "10.0.0.1:80"),
        ] {
            assert_eq!(addr(input).to_string(), shown, "{input}");
        }
        for (bad, why) in [
            ("9002", "no ':'"),
            (":9002", "no IP"),
            ("0.0.0.0:", "no port"),
            ("::1:9002", "must be surrounded by square brackets"),
            ("[1.2.3.4]:80", "only be used with IPv6"),
            ("[::1:80", "missing ']'"),
            ("localhost:9002", "not an IP address"),
            ("1.2.3.4:65536", "out of range"),
            ("1.2.3.4:+80", "invalid port"),
            ("1.2.3.4:-1", "invalid port"),
            ("1.2.3.4%eth0:80", "invalid zone"),
            ("[fe80::1%]:80", "invalid zone"),
            (" 1.2.3.4:80", "not an IP address"),
        ] {
            let e = ListenAddr::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e:?} should say {why:?}");
        }
    }

    #[test]
    fn nothing_enabled_parses_nothing() {
        let l = load(&[("TS_LOCAL_ADDR_PORT", "garbage")]).expect("not parsed when disabled");
        assert_eq!(l, LocalEndpoints::default());
        assert!(!l.enabled());
    }

    #[test]
    fn default_address_and_status_dir_beside_the_socket() {
        let l = load(&[("TS_ENABLE_HEALTH_CHECK", "true")]).expect("ok");
        assert!(l.health_check && !l.metrics);
        assert_eq!(l.addr, Some(addr("[::]:9002")));
        assert_eq!(l.status_dir, Some(PathBuf::from("/tmp/tsboot-status")));
        let l = load(&[
            ("TS_ENABLE_METRICS", "1"),
            ("TS_LOCAL_ADDR_PORT", ""),
            ("TS_SOCKET", "/var/run/tailscale/tailscaled.sock"),
        ])
        .expect("ok");
        assert!(l.metrics && l.enabled());
        assert_eq!(l.addr, Some(addr("[::]:9002")), "empty means the default");
        assert_eq!(
            l.status_dir,
            Some(PathBuf::from("/var/run/tailscale/tsboot-status"))
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (vars, var) in [
            (
                vec![("TS_ENABLE_HEALTH_CHECK", "ture")],
                "TS_ENABLE_HEALTH_CHECK",
            ),
            (vec![("TS_ENABLE_METRICS", "2")], "TS_ENABLE_METRICS"),
            (
                vec![
                    ("TS_ENABLE_METRICS", "true"),
                    ("TS_LOCAL_ADDR_PORT", "::9002"),
                ],
                "TS_LOCAL_ADDR_PORT",
            ),
            (
                vec![("TS_HEALTHCHECK_ADDR_PORT", "localhost:8080")],
                "TS_HEALTHCHECK_ADDR_PORT",
            ),
            (
                vec![
                    ("TS_ENABLE_HEALTH_CHECK", "true"),
                    ("TS_HEALTHCHECK_ADDR_PORT", "0.0.0.0:8080"),
                ],
                "TS_HEALTHCHECK_ADDR_PORT",
            ),
            (
                vec![
                    ("TS_ENABLE_METRICS", "true"),
                    ("TS_LOCAL_ADDR_PORT", "0.0.0.0:8080"),
                    ("TS_HEALTHCHECK_ADDR_PORT", "0.0.0.0:8080"),
                ],
                "TS_HEALTHCHECK_ADDR_PORT",
            ),
            (
                vec![
                    ("TS_ENABLE_METRICS", "true"),
                    ("POD_IPS", "10.0.0.1,fd00::1,fd00::2"),
                ],
                "POD_IPS",
            ),
            (
                vec![("TS_ENABLE_METRICS", "true"), ("POD_IPS", "10.0.0.300")],
                "POD_IPS",
            ),
        ] {
            let e = load(&vars).expect_err(&format!("{vars:?}"));
            let msg = e.to_string();
            assert!(msg.starts_with(var), "{vars:?}: {msg}");
        }
    }

    #[test]
    fn pod_ipv6_gets_brackets() {
        let l = load(&[
            ("TS_ENABLE_METRICS", "true"),
            ("POD_IPS", "10.1.2.3,fd00:10:244::5"),
            ("TS_LOCAL_ADDR_PORT", "fd00:10:244::5:9002"),
        ])
        .expect("bracketed");
        assert_eq!(l.addr, Some(addr("[fd00:10:244::5]:9002")));
        // Without POD_IPS naming it, an unbracketed IPv6 address stays an error, as in HEAD.
        let e = load(&[
            ("TS_ENABLE_METRICS", "true"),
            ("TS_LOCAL_ADDR_PORT", "fd00:10:244::5:9002"),
        ])
        .expect_err("unbracketed");
        assert!(e.to_string().contains("square brackets"), "{e}");
        // POD_IPS is not read when no handler is enabled.
        assert!(load(&[("POD_IPS", "nonsense")]).is_ok());
    }

    #[test]
    fn deprecated_listener_alone_or_beside_metrics() {
        let l = load(&[("TS_HEALTHCHECK_ADDR_PORT", "127.0.0.1:8081")]).expect("ok");
        assert_eq!(l.deprecated_health_addr, Some(addr("127.0.0.1:8081")));
        assert_eq!(l.addr, None);
        assert!(l.enabled() && l.status_dir.is_some());
        let l = load(&[
            ("TS_HEALTHCHECK_ADDR_PORT", "127.0.0.1:8081"),
            ("TS_ENABLE_METRICS", "true"),
        ])
        .expect("ok");
        assert_eq!(l.addr, Some(addr("[::]:9002")));
        assert!(!l.health_check);
    }
}
