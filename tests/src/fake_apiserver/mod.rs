//! A fake kube-apiserver for tsboot's tests: real HTTPS, real Kubernetes shapes, scriptable
//! faults.
//!
//! What it does, like a real API server:
//! * HTTPS (HTTP/1.1) on an ephemeral loopback port with a CA generated per instance and a
//!   server certificate whose SANs are the IP addresses 127.0.0.1 and ::1 ([`tls`]).
//! * `Authorization: Bearer <token>` checked against the accepted tokens (changeable at run
//!   time, so a test can rotate the token); anything else is a 401 `Status`.
//! * Secrets: `GET` and `PATCH` on `/api/v1/namespaces/{ns}/secrets/{name}` with
//!   strategic-merge, merge and JSON patches ([`patch`]), answering full v1 Secret objects
//!   (`resourceVersion` increments on every change, `data` base64, `type: Opaque`).
//! * `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: `201` echoing the spec
//!   with `status.allowed` from the denied (verb, resource) rules; a denied verb is also
//!   enforced on the real request (403 `Status` with the real message).
//! * Failures are real `Status` bodies (`kind: Status`, `reason`, `message`, `details`, `code`).
//!
//! Fault injection per request ([`Fault`]): answer the next N matching requests with a status,
//! delay them, or never answer them. Every request is logged ([`RecordedRequest`]) with its
//! method, path and query, headers (Authorization and Content-Type included), body and the
//! status it got.
//!
//! In-process use (inside a tokio runtime):
//! ```text
//! let api = FakeApiServer::start(FakeConfig::default()).await?;
//! api.set_secret("default", "tailscale", &[("authkey", "tskey-key")]);
//! api.write_serviceaccount(&root, DEFAULT_TOKEN)?;      // token, ca.crt, namespace
//! let env = api.kube_env();                              // KUBERNETES_SERVICE_HOST/PORT_HTTPS
//! api.fail_next(Match::secret_patch(), 500, 2);
//! ...
//! assert_eq!(api.secret("default", "tailscale").unwrap()["device_id"], "myID");
//! ```
//! As a separate process: the `fake-apiserver` binary (see `src/bin/fake-apiserver.rs`), whose
//! state is mirrored into files of [`FakeConfig::state_dir`] after every request.

pub mod patch;
pub mod tls;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// The token the reference harness uses.
pub const DEFAULT_TOKEN: &str = "bearer_token";
/// The namespace the reference harness uses.
pub const DEFAULT_NAMESPACE: &str = "default";
/// SelfSubjectAccessReview creation path.
pub const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
/// Service-account directory relative to a test root.
pub const SERVICEACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// Start-up configuration (also the JSON config file of the `fake-apiserver` binary; every
/// field is optional there).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeConfig {
    /// Namespace written to the service-account `namespace` file. Default `default`.
    pub namespace: String,
    /// Accepted bearer tokens. Default `["bearer_token"]`.
    pub tokens: Vec<String>,
    /// Permissions the service account lacks: SSAR answers `allowed: false` and the real
    /// request gets a 403.
    pub deny: Vec<Rule>,
    /// Secrets present at start.
    pub secrets: Vec<SeedSecret>,
    /// Faults armed at start.
    pub faults: Vec<Fault>,
    /// If set, the state is written there after every request (see [`FakeApiServer`] docs).
    pub state_dir: Option<PathBuf>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            namespace: DEFAULT_NAMESPACE.to_string(),
            tokens: vec![DEFAULT_TOKEN.to_string()],
            deny: Vec::new(),
            secrets: Vec::new(),
            faults: Vec::new(),
            state_dir: None,
        }
    }
}

/// A permission the service account does not have.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Rule {
    pub verb: String,
    /// Default `secrets`.
    #[serde(default = "secrets_resource")]
    pub resource: String,
}

impl Rule {
    fn new(verb: &str, resource: &str) -> Rule {
        let (verb, resource) = (verb.to_string(), resource.to_string());
        Rule { verb, resource }
    }
}

fn secrets_resource() -> String {
    "secrets".to_string()
}

/// A secret present at start; `data` values are plain text (stored base64 like the real one).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SeedSecret {
    /// Default: the configured namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// Which requests a fault applies to; every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Match {
    /// HTTP method, e.g. `PATCH`.
    pub method: Option<String>,
    /// Substring of the path and query.
    pub path: Option<String>,
    /// For SelfSubjectAccessReviews: the verb asked about.
    pub ssar_verb: Option<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }
    pub fn method(mut self, method: &str) -> Match {
        self.method = Some(method.to_string());
        self
    }
    pub fn path(mut self, contains: &str) -> Match {
        self.path = Some(contains.to_string());
        self
    }
    /// GETs of any secret.
    pub fn secret_get() -> Match {
        Match::any().method("GET").path("/secrets/")
    }
    /// PATCHes of any secret (strategic-merge and JSON patch alike).
    pub fn secret_patch() -> Match {
        Match::any().method("PATCH").path("/secrets/")
    }
    /// SSARs asking about `verb`.
    pub fn ssar(verb: &str) -> Match {
        Match {
            method: Some("POST".into()),
            path: Some(SSAR_PATH.into()),
            ssar_verb: Some(verb.into()),
        }
    }

    fn matches(&self, method: &str, path: &str, ssar_verb: Option<&str>) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.path.as_deref().is_none_or(|p| path.contains(p))
            && self
                .ssar_verb
                .as_deref()
                .is_none_or(|v| ssar_verb == Some(v))
    }
}

/// What a fault does to a matching request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this status and a real `Status` body, without doing the request.
    Status(u16),
    /// Wait this many milliseconds, then handle the request normally.
    DelayMs(u64),
    /// Never answer (the connection stays open until the server stops).
    Hang,
    /// Answer with this status and a `Status` body carrying this `message` (a huge one, or
    /// one with newlines: what a hostile or broken API server may send).
    StatusMessage { code: u16, message: String },
}

/// A fault for the next `times` matching requests (`None`: all of them).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Fault {
    #[serde(flatten)]
    pub matcher: Match,
    pub action: FaultAction,
    #[serde(default)]
    pub times: Option<u32>,
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, e.g. `/api/v1/namespaces/default/secrets/tailscale?fieldManager=...`.
    pub path: String,
    /// Header names lowercased; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body (lossy UTF-8).
    pub body: String,
    /// The status answered; `None` while unanswered (a hang).
    pub status: Option<u16>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }
    /// The body parsed as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
    /// For a SelfSubjectAccessReview, the verb asked about.
    pub fn ssar_verb(&self) -> Option<String> {
        self.json()?
            .pointer("/spec/resourceAttributes/verb")?
            .as_str()
            .map(str::to_string)
    }
    /// `PATCH` of a secret.
    pub fn is_secret_patch(&self) -> bool {
        self.method == "PATCH" && self.path.contains("/secrets/")
    }
}

#[derive(Clone, Debug)]
struct StoredSecret {
    data: BTreeMap<String, Vec<u8>>,
    uid: String,
    resource_version: u64,
    created: String,
}

#[derive(Debug, Default)]
struct State {
    tokens: Vec<String>,
    deny: BTreeSet<Rule>,
    secrets: BTreeMap<(String, String), StoredSecret>,
    faults: Vec<Fault>,
    requests: Vec<RecordedRequest>,
    next_rv: u64,
    next_uid: u64,
    removed: Vec<(String, String)>,
}

impl State {
    fn bump_rv(&mut self) -> u64 {
        self.next_rv += 1;
        self.next_rv
    }

    fn put_secret(&mut self, ns: &str, name: &str, data: BTreeMap<String, Vec<u8>>) {
        let rv = self.bump_rv();
        let key = (ns.to_string(), name.to_string());
        if let Some(existing) = self.secrets.get_mut(&key) {
            existing.data = data;
            existing.resource_version = rv;
            return;
        }
        self.next_uid += 1;
        let uid = format!("6f1d2c3e-0000-4000-8000-{:012x}", self.next_uid);
        self.secrets.insert(
            key,
            StoredSecret {
                data,
                uid,
                resource_version: rv,
                created: rfc3339_now(),
            },
        );
    }

    /// Takes one use of the first fault matching the request.
    fn take_fault(
        &mut self,
        method: &str,
        path: &str,
        ssar_verb: Option<&str>,
    ) -> Option<FaultAction> {
        let idx = self
            .faults
            .iter()
            .position(|f| f.times != Some(0) && f.matcher.matches(method, path, ssar_verb))?;
        let fault = &mut self.faults[idx];
        let action = fault.action.clone();
        if let Some(n) = fault.times.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.faults.remove(idx);
            }
        }
        Some(action)
    }

    fn denied(&self, verb: &str, resource: &str) -> bool {
        self.deny.contains(&Rule::new(verb, resource))
    }
}

struct Shared {
    state: Mutex<State>,
    state_dir: Option<PathBuf>,
    namespace: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not poison the server for the rest of the test.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl FakeApiServer {
    /// Starts on 127.0.0.1 with an ephemeral port. Must run inside a tokio runtime.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeApiServer> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (e.g. `[::1]:0` for an IPv6 test).
    pub async fn start_on(config: FakeConfig, addr: SocketAddr) -> std::io::Result<FakeApiServer> {
        let pki = tls::Pki::generate();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut state = State {
            tokens: config.tokens.clone(),
            deny: config.deny.iter().cloned().collect(),
            faults: config.faults.clone(),
            next_rv: 1000,
            ..State::default()
        };
        for s in &config.secrets {
            let ns = s
                .namespace
                .clone()
                .unwrap_or_else(|| config.namespace.clone());
            let data = s
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect();
            state.put_secret(&ns, &s.name, data);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            state_dir: config.state_dir.clone(),
            namespace: config.namespace.clone(),
        });
        if let Some(dir) = &shared.state_dir {
            std::fs::create_dir_all(dir)?;
            dump(&shared);
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        tokio::spawn(accept_loop(listener, acceptor, shared.clone(), shutdown_rx));
        Ok(FakeApiServer {
            addr,
            ca_pem: pki.ca_pem,
            shared,
            shutdown,
        })
    }

    /// The address as `KUBERNETES_SERVICE_HOST` carries it (no brackets for IPv6).
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://host:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The namespace of the configuration.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT_HTTPS` for this server.
    pub fn kube_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), self.host()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
                self.port().to_string(),
            ),
        ]
    }

    /// Writes `token`, `ca.crt` and `namespace` under `root/var/run/secrets/...`.
    pub fn write_serviceaccount(&self, root: &Path, token: &str) -> std::io::Result<()> {
        write_serviceaccount(root, token, &self.ca_pem, &self.shared.namespace)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
        dump(&self.shared);
    }

    /// The secret's `data`, decoded (lossy UTF-8); `None` if it does not exist.
    pub fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let st = self.shared.lock();
        st.secrets
            .get(&(ns.to_string(), name.to_string()))
            .map(|s| decoded(&s.data))
    }

    /// Creates the secret or replaces its data (values in plain text).
    pub fn set_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        self.shared.lock().put_secret(ns, name, data);
        dump(&self.shared);
    }

    pub fn delete_secret(&self, ns: &str, name: &str) {
        {
            let mut st = self.shared.lock();
            st.secrets.remove(&(ns.to_string(), name.to_string()));
            st.removed.push((ns.to_string(), name.to_string()));
        }
        dump(&self.shared);
    }

    /// Replaces the accepted bearer tokens (rotation).
    pub fn set_tokens(&self, tokens: &[&str]) {
        self.shared.lock().tokens = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Takes `verb` on `resource` away from the service account.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.shared.lock().deny.insert(Rule::new(verb, resource));
    }

    /// Gives `verb` on `resource` back.
    pub fn allow(&self, verb: &str, resource: &str) {
        self.shared.lock().deny.remove(&Rule::new(verb, resource));
    }

    /// Allows exactly `verbs` on secrets (every other common verb is denied).
    pub fn allow_verbs(&self, verbs: &[&str]) {
        let mut st = self.shared.lock();
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            let rule = Rule::new(verb, "secrets");
            if verbs.contains(&verb) {
                st.deny.remove(&rule);
            } else {
                st.deny.insert(rule);
            }
        }
    }

    /// Arms a fault.
    pub fn add_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    /// Answers the next `times` matching requests with `status` (a real `Status` body).
    pub fn fail_next(&self, matcher: Match, status: u16, times: u32) {
        self.arm(matcher, FaultAction::Status(status), times);
    }

    /// Answers the next `times` matching requests with `status` and a `Status` body whose
    /// `message` is `message`.
    pub fn fail_next_with(&self, matcher: Match, status: u16, message: &str, times: u32) {
        let message = message.to_string();
        self.arm(
            matcher,
            FaultAction::StatusMessage {
                code: status,
                message,
            },
            times,
        );
    }

    /// Delays the next `times` matching requests by `delay`, then serves them.
    pub fn delay_next(&self, matcher: Match, delay: Duration, times: u32) {
        let ms = delay.as_millis() as u64;
        self.arm(matcher, FaultAction::DelayMs(ms), times);
    }

    /// Never answers the next `times` matching requests.
    pub fn hang_next(&self, matcher: Match, times: u32) {
        self.arm(matcher, FaultAction::Hang, times);
    }

    fn arm(&self, matcher: Match, action: FaultAction, times: u32) {
        let times = Some(times);
        self.add_fault(Fault {
            matcher,
            action,
            times,
        });
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }
}

/// Writes a service account (`token`, `ca.crt`, `namespace`) under `root`.
pub fn write_serviceaccount(
    root: &Path,
    token: &str,
    ca_pem: &str,
    namespace: &str,
) -> std::io::Result<()> {
    let dir = root.join(SERVICEACCOUNT_DIR);
    std::fs::create_dir_all(&dir)?;
    write_atomic(&dir.join("token"), token.as_bytes())?;
    write_atomic(&dir.join("ca.crt"), ca_pem.as_bytes())?;
    write_atomic(&dir.join("namespace"), namespace.as_bytes())
}

/// Replaces `path` in one step, so a concurrent reader sees the old or the new content.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn decoded(data: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn secret_json(ns: &str, name: &str, s: &StoredSecret) -> Value {
    let mut obj = json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": s.uid,
            "resourceVersion": s.resource_version.to_string(),
            "creationTimestamp": s.created,
        },
        "type": "Opaque",
    });
    if let Some(data) = patch::data_json(&s.data) {
        obj["data"] = data;
    }
    obj
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            // A client that does not trust our CA aborts the handshake: nothing to serve.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc_shutdown = conn_shutdown.clone();
            let service = hyper::service::service_fn(move |req| {
                handle(shared.clone(), req, svc_shutdown.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A Kubernetes `Status` failure body.
pub fn status_body(code: u16, message: &str, details: Option<(&str, &str)>) -> Value {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    });
    if let Some((name, kind)) = details {
        body["details"] = json!({"name": name, "kind": kind});
    }
    body
}

struct Answer {
    code: u16,
    body: Value,
}

impl Answer {
    fn ok(code: u16, body: Value) -> Answer {
        Answer { code, body }
    }
    fn fail(code: u16, message: &str, details: Option<(&str, &str)>) -> Answer {
        Answer {
            code,
            body: status_body(code, message, details),
        }
    }
    fn not_allowed(details: Option<(&str, &str)>) -> Answer {
        let message = "the server does not allow this method on the requested resource";
        Answer::fail(405, message, details)
    }
}

/// The message a real server gives for an injected status on this request.
fn injected(code: u16, method: &str, target: &Target, message: Option<&str>) -> Answer {
    let (name, kind) = match target {
        Target::Secret { name, .. } => (name.as_str(), "secrets"),
        Target::Secrets { .. } => ("", "secrets"),
        Target::Ssar => ("", "selfsubjectaccessreviews"),
        Target::Other => ("", ""),
    };
    let details = (!kind.is_empty()).then_some((name, kind));
    let default = match code {
        401 => "Unauthorized".to_string(),
        403 => forbidden_message(verb_of(method), kind, name, "default"),
        404 => format!("{kind} {name:?} not found"),
        409 => format!(
            "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
        ),
        422 => format!("{kind} {name:?} is invalid: injected fault"),
        429 => "Too many requests, please try again later.".to_string(),
        503 => "the server is currently unable to handle the request".to_string(),
        504 => "the server was unable to return a response in the time allotted".to_string(),
        _ => "Internal error occurred: injected fault".to_string(),
    };
    Answer::fail(code, message.unwrap_or(&default), details)
}

fn forbidden_message(verb: &str, resource: &str, name: &str, ns: &str) -> String {
    let (group, what) = if resource == "selfsubjectaccessreviews" {
        ("authorization.k8s.io", resource.to_string())
    } else if name.is_empty() {
        ("", resource.to_string())
    } else {
        ("", format!("{resource} {name:?}"))
    };
    format!(
        "{what} is forbidden: User \"system:serviceaccount:{ns}:tailscale\" cannot {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{ns}\""
    )
}

fn verb_of(method: &str) -> &'static str {
    match method {
        "GET" => "get",
        "PATCH" => "patch",
        "PUT" => "update",
        "POST" => "create",
        "DELETE" => "delete",
        _ => "unknown",
    }
}

enum Target {
    Secret {
        ns: String,
        name: String,
    },
    /// The namespace's secrets collection: `POST` creates one (tailscaled's `kube:` store does
    /// when its state secret is missing).
    Secrets {
        ns: String,
    },
    Ssar,
    Other,
}

fn target_of(path: &str) -> Target {
    let path = path.split('?').next().unwrap_or("");
    if path == SSAR_PATH {
        return Target::Ssar;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "secrets", name] if !ns.is_empty() && !name.is_empty() => {
            Target::Secret {
                ns: ns.to_string(),
                name: name.to_string(),
            }
        }
        ["api", "v1", "namespaces", ns, "secrets"] if !ns.is_empty() => {
            Target::Secrets { ns: ns.to_string() }
        }
        _ => Target::Other,
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let recorded = RecordedRequest {
        method: method.clone(),
        path: path.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        status: None,
    };
    let ssar_verb = recorded.ssar_verb();
    let target = target_of(&path);
    let (idx, fault) = {
        let mut st = shared.lock();
        st.requests.push(recorded.clone());
        let fault = st.take_fault(&method, &path, ssar_verb.as_deref());
        (st.requests.len() - 1, fault)
    };
    let answer = match fault {
        Some(FaultAction::Hang) => {
            dump(&shared);
            // Never answer; give up only when the server stops (the connection then closes).
            let _ = shutdown.wait_for(|stop| *stop).await;
            return Ok(respond(Answer::fail(503, "server shutting down", None)));
        }
        Some(FaultAction::Status(code)) => injected(code, &method, &target, None),
        Some(FaultAction::StatusMessage { code, message }) => {
            injected(code, &method, &target, Some(&message))
        }
        Some(FaultAction::DelayMs(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            serve(&shared, &recorded, &target, &body)
        }
        None => serve(&shared, &recorded, &target, &body),
    };
    {
        let mut st = shared.lock();
        // Another test thread may have cleared the log meanwhile.
        if let Some(r) = st.requests.get_mut(idx) {
            if r.path == path && r.status.is_none() {
                r.status = Some(answer.code);
            }
        }
    }
    dump(&shared);
    Ok(respond(answer))
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *resp.status_mut() =
        StatusCode::from_u16(answer.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Handles an authenticated, fault-free request like a real API server.
fn serve(shared: &Shared, req: &RecordedRequest, target: &Target, body: &[u8]) -> Answer {
    let mut st = shared.lock();
    let authorized = req
        .authorization()
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| st.tokens.iter().any(|ok| ok == t));
    if !authorized {
        return Answer::fail(401, "Unauthorized", None);
    }
    match target {
        Target::Ssar => {
            if req.method != "POST" {
                return Answer::not_allowed(None);
            }
            if st.denied("create", "selfsubjectaccessreviews") {
                let msg =
                    forbidden_message("create", "selfsubjectaccessreviews", "", &shared.namespace);
                return Answer::fail(403, &msg, Some(("", "selfsubjectaccessreviews")));
            }
            let Some(review) = req.json() else {
                return Answer::fail(
                    400,
                    "error decoding SelfSubjectAccessReview: not JSON",
                    None,
                );
            };
            let spec = review.get("spec").cloned().unwrap_or(Value::Null);
            let attr = spec.get("resourceAttributes");
            let field = |k: &str| {
                attr.and_then(|a| a.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let allowed = !st.denied(&field("verb"), &field("resource"));
            Answer::ok(
                201,
                json!({
                    "kind": "SelfSubjectAccessReview",
                    "apiVersion": "authorization.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "spec": spec,
                    "status": {"allowed": allowed},
                }),
            )
        }
        Target::Secret { ns, name } => {
            let verb = verb_of(&req.method);
            if st.denied(verb, "secrets") {
                let msg = forbidden_message(verb, "secrets", name, ns);
                return Answer::fail(403, &msg, Some((name, "secrets")));
            }
            let key = (ns.clone(), name.clone());
            let not_found = || {
                Answer::fail(
                    404,
                    &format!("secrets {name:?} not found"),
                    Some((name, "secrets")),
                )
            };
            match req.method.as_str() {
                "GET" => match st.secrets.get(&key) {
                    Some(s) => Answer::ok(200, secret_json(ns, name, s)),
                    None => not_found(),
                },
                "PATCH" => {
                    let Some(existing) = st.secrets.get(&key).cloned() else {
                        return not_found();
                    };
                    let ct = req
                        .content_type()
                        .unwrap_or("")
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let result = match ct.as_str() {
                        "application/strategic-merge-patch+json"
                        | "application/merge-patch+json" => {
                            patch::merge_patch(name, &existing.data, body)
                        }
                        "application/json-patch+json" => {
                            patch::json_patch(name, &secret_json(ns, name, &existing), body)
                        }
                        _ => {
                            return Answer::fail(
                                415,
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                                None,
                            )
                        }
                    };
                    match result {
                        Ok(data) => {
                            if data != existing.data {
                                let rv = st.bump_rv();
                                if let Some(s) = st.secrets.get_mut(&key) {
                                    s.data = data;
                                    s.resource_version = rv;
                                }
                            }
                            match st.secrets.get(&key) {
                                Some(s) => Answer::ok(200, secret_json(ns, name, s)),
                                None => not_found(),
                            }
                        }
                        Err(e) => Answer::fail(e.code, &e.message, Some((name, "secrets"))),
                    }
                }
                _ => Answer::not_allowed(Some((name, "secrets"))),
            }
        }
        Target::Secrets { ns } => create_secret(&mut st, req, ns),
        Target::Other => Answer::fail(
            404,
            "the server could not find the requested resource",
            None,
        ),
    }
}

/// `POST /api/v1/namespaces/NS/secrets`: a new secret from the body's `metadata.name` and
/// `data` (base64) / `stringData`; 409 when it exists, 403 when create is denied.
fn create_secret(st: &mut State, req: &RecordedRequest, ns: &str) -> Answer {
    if req.method != "POST" {
        return Answer::not_allowed(None);
    }
    let Some(body) = req.json() else {
        return Answer::fail(400, "error decoding Secret: not JSON", None);
    };
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if st.denied("create", "secrets") {
        let msg = forbidden_message("create", "secrets", "", ns);
        return Answer::fail(403, &msg, Some(("", "secrets")));
    }
    if name.is_empty() {
        return Answer::fail(
            422,
            "Secret \"\" is invalid: metadata.name: Required value",
            None,
        );
    }
    let key = (ns.to_string(), name.clone());
    if st.secrets.contains_key(&key) {
        let msg = format!("secrets {name:?} already exists");
        return Answer::fail(409, &msg, Some((&name, "secrets")));
    }
    let mut data = BTreeMap::new();
    for (field, decode) in [("data", true), ("stringData", false)] {
        for (k, v) in body
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let text = v.as_str().unwrap_or("");
            let bytes = if decode {
                match patch::unb64(text) {
                    Some(b) => b,
                    None => {
                        let msg = format!("Secret {name:?} is invalid: data[{k}]: illegal base64");
                        return Answer::fail(422, &msg, Some((&name, "secrets")));
                    }
                }
            } else {
                text.as_bytes().to_vec()
            };
            data.insert(k.clone(), bytes);
        }
    }
    st.put_secret(ns, &name, data);
    match st.secrets.get(&key) {
        Some(created) => Answer::ok(201, secret_json(ns, &name, created)),
        None => Answer::fail(500, "Internal error occurred: secret vanished", None),
    }
}

/// Mirrors the state into `state_dir`: `requests.log` (one JSON [`RecordedRequest`] per line),
/// `secret-<ns>-<name>.json` (the object as a GET returns it) and
/// `secret-<ns>-<name>.data.json` (its `data` decoded to plain strings).
fn dump(shared: &Shared) {
    let Some(dir) = &shared.state_dir else { return };
    let (requests, secrets, removed) = {
        let mut st = shared.lock();
        let requests: Vec<String> = st
            .requests
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect();
        let secrets: Vec<(String, Value, BTreeMap<String, String>)> = st
            .secrets
            .iter()
            .map(|((ns, name), s)| {
                (
                    format!("secret-{ns}-{name}"),
                    secret_json(ns, name, s),
                    decoded(&s.data),
                )
            })
            .collect();
        (requests, secrets, std::mem::take(&mut st.removed))
    };
    let mut log = requests.join("\n");
    if !log.is_empty() {
        log.push('\n');
    }
    // Best effort: a failed write shows up as a test waiting for a file, with its deadline.
    let _ = write_atomic(&dir.join("requests.log"), log.as_bytes());
    for (base, object, data) in secrets {
        let _ = write_atomic(
            &dir.join(format!("{base}.json")),
            object.to_string().as_bytes(),
        );
        let _ = write_atomic(
            &dir.join(format!("{base}.data.json")),
            json!(data).to_string().as_bytes(),
        );
    }
    for (ns, name) in removed {
        let _ = std::fs::remove_file(dir.join(format!("secret-{ns}-{name}.json")));
        let _ = std::fs::remove_file(dir.join(format!("secret-{ns}-{name}.data.json")));
    }
}

/// Current UTC time as RFC 3339 (`2024-01-02T03:04:05Z`).
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day, h, m, s) = ts_common::logging::civil_time(secs);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}
