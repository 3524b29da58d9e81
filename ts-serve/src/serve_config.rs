//! The serve configuration file: tailscaled's `ipn.ServeConfig` JSON, read the way tailscaled's
//! own (Go) decoder reads it, so a file tailscaled would accept is accepted here and a file it
//! would refuse is reported here, before anything is sent.
//!
//! Go's `encoding/json` matches field names case-insensitively (an exact match wins), ignores
//! unknown fields, takes `null` as the zero value and refuses a value of the wrong type; the
//! model below does the same. What is posted to tailscaled is the model re-encoded, as the
//! reference client re-encodes its decoded struct.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The placeholder replaced by the node's first certificate domain.
pub const CERT_DOMAIN_PLACEHOLDER: &str = "${TS_CERT_DOMAIN}";
/// What the placeholder becomes when the tailnet gives this node no certificate domain (the
/// reference's value, so a file behaves the same under both).
pub const NO_HTTPS: &str = "no-https";

/// `ipn.ServeConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServeConfig {
    #[serde(rename = "TCP", skip_serializing_if = "BTreeMap::is_empty")]
    pub tcp: BTreeMap<u16, Option<TcpPortHandler>>,
    #[serde(rename = "Web", skip_serializing_if = "BTreeMap::is_empty")]
    pub web: BTreeMap<String, Option<WebServerConfig>>,
    #[serde(rename = "Services", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Option<ServiceConfig>>,
    #[serde(rename = "AllowFunnel", skip_serializing_if = "BTreeMap::is_empty")]
    pub allow_funnel: BTreeMap<String, bool>,
    #[serde(rename = "Foreground", skip_serializing_if = "BTreeMap::is_empty")]
    pub foreground: BTreeMap<String, Option<ServeConfig>>,
}

/// `ipn.ServiceConfig`: one `svc:` service's handlers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceConfig {
    #[serde(rename = "TCP", skip_serializing_if = "BTreeMap::is_empty")]
    pub tcp: BTreeMap<u16, Option<TcpPortHandler>>,
    #[serde(rename = "Web", skip_serializing_if = "BTreeMap::is_empty")]
    pub web: BTreeMap<String, Option<WebServerConfig>>,
    #[serde(rename = "Tun", skip_serializing_if = "std::ops::Not::not")]
    pub tun: bool,
}

/// `ipn.TCPPortHandler`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpPortHandler {
    #[serde(rename = "HTTPS", skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
    #[serde(rename = "HTTP", skip_serializing_if = "std::ops::Not::not")]
    pub http: bool,
    #[serde(rename = "TCPForward", skip_serializing_if = "String::is_empty")]
    pub tcp_forward: String,
    #[serde(rename = "TerminateTLS", skip_serializing_if = "String::is_empty")]
    pub terminate_tls: String,
    #[serde(rename = "ProxyProtocol", skip_serializing_if = "is_zero")]
    pub proxy_protocol: i64,
}

/// `ipn.WebServerConfig`: handlers by mount point. `Handlers` has no `omitempty` in Go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebServerConfig {
    #[serde(rename = "Handlers")]
    pub handlers: Option<BTreeMap<String, Option<HttpHandler>>>,
}

/// `ipn.HTTPHandler`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpHandler {
    #[serde(rename = "Path", skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(rename = "Proxy", skip_serializing_if = "String::is_empty")]
    pub proxy: String,
    #[serde(rename = "Text", skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(rename = "AcceptAppCaps", skip_serializing_if = "Vec::is_empty")]
    pub accept_app_caps: Vec<String>,
    #[serde(rename = "Redirect", skip_serializing_if = "String::is_empty")]
    pub redirect: String,
}

impl TcpPortHandler {
    /// tailscaled's kind of listener for a port (a port may not change kind in place).
    pub fn serve_type(&self) -> &'static str {
        if self.http {
            "http"
        } else if self.https {
            "https"
        } else if !self.terminate_tls.is_empty() {
            "tls-terminated-tcp"
        } else if !self.tcp_forward.is_empty() {
            "tcp"
        } else {
            "none"
        }
    }
}

/// Why tailscaled would refuse to go from `current` to `next` in one step: a port that
/// changes its kind of listener, or a service switching between TUN mode and handlers. Such a
/// change needs the config unset first.
pub fn conflict(current: &ServeConfig, next: &ServeConfig) -> Option<String> {
    fn ports(
        cur: &BTreeMap<u16, Option<TcpPortHandler>>,
        new: &BTreeMap<u16, Option<TcpPortHandler>>,
        what: &str,
    ) -> Option<String> {
        new.iter().find_map(|(port, h)| {
            let old = cur.get(port)?.as_ref()?.serve_type();
            let new = h.as_ref().map_or("none", TcpPortHandler::serve_type);
            (old != new).then(|| format!("port {port}{what} changes from {old} to {new}"))
        })
    }
    if let Some(why) = ports(&current.tcp, &next.tcp, "") {
        return Some(why);
    }
    for (name, svc) in &next.services {
        let (Some(Some(old)), Some(new)) = (current.services.get(name), svc) else {
            continue;
        };
        if let Some(why) = ports(&old.tcp, &new.tcp, &format!(" of {name}")) {
            return Some(why);
        }
        let handlers = |s: &ServiceConfig| !s.tcp.is_empty() || !s.web.is_empty();
        if (new.tun && handlers(old)) || (old.tun && handlers(new)) {
            return Some(format!("{name} switches between TUN mode and handlers"));
        }
    }
    None
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Why a file's content is not a serve configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the file is empty")]
    Empty,
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not an ipn.ServeConfig: the top level is {0}, not a JSON object")]
    NotObject(&'static str),
    #[error("not an ipn.ServeConfig: {0}")]
    Shape(String),
}

/// What a struct's fields are called and what each holds, for the case-insensitive matching.
#[derive(Clone, Copy)]
enum Kind {
    Serve,
    Service,
    TcpHandler,
    Web,
    Handler,
    MapOf(&'static Kind),
    Leaf,
}

const SERVE_MAP: Kind = Kind::MapOf(&Kind::Serve);
const SERVICE_MAP: Kind = Kind::MapOf(&Kind::Service);
const TCP_MAP: Kind = Kind::MapOf(&Kind::TcpHandler);
const WEB_MAP: Kind = Kind::MapOf(&Kind::Web);
const HANDLER_MAP: Kind = Kind::MapOf(&Kind::Handler);

fn fields(kind: Kind) -> &'static [(&'static str, Kind)] {
    match kind {
        Kind::Serve => &[
            ("TCP", TCP_MAP),
            ("Web", WEB_MAP),
            ("Services", SERVICE_MAP),
            ("AllowFunnel", Kind::Leaf),
            ("Foreground", SERVE_MAP),
        ],
        Kind::Service => &[("TCP", TCP_MAP), ("Web", WEB_MAP), ("Tun", Kind::Leaf)],
        Kind::TcpHandler => &[
            ("HTTPS", Kind::Leaf),
            ("HTTP", Kind::Leaf),
            ("TCPForward", Kind::Leaf),
            ("TerminateTLS", Kind::Leaf),
            ("ProxyProtocol", Kind::Leaf),
        ],
        Kind::Web => &[("Handlers", HANDLER_MAP)],
        Kind::Handler => &[
            ("Path", Kind::Leaf),
            ("Proxy", Kind::Leaf),
            ("Text", Kind::Leaf),
            ("AcceptAppCaps", Kind::Leaf),
            ("Redirect", Kind::Leaf),
        ],
        Kind::MapOf(_) | Kind::Leaf => &[],
    }
}

/// Renames keys to Go's field names (exact match first, then ASCII case-insensitive) and drops
/// unknown ones and `null` fields (Go leaves the zero value), at every level; wrong types are
/// left for the typed decoder to refuse.
fn canonical(value: Value, kind: Kind) -> Value {
    match (value, kind) {
        (Value::Object(obj), Kind::MapOf(inner)) => Value::Object(
            obj.into_iter()
                .map(|(k, v)| (k, canonical(v, *inner)))
                .collect(),
        ),
        (Value::Object(obj), Kind::Leaf) => Value::Object(obj),
        (Value::Object(obj), kind) => {
            let known = fields(kind);
            let mut out = Map::new();
            // Exact names first, so they win over a case-folded duplicate.
            let obj: Map<String, Value> = obj.into_iter().filter(|(_, v)| !v.is_null()).collect();
            for (name, inner) in known {
                if let Some(v) = obj.get(*name) {
                    out.insert((*name).to_string(), canonical(v.clone(), *inner));
                }
            }
            for (key, v) in obj {
                if let Some((name, inner)) = known
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(&key))
                {
                    if !out.contains_key(*name) {
                        out.insert((*name).to_string(), canonical(v, *inner));
                    }
                }
            }
            Value::Object(out)
        }
        (other, _) => other,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ServeConfig {
    /// Decodes a file's content (after substitution) as tailscaled would.
    pub fn parse(bytes: &[u8]) -> Result<ServeConfig, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        match value {
            Value::Null => Ok(ServeConfig::default()),
            Value::Object(_) => serde_json::from_value(canonical(value, Kind::Serve))
                .map_err(|e| ConfigError::Shape(e.to_string())),
            other => Err(ConfigError::NotObject(type_name(&other))),
        }
    }

    /// The JSON posted to tailscaled.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain maps, strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The `svc:` services this configuration serves, in order.
    pub fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    /// Removes every HTTPS listener (with its web handlers and funnel permission) because the
    /// node cannot get a certificate; returns what was removed, for the warning.
    pub fn drop_https(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        drop_https_in(&mut self.tcp, &mut self.web, "", &mut dropped);
        let ports: BTreeSet<u16> = dropped_ports(&dropped);
        self.allow_funnel
            .retain(|hp, _| host_port(hp).is_none_or(|p| !ports.contains(&p)));
        for (name, svc) in self.services.iter_mut() {
            if let Some(svc) = svc {
                drop_https_in(&mut svc.tcp, &mut svc.web, name, &mut dropped);
            }
        }
        for (session, fg) in self.foreground.iter_mut() {
            if let Some(fg) = fg {
                for d in fg.drop_https() {
                    dropped.push(format!("foreground {session}: {d}"));
                }
            }
        }
        dropped
    }
}

/// The port of a `host:port` key (`HostPort`), if it has a numeric one.
fn host_port(hp: &str) -> Option<u16> {
    hp.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn dropped_ports(dropped: &[String]) -> BTreeSet<u16> {
    dropped
        .iter()
        .filter_map(|d| d.strip_prefix("HTTPS port "))
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn drop_https_in(
    tcp: &mut BTreeMap<u16, Option<TcpPortHandler>>,
    web: &mut BTreeMap<String, Option<WebServerConfig>>,
    service: &str,
    dropped: &mut Vec<String>,
) {
    let ports: Vec<u16> = tcp
        .iter()
        .filter(|(_, h)| h.as_ref().is_some_and(|h| h.https))
        .map(|(p, _)| *p)
        .collect();
    for port in &ports {
        tcp.remove(port);
        dropped.push(if service.is_empty() {
            format!("HTTPS port {port}")
        } else {
            format!("{service} HTTPS port {port}")
        });
    }
    web.retain(|hp, _| host_port(hp).is_none_or(|p| !ports.contains(&p)));
}

/// The file's bytes with every placeholder replaced by `cert_domain` (or [`NO_HTTPS`]).
pub fn substitute(raw: &[u8], cert_domain: Option<&str>) -> Vec<u8> {
    let with = cert_domain.unwrap_or(NO_HTTPS).as_bytes();
    let pat = CERT_DOMAIN_PLACEHOLDER.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(pat) {
            out.extend_from_slice(with);
            i += pat.len();
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// What a file asks tailscaled to serve, for this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub config: ServeConfig,
    /// HTTPS listeners left out because the node has no certificate domain.
    pub dropped_https: Vec<String>,
}

/// Substitutes, decodes and (without a certificate domain) removes HTTPS listeners.
pub fn desired(raw: &[u8], cert_domain: Option<&str>) -> Result<Desired, ConfigError> {
    let mut config = ServeConfig::parse(&substitute(raw, cert_domain))?;
    let dropped_https = if cert_domain.is_none() {
        config.drop_https()
    } else {
        Vec::new()
    };
    Ok(Desired {
        config,
        dropped_https,
    })
}
