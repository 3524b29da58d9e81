//! The fake tailscaled's serve-config, prefs and dns-config endpoints, with the real handlers'
//! semantics (ipn/localapi serve.go, localapi.go `servePrefs`, `serveDNSConfig`):
//!
//! * `GET /localapi/v0/serve-config`: the stored config (`null` before any was set) with an
//!   `Etag` header, a checksum of exactly the JSON returned;
//! * `POST /localapi/v0/serve-config`: a JSON object (or `null`), refused with `500
//!   {"error":"decoding config: …"}` otherwise; with a non-empty `If-Match` that is not the
//!   current ETag, `412 etag mismatch`; without a netmap, `500 {"error":"updating config:
//!   netMap is nil"}`; a port changing its kind of listener or a service mixing TUN mode with
//!   handlers, `500` with tailscaled's message; else stored, `200`;
//! * `GET /localapi/v0/prefs` (the bus's prefs plus `AdvertiseServices`) and `PATCH` with a
//!   masked prefs object: `AdvertiseServicesSet` replaces `AdvertiseServices` (a `Prefs` notify
//!   goes to every watcher, as the daemon sends one);
//! * `GET /localapi/v0/dns-config`: the netmap's `DNS` (`503 no netmap` without one).
//!
//! With `FAKE_TAILSCALED_SERVE_LOG=<file>` every POST/PATCH is recorded as one line:
//! `POST serve-config if-match=<tag or -> <status> <body as received>` and
//! `PATCH prefs <status> <body as received>`.

use super::{text, typed, FakeBody, Shared};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

pub const SERVE_CONFIG: &str = "/localapi/v0/serve-config";
pub const PREFS: &str = "/localapi/v0/prefs";
pub const DNS_CONFIG: &str = "/localapi/v0/dns-config";

/// What the serve endpoints keep.
#[derive(Debug, Default)]
pub struct ServeState {
    /// The stored config, verbatim as received (re-encoded compactly); `None` = never set.
    config: Option<Value>,
    advertise_services: Vec<String>,
}

/// The ETag of the JSON `body`: a checksum (FNV-1a, 64 bit) of its bytes, in hex. Any change
/// of the stored config changes it, as the daemon's SHA-256 does.
pub fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn json_response(code: StatusCode, body: String) -> Response<FakeBody> {
    let mut r = typed(
        Response::new(FakeBody::Full(Some(Bytes::from(body)))),
        "application/json",
    );
    *r.status_mut() = code;
    r
}

fn json_error(msg: &str) -> Response<FakeBody> {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{}\n", json!({ "error": msg })),
    )
}

/// Whether this request is for one of these endpoints.
pub fn is_ours(path: &str) -> bool {
    matches!(path, SERVE_CONFIG | PREFS | DNS_CONFIG)
}

pub(super) async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<FakeBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let if_match = req
        .headers()
        .get(http::header::IF_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
    };
    let response = match (path.as_str(), &method) {
        (SERVE_CONFIG, &Method::GET) => get_serve_config(shared),
        (SERVE_CONFIG, &Method::POST) => post_serve_config(shared, &if_match, &body),
        (SERVE_CONFIG, _) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (PREFS, &Method::GET) => json_response(StatusCode::OK, prefs_value(shared).to_string()),
        (PREFS, &Method::PATCH) => patch_prefs(shared, &body),
        (PREFS, _) => text(StatusCode::METHOD_NOT_ALLOWED, "unsupported method"),
        (DNS_CONFIG, _) => {
            let bus = shared.bus();
            if !bus.has_netmap() {
                text(StatusCode::SERVICE_UNAVAILABLE, "no netmap")
            } else {
                let dns = bus.netmap_value().get("DNS").cloned().unwrap_or(json!({}));
                json_response(StatusCode::OK, format!("{dns}\n"))
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    if let Some(log) = &shared.serve_log {
        if method == Method::POST || method == Method::PATCH {
            let name = path.rsplit('/').next().unwrap_or("");
            let tag = if method == Method::POST {
                format!(
                    " if-match={}",
                    if if_match.is_empty() { "-" } else { &if_match }
                )
            } else {
                String::new()
            };
            super::append_line(
                log,
                &format!(
                    "{method} {name}{tag} {} {}",
                    response.status().as_u16(),
                    String::from_utf8_lossy(&body)
                ),
            );
        }
    }
    response
}

fn stored_json(state: &ServeState) -> String {
    state
        .config
        .as_ref()
        .map_or_else(|| "null".to_string(), Value::to_string)
}

fn get_serve_config(shared: &Shared) -> Response<FakeBody> {
    let state = shared.serve();
    let body = stored_json(&state);
    let mut r = json_response(StatusCode::OK, body.clone());
    if let Ok(v) = http::HeaderValue::from_str(&etag(body.as_bytes())) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    r
}

fn post_serve_config(shared: &Shared, if_match: &str, body: &[u8]) -> Response<FakeBody> {
    let incoming: Value = match serde_json::from_slice(body) {
        Ok(v @ (Value::Object(_) | Value::Null)) => v,
        Ok(_) => {
            return json_error(
                "decoding config: json: cannot unmarshal into Go value of type ipn.ServeConfig",
            )
        }
        Err(e) => return json_error(&format!("decoding config: {e}")),
    };
    if !shared.bus().has_netmap() {
        return json_error("updating config: netMap is nil");
    }
    let mut state = shared.serve();
    if !if_match.is_empty() && if_match != etag(stored_json(&state).as_bytes()) {
        return text(StatusCode::PRECONDITION_FAILED, "etag mismatch");
    }
    if let Err(why) = validate_update(state.config.as_ref(), &incoming) {
        return json_error(&format!("updating config: {why}"));
    }
    state.config = Some(incoming);
    Response::new(FakeBody::Full(None))
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Map<String, Value>> {
    v.get(name).and_then(Value::as_object)
}

fn serve_type(h: &Value) -> &'static str {
    let flag = |k: &str| h.get(k).and_then(Value::as_bool).unwrap_or(false);
    let string = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("");
    if flag("HTTP") {
        "http"
    } else if flag("HTTPS") {
        "https"
    } else if !string("TerminateTLS").is_empty() {
        "tls-terminated-tcp"
    } else if !string("TCPForward").is_empty() {
        "tcp"
    } else {
        "none"
    }
}

/// tailscaled's `validateServeConfigUpdate` (the rules a background config can break).
fn validate_update(existing: Option<&Value>, incoming: &Value) -> Result<(), String> {
    let has_handlers = |s: &Value| {
        field(s, "TCP").is_some_and(|m| !m.is_empty())
            || field(s, "Web").is_some_and(|m| !m.is_empty())
    };
    let tun = |s: &Value| s.get("Tun").and_then(Value::as_bool).unwrap_or(false);
    for (name, svc) in field(incoming, "Services").into_iter().flatten() {
        if tun(svc) && has_handlers(svc) {
            return Err(format!(
                "cannot configure TUN mode in combination with TCP or web handlers for {name}"
            ));
        }
    }
    let Some(existing) = existing.filter(|e| !e.is_null()) else {
        return Ok(());
    };
    let ports = |old: Option<&Map<String, Value>>,
                 new: Option<&Map<String, Value>>,
                 suffix: &str|
     -> Result<(), String> {
        for (port, h) in new.into_iter().flatten() {
            if let Some(old_h) = old.and_then(|o| o.get(port)) {
                let (was, want) = (serve_type(old_h), serve_type(h));
                if was != want {
                    return Err(format!(
                        "want to serve {want:?}, but port {port} is already serving {was:?}{suffix}"
                    ));
                }
            }
        }
        Ok(())
    };
    ports(field(existing, "TCP"), field(incoming, "TCP"), "")?;
    for (name, svc) in field(incoming, "Services").into_iter().flatten() {
        let Some(old) = field(existing, "Services").and_then(|s| s.get(name)) else {
            continue;
        };
        ports(
            field(old, "TCP"),
            field(svc, "TCP"),
            &format!(" for {name}"),
        )?;
        if tun(svc) && has_handlers(old) {
            return Err(format!(
                "cannot turn on TUN mode with existing TCP or web handlers for {name}"
            ));
        }
        if has_handlers(svc) && tun(old) {
            return Err(format!(
                "cannot add TCP or web handlers as TUN mode is enabled for {name}"
            ));
        }
    }
    Ok(())
}

fn prefs_value(shared: &Shared) -> Value {
    let mut prefs = match &shared.bus().prefs {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let services = &shared.serve().advertise_services;
    prefs.insert(
        "AdvertiseServices".into(),
        if services.is_empty() {
            Value::Null
        } else {
            json!(services)
        },
    );
    Value::Object(prefs)
}

fn patch_prefs(shared: &Shared, body: &[u8]) -> Response<FakeBody> {
    let masked: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "json: cannot unmarshal into ipn.MaskedPrefs",
            )
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if masked.get("AdvertiseServicesSet").and_then(Value::as_bool) == Some(true) {
        let list = match masked.get("AdvertiseServices") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => match a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
            {
                Some(l) => l,
                None => return text(StatusCode::BAD_REQUEST, "AdvertiseServices: want strings"),
            },
            Some(_) => return text(StatusCode::BAD_REQUEST, "AdvertiseServices: want a list"),
        };
        shared.serve().advertise_services = list;
    }
    let prefs = prefs_value(shared);
    let _ = shared
        .bus()
        .broadcast(&json!({ "Prefs": prefs }).to_string());
    json_response(StatusCode::OK, format!("{prefs}\n"))
}

/// `serve-config` control command: the stored config (`null` when none) on one line.
pub(super) fn control_show(shared: &Shared) -> String {
    stored_json(&shared.serve())
}

/// `advertised` control command: the advertised services, space separated.
pub(super) fn control_advertised(shared: &Shared) -> String {
    shared.serve().advertise_services.join(" ")
}

/// `cert-domains a,b` control command: replaces the netmap's `DNS.CertDomains` without telling
/// watchers (a HEAD daemon sends only `SelfChange` at runtime; the domains are then read back
/// with `GET dns-config`). Empty: no domains.
pub(super) fn control_cert_domains(shared: &Shared, arg: &str) -> Result<(), String> {
    let domains: Vec<&str> = arg.split(',').filter(|d| !d.is_empty()).collect();
    let mut bus = shared.bus();
    if bus.netmap.is_none() && bus.has_netmap() {
        // A HEAD daemon's netmap, known to the fake only through its self node.
        bus.netmap = Some(bus.netmap_value());
    }
    let Some(Value::Object(nm)) = bus.netmap.as_mut() else {
        return Err("no netmap yet".into());
    };
    let dns = nm.entry("DNS").or_insert_with(|| json!({}));
    if !dns.is_object() {
        *dns = json!({});
    }
    if let Some(d) = dns.as_object_mut() {
        d.insert("CertDomains".into(), json!(domains));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_changes_with_the_config() {
        assert_eq!(etag(b"null"), etag(b"null"));
        assert_ne!(etag(b"null"), etag(b"{}"));
        assert_eq!(etag(b"").len(), 16);
    }

    #[test]
    fn update_rules_are_tailscaleds() {
        let http = json!({"TCP":{"80":{"HTTP":true}}});
        let tcp = json!({"TCP":{"80":{"TCPForward":"127.0.0.1:80"}}});
        assert!(validate_update(None, &tcp).is_ok());
        assert!(validate_update(Some(&Value::Null), &tcp).is_ok());
        let e = validate_update(Some(&http), &tcp).unwrap_err();
        assert_eq!(
            e,
            r#"want to serve "tcp", but port 80 is already serving "http""#
        );
        assert!(validate_update(Some(&http), &json!({})).is_ok());
        let bad = json!({"Services":{"svc:a":{"Tun":true,"TCP":{"1":{"TCPForward":"x:1"}}}}});
        assert!(validate_update(None, &bad).is_err());
    }
}
