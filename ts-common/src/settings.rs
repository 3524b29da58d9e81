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

/// Variables of newer containerboot versions that tsboot recognises but does not implement (D16′).
pub const UNSUPPORTED_VARS: &[&str] = &[
    "TS_EGRESS_PROXIES_CONFIG_PATH",
    "TS_INGRESS_PROXIES_CONFIG_PATH",
    "TS_CERT_DOMAIN",
];
/// Variables of today's image that tailscaled reads itself: they reach it through its
/// environment, so they are supported without tsboot interpreting them (D16′).
/// (`TS_DEBUG_FIREWALL_MODE` reaches tailscaled the same way, and tsboot also reads it to put
/// its own rules in the same backend, D22.)
pub const PASSTHROUGH_VARS: &[&str] = &["TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV"];
/// Variables that carry a credential: tailscaled and the watchers never receive them (D15), and
/// their values are shown as [`REDACTED`] wherever tsboot prints a command line.
pub const SECRET_VARS: &[&str] = &[
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_CLIENT_SECRET",
    "TS_ID_TOKEN",
];
/// `tailscale up` flags whose value is a credential (an auth key, OAuth client secret or ID
/// token). A `TS_EXTRA_ARGS` word naming one is redacted like the auth key.
pub const SECRET_UP_FLAGS: &[&str] = &["authkey", "auth-key", "client-secret", "id-token"];
/// Prefix of newer containerboot's experimental variables, also unsupported (D16).
pub const UNSUPPORTED_PREFIX: &str = "TS_EXPERIMENTAL_";
/// Variables under [`UNSUPPORTED_PREFIX`] that tsboot does implement.
pub const SUPPORTED_EXPERIMENTAL_VARS: &[&str] = &["TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT"];

/// A credential: an auth key, an OAuth client secret or an ID token. Its `Debug` and `Display`
/// never show the value, so it cannot leak into a log line or an error message by accident;
/// [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The auth key is the first [`Secret`] tsboot knew; the name stays for its many users.
pub type AuthKey = Secret;

impl Secret {
    pub fn new(key: impl Into<String>) -> Self {
        Secret(key.into())
    }
    /// The value itself, for the one place that must pass it on (`tailscale up`'s argv).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
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
        let (max, family) = if addr.is_ipv4() {
            (32, "IPv4")
        } else {
            (128, "IPv6")
        };
        if len > max {
            return Err(format!("prefix length {len} too large for {family}"));
        }
        Ok(IpPrefix { addr, len })
    }
}

/// Which IP families need forwarding: those of TS_ROUTES, TS_DEST_IP and the egress target.
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
        let port =
            self.port
                .as_deref()
                .filter(|p| !p.is_empty())
                .ok_or(SettingsError::Missing {
                    var: "KUBERNETES_SERVICE_PORT_HTTPS",
                    why: "KUBERNETES_SERVICE_HOST is set, so the API server port is needed",
                })?;
        places::check_port(port)?;
        if self.host.contains(':') && !self.host.starts_with('[') {
            return Ok(format!("https://[{}]:{port}", self.host));
        }
        Ok(format!("https://{}:{port}", self.host))
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
    /// A variable and the same flag in `TS_EXTRA_ARGS`.
    #[error("{var} is set and TS_EXTRA_ARGS has --{flag} too: tailscale up refuses a flag given twice; keep one of them")]
    Twice {
        var: &'static str,
        flag: &'static str,
    },
    /// Two variables that today's containerboot refuses together (its `validate()`).
    #[error("{0}")]
    Conflict(&'static str),
}

impl SettingsError {
    /// [`SettingsError::Invalid`]: `var=value` is refused because of `why`.
    pub fn invalid(var: &'static str, value: &str, why: impl Into<String>) -> Self {
        SettingsError::Invalid {
            var,
            value: value.to_string(),
            why: why.into(),
        }
    }
}

/// One value standing in for a variable, e.g. from a command-line flag.
pub type Override = (String, String);

/// The validated configuration of every tsboot phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Resolved `TS_AUTHKEY` / `TS_AUTH_KEY`; `None` when the winner is unset or empty.
    pub auth_key: Option<AuthKey>,
    pub auth_key_source: AuthKeySource,
    /// `TS_ROUTES` verbatim when set, passed as `--advertise-routes=`; set but empty clears the
    /// routes (D18), unset passes no flag.
    pub routes: Option<String>,
    /// `TS_ROUTES` parsed (validated in every mode, D2).
    pub route_prefixes: Vec<IpPrefix>,
    /// `TS_DEST_IP` verbatim ("" = no proxy), used as `--to-destination`.
    pub dest_ip_raw: String,
    pub dest_ip: Option<IpAddr>,
    pub tailscaled_extra_args: Vec<String>,
    /// `TS_EXTRA_ARGS` words, without the `--accept-dns` ones (folded into `accept_dns`).
    pub extra_args: ExtraArgs,
    pub userspace: bool,
    pub state_dir: String,
    /// `TS_ACCEPT_DNS`, overridden by an `--accept-dns[=BOOL]` word in `TS_EXTRA_ARGS`.
    pub accept_dns: bool,
    /// `TS_HOSTNAME` ("" = no `--hostname`).
    pub hostname: String,
    /// `TS_CLIENT_ID` ("" = none): OAuth client / workload identity federation.
    pub client_id: String,
    /// `TS_CLIENT_SECRET` (`file:` passed through, the CLI reads it).
    pub client_secret: Option<Secret>,
    /// `TS_ID_TOKEN` (`file:` passed through).
    pub id_token: Option<Secret>,
    /// `TS_AUDIENCE` ("" = none).
    pub audience: String,
    /// `TS_DEBUG_ADDR_PORT` verbatim (validated as `ip:port`), tailscaled's `--debug=`.
    pub debug_addr_port: String,
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
    /// Serve configuration (ts-serve).
    pub serve: ServeSettings,
    /// The local health and metrics endpoint (D20).
    pub local: LocalEndpoints,
}

/// `TS_SERVE_CONFIG` and what goes with it (ts-serve).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeSettings {
    /// `TS_SERVE_CONFIG`: path of an `ipn.ServeConfig` JSON file; `None` when unset or empty.
    pub config: Option<PathBuf>,
    /// `TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT` (default true): advertise the config's
    /// `svc:` services once it is applied.
    pub auto_advertise: bool,
    /// `TS_TEST_ONLY_SERVE_NO_INOTIFY`: behave as if inotify were unavailable (tests of the
    /// 5 s poll).
    pub no_inotify: bool,
}

impl ServeSettings {
    /// How long ts-serve keeps running after un-advertising services at shutdown, so control
    /// can move clients to another node first: the reference's 20 s, but at most half of
    /// `TS_SHUTDOWN_GRACE` so tailscaled still gets its share. ts-init waits this long for it.
    pub fn drain(shutdown_grace: Duration) -> Duration {
        SERVICE_DRAIN.min(shutdown_grace / 2)
    }
}

/// The reference's wait after un-advertising services.
pub const SERVICE_DRAIN: Duration = Duration::from_secs(20);

/// The variables as the process sees them: set (possibly empty) or absent.
#[derive(Clone, Debug, Default)]
struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str)
    }

    /// The value unless it is unset or empty (which mean the same for most variables).
    fn non_empty(&self, var: &str) -> Option<&str> {
        self.get(var).filter(|v| !v.is_empty())
    }

    /// Reference `defaultEnv`: set (even to "") wins, else the default.
    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    /// Booleans (D1): empty or unset = default; anything unrecognised is an error.
    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, SettingsError> {
        self.non_empty(var).map_or(Ok(default), |v| {
            parse_bool(v).ok_or_else(|| SettingsError::Bool {
                var,
                value: v.into(),
            })
        })
    }

    fn duration(&self, var: &'static str, default: Duration) -> Result<Duration, SettingsError> {
        self.non_empty(var).map_or(Ok(default), |v| {
            parse_duration(v).ok_or_else(|| SettingsError::Duration {
                var,
                value: v.into(),
            })
        })
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
    let plain = v.bytes().all(|b| b.is_ascii_digit() || b == b'.') && v.matches('.').count() <= 1;
    let nanos = if plain {
        decimal_nanos(v, 1_000_000_000)?
    } else {
        go_duration_nanos(v)?
    };
    if nanos == 0 || nanos > u128::from(u64::MAX) {
        return None;
    }
    Some(Duration::from_nanos(nanos as u64))
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
        Some(other) => Err(SettingsError::invalid(
            "TS_LOG_FORMAT",
            other,
            "use text or json",
        )),
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
            vars.insert(name.clone(), value.clone());
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

        let routes = env.get("TS_ROUTES").map(str::to_string);
        let route_prefixes = parse_routes(routes.as_deref().unwrap_or(""))?;
        let (extra_args, accept_dns) =
            fold_accept_dns(fields(&env.string("TS_EXTRA_ARGS", "")), accept_dns)?;
        let login = Login::from_env(&env, auth_key.is_some())?;
        let hostname = env.string("TS_HOSTNAME", "");
        refuse_twice(
            &extra_args,
            &[
                ("TS_HOSTNAME", &["hostname"], !hostname.is_empty()),
                ("TS_ROUTES", &["advertise-routes"], routes.is_some()),
                ("TS_AUTHKEY", &["authkey", "auth-key"], auth_key.is_some()),
                ("TS_CLIENT_ID", &["client-id"], !login.client_id.is_empty()),
                (
                    "TS_CLIENT_SECRET",
                    &["client-secret"],
                    login.client_secret.is_some(),
                ),
                ("TS_ID_TOKEN", &["id-token"], login.id_token.is_some()),
                ("TS_AUDIENCE", &["audience"], !login.audience.is_empty()),
            ],
        )?;
        let debug_addr_port = env.string("TS_DEBUG_ADDR_PORT", "");
        if !debug_addr_port.is_empty() && debug_addr_port.parse::<std::net::SocketAddr>().is_err() {
            return Err(SettingsError::invalid(
                "TS_DEBUG_ADDR_PORT",
                &debug_addr_port,
                "not an IP address and port: use e.g. 0.0.0.0:9001 or [::]:9001",
            ));
        }

        let dest_ip_raw = env.string("TS_DEST_IP", "");
        let dest_ip = match dest_ip_raw.as_str() {
            "" => None,
            raw => Some(raw.parse::<IpAddr>().map_err(|_| SettingsError::DestIp {
                value: raw.to_string(),
                why: format!("ParseAddr({raw:?}): not an IP address"),
            })?),
        };
        if dest_ip.is_some() && userspace {
            return Err(SettingsError::DestIpUserspace { value: dest_ip_raw });
        }

        let tailnet_target = egress::parse_tailnet_target(
            env.non_empty("TS_TAILNET_TARGET_IP"),
            env.non_empty("TS_TAILNET_TARGET_FQDN"),
            userspace,
        )?;
        let firewall_mode = egress::parse_firewall_mode(env.non_empty("TS_DEBUG_FIREWALL_MODE"))?;

        let boot_timeout = env.duration("TS_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT)?;
        let shutdown_grace = env.duration("TS_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE)?;

        let log_format = parse_log_format(env.get("TS_LOG_FORMAT"))?;

        let ready_fd = match env.non_empty("TS_READY_FD") {
            None => None,
            Some(v) => {
                let invalid = |why| SettingsError::invalid("TS_READY_FD", v, why);
                let fd = v.parse::<i32>().ok().filter(|fd| *fd >= 0).ok_or_else(|| {
                    invalid("not a file descriptor number (a non-negative integer)")
                })?;
                if fd <= 2 {
                    return Err(invalid("0, 1 and 2 are stdin, stdout and stderr; the readiness fd must be another one"));
                }
                Some(fd)
            }
        };

        let kube_service = env
            .non_empty("KUBERNETES_SERVICE_HOST")
            .map(|host| KubeService {
                host: host.to_string(),
                port: env.get("KUBERNETES_SERVICE_PORT_HTTPS").map(str::to_string),
            });
        let kube_secret = env.string("TS_KUBE_SECRET", DEFAULT_KUBE_SECRET);
        if let Some(service) = &kube_service {
            places::check_kube(service, &kube_secret)?;
        }

        let socket = PathBuf::from(env.string("TS_SOCKET", DEFAULT_SOCKET));
        places::check_socket(&socket)?;
        places::check_hostname(&hostname)?;
        let socks5_server = env.string("TS_SOCKS5_SERVER", "");
        places::check_listen("TS_SOCKS5_SERVER", &socks5_server)?;
        let outbound_http_proxy_listen = env.string("TS_OUTBOUND_HTTP_PROXY_LISTEN", "");
        places::check_listen("TS_OUTBOUND_HTTP_PROXY_LISTEN", &outbound_http_proxy_listen)?;
        let local = LocalEndpoints::from_env(&env, &socket)?;

        let unsupported_vars = env
            .vars
            .keys()
            .filter(|k| UNSUPPORTED_VARS.contains(&k.as_str()) || k.starts_with(UNSUPPORTED_PREFIX))
            .filter(|k| !SUPPORTED_EXPERIMENTAL_VARS.contains(&k.as_str()))
            .cloned()
            .collect();

        let serve = ServeSettings {
            config: env.non_empty("TS_SERVE_CONFIG").map(PathBuf::from),
            auto_advertise: env.boolean("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT", true)?,
            no_inotify: env.boolean("TS_TEST_ONLY_SERVE_NO_INOTIFY", false)?,
        };

        Ok(Settings {
            auth_key,
            auth_key_source,
            routes,
            route_prefixes,
            dest_ip_raw,
            dest_ip,
            tailscaled_extra_args: fields(&env.string("TS_TAILSCALED_EXTRA_ARGS", "")),
            extra_args,
            userspace,
            state_dir: env.string("TS_STATE_DIR", ""),
            accept_dns,
            hostname,
            client_id: login.client_id,
            client_secret: login.client_secret,
            id_token: login.id_token,
            audience: login.audience,
            debug_addr_port,
            kube_secret,
            socks5_server,
            outbound_http_proxy_listen,
            socket,
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
            serve,
            local,
        })
    }

    /// The log format alone, for reporting a configuration error in the format the operator
    /// asked for even though the rest of the configuration was refused (text if it is invalid).
    pub fn log_format_only(overrides: &[Override]) -> LogFormat {
        let value = overrides
            .iter()
            .rev()
            .find(|(k, _)| k == "TS_LOG_FORMAT")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("TS_LOG_FORMAT").ok());
        parse_log_format(value.as_deref()).unwrap_or(LogFormat::Text)
    }

    /// A host path under `TS_TEST_ONLY_ROOT` (`rel` has no leading slash).
    pub fn host_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Login goes through an OAuth client (`TS_CLIENT_ID` or `TS_CLIENT_SECRET` set): the state
    /// secret's `authkey` is then not looked up, as in today's image.
    pub fn oauth_login(&self) -> bool {
        !self.client_id.is_empty() || self.client_secret.is_some()
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
        let routes = self.route_prefixes.iter().map(|p| p.addr);
        for ip in self.dest_ip.into_iter().chain(routes) {
            if ip.is_ipv4() {
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
        (!same_path(&link, &self.socket)).then_some(link)
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
        let Ok(name) = name.into_string() else {
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

/// `TS_EXTRA_ARGS` words for `tailscale up`. `Debug` redacts the value of a credential flag
/// (see [`SECRET_UP_FLAGS`]) so a dump of [`Settings`] cannot leak one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExtraArgs(pub Vec<String>);

impl std::ops::Deref for ExtraArgs {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl ExtraArgs {
    /// Whether a word sets the flag `name` (`-name`, `--name`, `-name=V`, `--name=V`, as Go's
    /// flag package reads them). `tailscale up` refuses a flag given twice, so tsboot leaves out
    /// its own flag when the user's words already set it.
    pub fn mentions(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|word| flag(word).is_some_and(|(n, _)| n == name))
    }
}

impl fmt::Debug for ExtraArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = classify_words(&self.0)
            .into_iter()
            .map(|w| match w {
                Word::Plain(s) => s,
                Word::Secret { prefix, .. } => format!("{prefix}{REDACTED}"),
            })
            .collect();
        f.debug_tuple("ExtraArgs").field(&shown).finish()
    }
}

/// One command-line word (of `TS_EXTRA_ARGS`, or any tsboot passes) as tsboot must show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Word {
    Plain(String),
    /// A credential: `prefix` (e.g. `--authkey=`, or "" for the value word after a bare
    /// `--authkey`) is shown, `value` never is.
    Secret {
        prefix: String,
        value: Secret,
    },
}

/// The flag name in `word` and its `=` value (`-authkey`, `--client-secret=…`), Go flag syntax.
fn flag(word: &str) -> Option<(&str, Option<&str>)> {
    let body = word.strip_prefix("--").or_else(|| word.strip_prefix('-'))?;
    Some(match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    })
}

/// Splits `words` into what may be shown and the credentials (`--authkey=K`, or `--authkey K`
/// as two words, which Go's flag package also accepts).
pub fn classify_words(words: &[String]) -> Vec<Word> {
    let secret = |prefix: &str, value: &str| Word::Secret {
        prefix: prefix.into(),
        value: Secret::new(value),
    };
    let mut next_is_secret = false;
    let mut out = Vec::with_capacity(words.len());
    for word in words {
        let flag = flag(word).filter(|(name, _)| SECRET_UP_FLAGS.contains(name));
        out.push(match (std::mem::take(&mut next_is_secret), flag) {
            (true, _) => secret("", word),
            (false, Some((_, Some(value)))) => secret(&word[..word.len() - value.len()], value),
            (false, Some((_, None))) => {
                next_is_secret = true;
                Word::Plain(word.clone())
            }
            (false, None) => Word::Plain(word.clone()),
        });
    }
    out
}

/// Today's image lets `--accept-dns` in `TS_EXTRA_ARGS` override `TS_ACCEPT_DNS`: the words
/// `--accept-dns` (true) and `--accept-dns=BOOL` are taken out of the extra words and decide the
/// single `--accept-dns=` flag (the last one wins, as it would on `up`'s command line). A value
/// that is not a boolean is refused, where today's image would ignore it.
fn fold_accept_dns(
    words: Vec<String>,
    mut accept_dns: bool,
) -> Result<(ExtraArgs, bool), SettingsError> {
    let mut kept = Vec::with_capacity(words.len());
    for word in words {
        let value = match word.split_once('=') {
            None if word == "--accept-dns" => "true",
            Some(("--accept-dns", v)) => v,
            _ => {
                kept.push(word);
                continue;
            }
        };
        accept_dns = parse_bool(value).ok_or_else(|| {
            SettingsError::invalid(
                "TS_EXTRA_ARGS",
                &word,
                "--accept-dns takes a boolean: use --accept-dns=true or --accept-dns=false",
            )
        })?;
    }
    Ok((ExtraArgs(kept), accept_dns))
}

/// `tailscale up` refuses a flag given twice: a variable tsboot turns into a flag and the same
/// flag in `TS_EXTRA_ARGS` would fail every boot (as in today's image), so it is refused here,
/// before anything starts. Each entry: the variable, its flag names, whether it is in use.
fn refuse_twice(
    extra: &ExtraArgs,
    vars: &[(&'static str, &[&'static str], bool)],
) -> Result<(), SettingsError> {
    for (var, flags, in_use) in vars {
        if let Some(flag) = flags.iter().find(|f| *in_use && extra.mentions(f)) {
            return Err(SettingsError::Twice { var, flag });
        }
    }
    Ok(())
}

/// The OAuth / workload identity variables, validated together.
struct Login {
    client_id: String,
    client_secret: Option<Secret>,
    id_token: Option<Secret>,
    audience: String,
}

impl Login {
    /// Refuses exactly the combinations today's containerboot refuses (empty = unset).
    fn from_env(env: &Env, has_auth_key: bool) -> Result<Login, SettingsError> {
        let get = |var| env.get(var).unwrap_or("").to_string();
        let (client_id, client_secret, id_token, audience) = (
            get("TS_CLIENT_ID"),
            get("TS_CLIENT_SECRET"),
            get("TS_ID_TOKEN"),
            get("TS_AUDIENCE"),
        );
        let set = |v: &String| !v.is_empty();
        let refuse = |why| Err(SettingsError::Conflict(why));
        if set(&id_token) && !set(&client_id) {
            return refuse("TS_ID_TOKEN is set but TS_CLIENT_ID is not set: workload identity federation needs the client ID the token is exchanged for; set TS_CLIENT_ID");
        }
        if set(&audience) && !set(&client_id) {
            return refuse("TS_AUDIENCE is set but TS_CLIENT_ID is not set: workload identity federation needs the client ID; set TS_CLIENT_ID");
        }
        if set(&id_token) && set(&client_secret) {
            return refuse("TS_ID_TOKEN and TS_CLIENT_SECRET cannot both be set: use an ID token (workload identity) or a client secret (OAuth), not both");
        }
        if set(&id_token) && set(&audience) {
            return refuse("TS_ID_TOKEN and TS_AUDIENCE cannot both be set: TS_AUDIENCE asks for an ID token to be obtained; unset one of them");
        }
        if set(&audience) && set(&client_secret) {
            return refuse("TS_AUDIENCE and TS_CLIENT_SECRET cannot both be set: use workload identity (TS_AUDIENCE) or an OAuth client secret, not both");
        }
        if has_auth_key
            && (set(&client_id) || set(&client_secret) || set(&id_token) || set(&audience))
        {
            return refuse("TS_AUTHKEY cannot be used with TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN, or TS_AUDIENCE: log in with an auth key or with OAuth / workload identity, not both");
        }
        let secret = |v: String| (!v.is_empty()).then(|| Secret::new(v));
        Ok(Login {
            client_id,
            client_secret: secret(client_secret),
            id_token: secret(id_token),
            audience,
        })
    }
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

mod endpoint;
mod places;
pub use endpoint::{ListenAddr, LocalEndpoints, DEFAULT_LOCAL_ADDR_PORT, STATUS_DIR_NAME};

#[cfg(test)]
mod tests;
