//! The one reader of tsboot's environment.
//!
//! Every `TS_*` variable of the reference (containerboot at 39efba528) keeps its name, default and
//! "set but empty" rule; the departures are the ones listed in the README's deviation table
//! (D1 booleans, D2 validation in every mode, D3 exit 2). Nothing else in tsboot calls
//! `std::env::var` for a `TS_*` name: command-line flags are turned into [`Override`]s and go
//! through the same rules, so a flag and its variable can never disagree on what a value means.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod egress;
pub use egress::{FirewallMode, TailnetTarget};

/// Default LocalAPI socket of the reference.
pub const DEFAULT_SOCKET: &str = "/tmp/tailscaled.sock";
/// Default state secret name inside Kubernetes.
pub const DEFAULT_KUBE_SECRET: &str = "tailscale";
/// Default startup deadline (D11).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default shutdown grace before SIGKILL (D6).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Variables of newer containerboot versions that tsboot recognises but does not implement (D16).
pub const UNSUPPORTED_VARS: &[&str] = &[
    "TS_HOSTNAME",
    "TS_SERVE_CONFIG",
    "TS_ENABLE_HEALTH_CHECK",
    "TS_HEALTHCHECK_ADDR_PORT",
    "TS_LOCAL_ADDR_PORT",
    "TS_ENABLE_METRICS",
    "TS_CLIENT_ID",
    "TS_CLIENT_SECRET",
    "TS_ID_TOKEN",
    "TS_AUDIENCE",
    "TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV",
    "TS_EGRESS_PROXIES_CONFIG_PATH",
    "TS_INGRESS_PROXIES_CONFIG_PATH",
    "TS_CERT_DOMAIN",
];
/// Prefix of newer containerboot's experimental variables, also unsupported (D16).
pub const UNSUPPORTED_PREFIX: &str = "TS_EXPERIMENTAL_";

/// An auth key. Its `Debug` and `Display` never show the value, so it cannot leak into a log
/// line or an error message by accident; [`AuthKey::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(String);

impl AuthKey {
    pub fn new(key: impl Into<String>) -> Self {
        AuthKey(key.into())
    }
    /// The key itself, for the one place that must pass it on (`tailscale up`'s argv).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl fmt::Display for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// What is shown wherever an auth key would be.
pub const REDACTED: &str = "<redacted>";

/// Where the auth key came from, for `--explain` and the preflight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKeySource {
    /// `TS_AUTHKEY` was set (possibly empty, which still hides `TS_AUTH_KEY`).
    TsAuthkey,
    /// `TS_AUTHKEY` was unset and `TS_AUTH_KEY` was set.
    TsAuthKeyOld,
    /// Neither was set.
    Unset,
}

/// An IP prefix as Go's `netip.ParsePrefix` accepts it (host bits may be set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = s.split_once('/').ok_or_else(|| {
            "no '/' (want an address and a prefix length, e.g. 10.0.0.0/24)".to_string()
        })?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let digits_ok = !bits.is_empty()
            && bits.bytes().all(|b| b.is_ascii_digit())
            && !(bits.len() > 1 && bits.starts_with('0'));
        let len: u8 = if digits_ok { bits.parse().ok() } else { None }
            .ok_or_else(|| format!("bad prefix length {bits:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!(
                "prefix length {len} too large for {}",
                family_name(&addr)
            ));
        }
        Ok(IpPrefix { addr, len })
    }
}

fn family_name(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Which IP families need forwarding (§10 of the contract).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The Kubernetes API server as the service-account environment names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeService {
    /// `KUBERNETES_SERVICE_HOST`, non-empty.
    pub host: String,
    /// `KUBERNETES_SERVICE_PORT_HTTPS`, if set.
    pub port: Option<String>,
}

impl KubeService {
    /// `https://host:port`, with an IPv6 host in brackets (D14).
    pub fn url(&self) -> Result<String, SettingsError> {
        let port = match self.port.as_deref() {
            Some(p) if !p.is_empty() => p,
            _ => {
                return Err(SettingsError::Missing {
                    var: "KUBERNETES_SERVICE_PORT_HTTPS",
                    why: "KUBERNETES_SERVICE_HOST is set, so the API server port is needed",
                })
            }
        };
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(SettingsError::Invalid {
                var: "KUBERNETES_SERVICE_PORT_HTTPS",
                value: port.to_string(),
                why: "not a TCP port number".into(),
            });
        }
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        Ok(format!("https://{host}:{port}"))
    }
}

/// Why the environment (or a flag standing for a variable) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{var}={value:?} is not a boolean: use true or false (also accepted: 1/0, t/f, yes/no, on/off)")]
    Bool { var: &'static str, value: String },
    #[error("{var}={value:?} is not a duration: use a positive Go duration like 500ms, 20s, 1m30s, or a plain number of seconds")]
    Duration { var: &'static str, value: String },
    #[error("TS_ROUTES={value:?}: invalid subnet route {route:?}: {why}; use comma-separated CIDRs like 10.0.0.0/24,fd00::/64 (no spaces)")]
    Route {
        value: String,
        route: String,
        why: String,
    },
    #[error("TS_DEST_IP={value:?}: invalid proxy destination IP: {why}; use a single IPv4 or IPv6 address")]
    DestIp { value: String, why: String },
    #[error("TS_DEST_IP is not supported with TS_USERSPACE: TS_DEST_IP={value:?} needs kernel networking, set TS_USERSPACE=false")]
    DestIpUserspace { value: String },
    #[error("{var}={value:?}: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error("{var} is not set: {why}")]
    Missing {
        var: &'static str,
        why: &'static str,
    },
    #[error("{var} is not valid UTF-8; set it to a UTF-8 value")]
    NotUnicode { var: String },
}

/// One value standing in for a variable, e.g. from a command-line flag.
pub type Override = (&'static str, String);

/// The validated configuration of every tsboot phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Resolved `TS_AUTHKEY` / `TS_AUTH_KEY`; `None` when the winner is unset or empty.
    pub auth_key: Option<AuthKey>,
    pub auth_key_source: AuthKeySource,
    /// `TS_ROUTES` verbatim ("" = no routes), passed as `--advertise-routes=`.
    pub routes: String,
    /// `TS_ROUTES` parsed (validated in every mode, D2).
    pub route_prefixes: Vec<IpPrefix>,
    /// `TS_DEST_IP` verbatim ("" = no proxy), used as `--to-destination`.
    pub dest_ip_raw: String,
    pub dest_ip: Option<IpAddr>,
    pub tailscaled_extra_args: Vec<String>,
    pub extra_args: Vec<String>,
    pub userspace: bool,
    pub state_dir: String,
    pub accept_dns: bool,
    /// `TS_KUBE_SECRET`; "" disables secret storage and every secret call.
    pub kube_secret: String,
    pub socks5_server: String,
    pub outbound_http_proxy_listen: String,
    /// `TS_SOCKET` (not prefixed by the test root).
    pub socket: PathBuf,
    pub auth_once: bool,
    /// `TS_TEST_ONLY_ROOT`, the prefix of every host path.
    pub root: PathBuf,
    /// Set when `KUBERNETES_SERVICE_HOST` is non-empty ("in Kubernetes").
    pub kube_service: Option<KubeService>,
    pub boot_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// `TS_READY_FD`: where a long-lived phase reports its first reconcile.
    pub ready_fd: Option<i32>,
    /// Recognised-but-unsupported variables that are set (D16), sorted.
    pub unsupported_vars: Vec<String>,
    /// `TS_TAILNET_TARGET_IP` / `TS_TAILNET_TARGET_FQDN` (egress, kernel mode only, D22).
    pub tailnet_target: Option<TailnetTarget>,
    /// `TS_DEBUG_FIREWALL_MODE`; `None` = tailscaled's default choice (D22).
    pub firewall_mode: Option<FirewallMode>,
}

/// The variables as the process sees them: set (possibly empty) or absent.
#[derive(Clone, Debug, Default)]
struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str)
    }

    /// Reference `defaultEnv`: set (even to "") wins, else the default.
    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    /// Booleans (D1): empty or unset = default; anything unrecognised is an error.
    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.get(var) {
            None | Some("") => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| SettingsError::Bool {
                var,
                value: v.to_string(),
            }),
        }
    }

    fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, SettingsError> {
        match self.get(var) {
            None | Some("") => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| SettingsError::Duration {
                var,
                value: v.to_string(),
            }),
        }
    }
}

/// Go's `strconv.ParseBool` spellings, plus yes/no/on/off in any letter case (D1).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => return Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => return Some(false),
        _ => {}
    }
    match v.to_ascii_lowercase().as_str() {
        "yes" | "on" => Some(true),
        "no" | "off" => Some(false),
        _ => None,
    }
}

/// A positive Go-style duration (`500ms`, `1m30s`, `1.5h`) or a plain number of seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    // Go's ParseDuration takes one optional leading '+' (and '-', which can never give a
    // positive value, so it is left to fail below). Strip it once here so every form agrees:
    // before, "+5" passed (u64's FromStr takes '+') while the Go-valid "+5s" and "+1.5" failed.
    let v = v.strip_prefix('+').unwrap_or(v);
    let nanos = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits are left, so the one way this parse fails is overflow: refuse it.
        u128::from(v.parse::<u64>().ok()?) * 1_000_000_000
    } else if is_plain_decimal(v) {
        decimal_nanos(v, 1_000_000_000)?
    } else {
        go_duration_nanos(v)?
    };
    if nanos == 0 || nanos > u128::from(u64::MAX) {
        return None;
    }
    Some(Duration::from_nanos(nanos as u64))
}

fn is_plain_decimal(v: &str) -> bool {
    let mut parts = v.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    v.contains('.')
        && (!int.is_empty() || !frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// `12.5` in units of `unit_nanos`, as whole nanoseconds.
fn decimal_nanos(num: &str, unit_nanos: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int_val: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int_val.checked_mul(unit_nanos)?;
    let mut scale = unit_nanos;
    for digit in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        total = total.checked_add(u128::from(digit - b'0') * scale)?;
    }
    Some(total)
}

fn go_duration_nanos(v: &str) -> Option<u128> {
    let mut rest = v;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num.matches('.').count() > 1 {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total = total.checked_add(decimal_nanos(num, unit_nanos)?)?;
        rest = after;
    }
    Some(total)
}

fn parse_log_format(value: Option<&str>) -> Result<LogFormat, SettingsError> {
    match value {
        None | Some("") | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(SettingsError::Invalid {
            var: "TS_LOG_FORMAT",
            value: other.to_string(),
            why: "use text or json".into(),
        }),
    }
}

/// Splits like Go's `strings.Fields`: any run of whitespace separates, no quoting.
pub fn fields(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

impl Settings {
    /// Reads the process environment, then applies `overrides` (flags) on top.
    pub fn load(overrides: &[Override]) -> Result<Settings, SettingsError> {
        Self::from_vars_with(unicode_vars(std::env::vars_os())?, overrides)
    }

    /// Builds settings from an explicit set of variables (what tests and `--explain` use).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Settings, SettingsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from_vars_with(vars, &[])
    }

    /// Like [`Settings::from_vars`] for raw OS values (property tests feed arbitrary bytes).
    pub fn from_os_vars(vars: Vec<(OsString, OsString)>) -> Result<Settings, SettingsError> {
        Self::from_vars_with(unicode_vars(vars)?, &[])
    }

    fn from_vars_with(
        mut vars: BTreeMap<String, String>,
        overrides: &[Override],
    ) -> Result<Settings, SettingsError> {
        for (name, value) in overrides {
            vars.insert((*name).to_string(), value.clone());
        }
        let env = Env { vars };

        // Reference `defaultEnvs`: the first *set* name wins, even when empty.
        let (auth_key_raw, auth_key_source) = match (env.get("TS_AUTHKEY"), env.get("TS_AUTH_KEY"))
        {
            (Some(k), _) => (k.to_string(), AuthKeySource::TsAuthkey),
            (None, Some(k)) => (k.to_string(), AuthKeySource::TsAuthKeyOld),
            (None, None) => (String::new(), AuthKeySource::Unset),
        };
        let auth_key = (!auth_key_raw.is_empty()).then(|| AuthKey::new(auth_key_raw));

        let userspace = env.boolean("TS_USERSPACE", true)?;
        let accept_dns = env.boolean("TS_ACCEPT_DNS", false)?;
        let auth_once = env.boolean("TS_AUTH_ONCE", false)?;

        let routes = env.string("TS_ROUTES", "");
        let route_prefixes = parse_routes(&routes)?;

        let dest_ip_raw = env.string("TS_DEST_IP", "");
        let dest_ip = if dest_ip_raw.is_empty() {
            None
        } else {
            Some(
                dest_ip_raw
                    .parse::<IpAddr>()
                    .map_err(|_| SettingsError::DestIp {
                        value: dest_ip_raw.clone(),
                        why: format!("ParseAddr({dest_ip_raw:?}): not an IP address"),
                    })?,
            )
        };
        if dest_ip.is_some() && userspace {
            return Err(SettingsError::DestIpUserspace { value: dest_ip_raw });
        }

        let tailnet_target = egress::parse_tailnet_target(
            env.get("TS_TAILNET_TARGET_IP"),
            env.get("TS_TAILNET_TARGET_FQDN"),
            userspace,
        )?;
        let firewall_mode = egress::parse_firewall_mode(env.get("TS_DEBUG_FIREWALL_MODE"))?;

        let boot_timeout = env.duration("TS_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT)?;
        let shutdown_grace = env.duration("TS_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE)?;

        let log_format = parse_log_format(env.get("TS_LOG_FORMAT"))?;

        let ready_fd = match env.get("TS_READY_FD") {
            None | Some("") => None,
            Some(v) => Some(v.parse::<i32>().ok().filter(|fd| *fd >= 0).ok_or_else(|| {
                SettingsError::Invalid {
                    var: "TS_READY_FD",
                    value: v.to_string(),
                    why: "not a file descriptor number (a non-negative integer)".into(),
                }
            })?),
        };

        let kube_service = match env.get("KUBERNETES_SERVICE_HOST") {
            Some(host) if !host.is_empty() => Some(KubeService {
                host: host.to_string(),
                port: env.get("KUBERNETES_SERVICE_PORT_HTTPS").map(str::to_string),
            }),
            _ => None,
        };

        let unsupported_vars = env
            .vars
            .keys()
            .filter(|k| UNSUPPORTED_VARS.contains(&k.as_str()) || k.starts_with(UNSUPPORTED_PREFIX))
            .cloned()
            .collect();

        Ok(Settings {
            auth_key,
            auth_key_source,
            routes,
            route_prefixes,
            dest_ip_raw,
            dest_ip,
            tailscaled_extra_args: fields(&env.string("TS_TAILSCALED_EXTRA_ARGS", "")),
            extra_args: fields(&env.string("TS_EXTRA_ARGS", "")),
            userspace,
            state_dir: env.string("TS_STATE_DIR", ""),
            accept_dns,
            kube_secret: env.string("TS_KUBE_SECRET", DEFAULT_KUBE_SECRET),
            socks5_server: env.string("TS_SOCKS5_SERVER", ""),
            outbound_http_proxy_listen: env.string("TS_OUTBOUND_HTTP_PROXY_LISTEN", ""),
            socket: PathBuf::from(env.string("TS_SOCKET", DEFAULT_SOCKET)),
            auth_once,
            root: PathBuf::from(env.string("TS_TEST_ONLY_ROOT", "/")),
            kube_service,
            boot_timeout,
            shutdown_grace,
            log_format,
            ready_fd,
            unsupported_vars,
            tailnet_target,
            firewall_mode,
        })
    }

    /// The log format alone, for reporting a configuration error in the format the operator
    /// asked for even though the rest of the configuration was refused (text if it is invalid).
    pub fn log_format_only(overrides: &[Override]) -> LogFormat {
        let value = overrides
            .iter()
            .rev()
            .find(|(k, _)| *k == "TS_LOG_FORMAT")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("TS_LOG_FORMAT").ok());
        parse_log_format(value.as_deref()).unwrap_or(LogFormat::Text)
    }

    /// A host path under `TS_TEST_ONLY_ROOT` (`rel` has no leading slash).
    pub fn host_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// In Kubernetes (`KUBERNETES_SERVICE_HOST` non-empty).
    pub fn in_kubernetes(&self) -> bool {
        self.kube_service.is_some()
    }

    /// In Kubernetes with a non-empty `TS_KUBE_SECRET`: tailscaled keeps its state in the secret
    /// and tsboot makes its secret calls.
    pub fn kube_state_enabled(&self) -> bool {
        self.in_kubernetes() && !self.kube_secret.is_empty()
    }

    /// The families whose forwarding sysctl must be on (kernel mode only; none in userspace).
    pub fn forwarding_families(&self) -> Families {
        let mut families = Families::default();
        if self.userspace {
            return families;
        }
        if let Some(ip) = self.dest_ip {
            if ip.is_ipv4() {
                families.ipv4 = true;
            } else {
                families.ipv6 = true;
            }
        }
        for prefix in &self.route_prefixes {
            if prefix.is_ipv4() {
                families.ipv4 = true;
            } else {
                families.ipv6 = true;
            }
        }
        // Egress forwards from the pod's interfaces to tailscale0. For a name the family is
        // only known at run time; like containerboot, IPv4 is the one switched on.
        match &self.tailnet_target {
            Some(TailnetTarget::Ip(ip)) if ip.is_ipv6() => families.ipv6 = true,
            Some(_) => families.ipv4 = true,
            None => {}
        }
        families
    }

    /// Path of the compatibility symlink of newer images (D17), unless it is the socket itself.
    pub fn socket_symlink(&self) -> Option<PathBuf> {
        let link = self.host_path("var/run/tailscale/tailscaled.sock");
        if same_path(&link, &self.socket) {
            None
        } else {
            Some(link)
        }
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| p.components().collect::<PathBuf>();
    norm(a) == norm(b)
}

/// The variables as UTF-8. A non-UTF-8 `TS_*` / `KUBERNETES_*` value is an error (it would be
/// misread otherwise); other variables that are not UTF-8 are none of tsboot's business.
fn unicode_vars(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<BTreeMap<String, String>, SettingsError> {
    let mut map = BTreeMap::new();
    for (name, value) in vars {
        let Some(name) = name.to_str().map(str::to_string) else {
            continue;
        };
        match value.into_string() {
            Ok(v) => {
                map.insert(name, v);
            }
            Err(_) if name.starts_with("TS_") || name.starts_with("KUBERNETES_") => {
                return Err(SettingsError::NotUnicode { var: name });
            }
            Err(_) => {}
        }
    }
    Ok(map)
}

/// `TS_ROUTES`: split on ',' with no trimming, each a CIDR (reference `ensureIPForwarding`).
fn parse_routes(routes: &str) -> Result<Vec<IpPrefix>, SettingsError> {
    if routes.is_empty() {
        return Ok(Vec::new());
    }
    routes
        .split(',')
        .map(|route| {
            route
                .parse::<IpPrefix>()
                .map_err(|why| SettingsError::Route {
                    value: routes.to_string(),
                    route: route.to_string(),
                    why,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;
