//! The Kubernetes client of tsboot: every call tsboot makes to the API server.
//!
//! Configuration is the pod's in-cluster service account, read under `TS_TEST_ONLY_ROOT`
//! (`var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`) plus
//! `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT_HTTPS` (IPv6 hosts bracketed, D14).
//! The server is verified against `ca.crt` only; verification is never skipped.
//!
//! Departures from the reference (README D12, D13):
//! * every request has a timeout, and transient faults (409, 429, 5xx, timeouts, connection
//!   errors) get one shared, bounded retry ([`RetryPolicy`]) used by every call;
//! * the token file is re-read for every request, so a rotated (projected) token is picked up,
//!   and a 401 is retried once with a freshly read token.
//!
//! Each call returns a typed [`KubeError`] carrying the call, the status and the secret, so the
//! callers (ts-kubestate) apply the per-call status table of the README ("Kubernetes status handling"). Writes are patches of
//! the keys tsboot owns, never a read-modify-write of the Secret.

use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use kube::client::{Body, ConfigExt as _};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use ts_common::settings::{Settings, SettingsError};

/// Directory of the service-account files, relative to `TS_TEST_ONLY_ROOT`.
pub const SERVICEACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";
/// `fieldManager` of every write, as the reference sends it.
pub const FIELD_MANAGER: &str = "tailscale-container";
/// Path of SelfSubjectAccessReview creation.
pub const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
/// Content type of a strategic-merge patch.
pub const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
/// Content type of a JSON patch (RFC 6902).
pub const JSON_PATCH: &str = "application/json-patch+json";

/// How hard one call tries before giving up (the shared bounded retry of D12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total for a transient fault (a 401 retry does not count).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_backoff: Duration,
    /// Ceiling of one wait.
    pub max_backoff: Duration,
    /// Longest wait for one answer (connect, TLS, headers and body).
    pub request_timeout: Duration,
    /// Longest time one call may take across all its attempts, so a permission check always
    /// resolves quickly even against an API server that never answers.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts 100/200/400 ms apart (0.7 s of waiting), 2 s per answer, 5 s per call.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            request_timeout: Duration::from_secs(2),
            budget: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempts count from 1).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// One kind of call, for error messages and plans: what was asked, and which RBAC verb it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `POST selfsubjectaccessreviews` asking about `verb` on the secret.
    AccessReview { verb: String },
    /// `GET` the secret.
    GetSecret,
    /// Strategic-merge `PATCH` of `stringData` keys.
    PatchSecret,
    /// JSON-patch `remove` of `/data/<key>`.
    RemoveKey { key: String },
}

impl Call {
    /// The RBAC verb and resource the call needs.
    pub fn rbac(&self) -> (&'static str, &'static str) {
        match self {
            Call::AccessReview { .. } => ("create", "selfsubjectaccessreviews"),
            Call::GetSecret => ("get", "secrets"),
            Call::PatchSecret | Call::RemoveKey { .. } => ("patch", "secrets"),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::AccessReview { verb } => {
                write!(f, "SelfSubjectAccessReview of the {verb:?} permission")
            }
            Call::GetSecret => f.write_str("GET"),
            Call::PatchSecret => f.write_str("PATCH (stringData)"),
            Call::RemoveKey { key } => write!(f, "PATCH (JSON-patch remove /data/{key})"),
        }
    }
}

/// Why a Kubernetes call (or building the client) failed. Every message names the call, the
/// status and the secret, and says what to fix. None of them contains an auth key or a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KubeError {
    /// `KUBERNETES_SERVICE_HOST` is not set: there is no API server to talk to.
    #[error("not running in Kubernetes (KUBERNETES_SERVICE_HOST is not set), so there is no API server to call")]
    NotInKubernetes,
    /// The service-account environment is invalid (e.g. a bad port): a configuration error.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A service-account file is missing, unreadable or unusable.
    #[error("reading {}: {why}; mount the pod's service account token (automountServiceAccountToken: true) or unset KUBERNETES_SERVICE_HOST", path.display())]
    ServiceAccount { path: PathBuf, why: String },
    /// `ca.crt` holds no usable certificate.
    #[error("CA certificate {}: {why}; mount the cluster's CA certificate (the service account's ca.crt)", path.display())]
    CaCert { path: PathBuf, why: String },
    /// The HTTP client could not be built.
    #[error("building the Kubernetes client for {server}: {why}")]
    Client { server: String, why: String },
    /// The API server answered with a status that is not 2xx.
    #[error("{call} on secret {secret:?} failed: {code} {}: {message}; {}", canonical(*code), advice(call, *code, secret, *attempts))]
    Status {
        call: Call,
        code: u16,
        /// The `reason` of the Kubernetes `Status` body (e.g. `Forbidden`), or the HTTP phrase.
        reason: String,
        /// The `message` of the `Status` body (or a short excerpt of a non-JSON body).
        message: String,
        secret: String,
        attempts: u32,
    },
    /// No complete answer within the request timeout, on every attempt. `after` is the time
    /// spent on the call in total.
    #[error("{call} on secret {secret:?}: no answer from the API server {server} ({attempts} attempt(s) over {}ms, each given at most the request timeout); check that the API server is reachable from the pod (network policy, KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT_HTTPS)", after.as_millis())]
    Timeout {
        call: Call,
        secret: String,
        server: String,
        after: Duration,
        attempts: u32,
    },
    /// The server's certificate is not trusted by `ca.crt` (or TLS failed otherwise).
    #[error("{call} on secret {secret:?}: TLS with the API server {server} failed: {detail}; the server's certificate must be signed by the CA in the service account's ca.crt ({SERVICEACCOUNT_DIR}/ca.crt: mount the cluster's CA certificate there; verification is never skipped)")]
    Tls {
        call: Call,
        secret: String,
        server: String,
        detail: String,
    },
    /// The connection failed (refused, reset, DNS, ...), on every attempt.
    #[error("{call} on secret {secret:?}: cannot reach the API server {server}: {detail} ({attempts} attempt(s)); check KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT_HTTPS and the pod's network")]
    Transport {
        call: Call,
        secret: String,
        server: String,
        detail: String,
        attempts: u32,
    },
    /// A 2xx answer whose body could not be understood.
    #[error("{call} on secret {secret:?}: unexpected answer from the API server: {detail}")]
    Decode {
        call: Call,
        secret: String,
        detail: String,
    },
}

fn canonical(code: u16) -> &'static str {
    StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// What to do about a status, per call.
fn advice(call: &Call, code: u16, secret: &str, attempts: u32) -> String {
    let (verb, resource) = call.rbac();
    match code {
        401 => format!(
            "the API server rejected the service account token (re-read from {SERVICEACCOUNT_DIR}/token and retried once); check that the mounted token is valid and not expired"
        ),
        403 => {
            let target = if resource == "secrets" {
                format!("secret {secret:?}")
            } else {
                format!("{resource} (authorization.k8s.io)")
            };
            format!(
                "grant the pod's service account the {verb:?} permission on {target} in the pod's namespace (a Role with that verb, bound to the service account; check your RBAC configuration)"
            )
        }
        404 => format!(
            "secret {secret:?} does not exist in the pod's namespace: create it, or set TS_KUBE_SECRET to an existing secret"
        ),
        409 | 429 | 500..=599 => format!(
            "the API server is failing or overloaded (gave up after {attempts} attempt(s)); check its health"
        ),
        422 => "the API server refused the request as invalid".to_string(),
        _ => "unexpected status from the API server".to_string(),
    }
}

impl KubeError {
    /// The HTTP status of a [`KubeError::Status`].
    pub fn status_code(&self) -> Option<u16> {
        match self {
            KubeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A fault worth retrying: 409, 429, 5xx, a timeout or a connection failure.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Status { code, .. } => is_transient_status(*code),
            KubeError::Timeout { .. } | KubeError::Transport { .. } => true,
            _ => false,
        }
    }

    /// An invalid configuration (exit status 2), as opposed to a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, KubeError::Settings(_))
    }

    /// The client could not be configured or TLS failed: retrying cannot help, and no
    /// permission answer can be trusted.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            KubeError::NotInKubernetes
                | KubeError::Settings(_)
                | KubeError::ServiceAccount { .. }
                | KubeError::CaCert { .. }
                | KubeError::Client { .. }
                | KubeError::Tls { .. }
        )
    }

    /// Records how many attempts (and, for a timeout, how long) the call took in total.
    fn finish(&mut self, n: u32, elapsed: Duration) {
        match self {
            KubeError::Timeout {
                attempts, after, ..
            } => {
                *attempts = n;
                *after = elapsed;
            }
            KubeError::Status { attempts, .. } | KubeError::Transport { attempts, .. } => {
                *attempts = n
            }
            _ => {}
        }
    }
}

fn is_transient_status(code: u16) -> bool {
    matches!(code, 409 | 429 | 500..=599)
}

/// The in-cluster configuration, read once (except the token, which is re-read per request).
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// `https://host:port`, IPv6 hosts bracketed.
    pub server: String,
    /// Whitespace-trimmed content of the `namespace` file.
    pub namespace: String,
    pub token_path: PathBuf,
    pub ca_path: PathBuf,
    /// DER certificates of `ca.crt`.
    ca_der: Vec<Vec<u8>>,
}

impl KubeConfig {
    /// Reads the service-account files under `settings.root` and the API server address.
    /// Every file is checked now, so a missing mount is reported before anything starts.
    pub fn from_settings(settings: &Settings) -> Result<Self, KubeError> {
        let service = settings
            .kube_service
            .as_ref()
            .ok_or(KubeError::NotInKubernetes)?;
        let server = service.url()?;
        let dir = settings.host_path(SERVICEACCOUNT_DIR);
        let namespace_path = dir.join("namespace");
        let namespace = read_trimmed(&namespace_path)?;
        let token_path = dir.join("token");
        read_token(&token_path)?;
        let ca_path = dir.join("ca.crt");
        let ca_der = read_ca(&ca_path)?;
        Ok(KubeConfig {
            server,
            namespace,
            token_path,
            ca_path,
            ca_der,
        })
    }
}

fn read_trimmed(path: &Path) -> Result<String, KubeError> {
    let raw = std::fs::read_to_string(path).map_err(|e| KubeError::ServiceAccount {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let value = raw.trim();
    if value.is_empty() {
        return Err(KubeError::ServiceAccount {
            path: path.to_path_buf(),
            why: "the file is empty".into(),
        });
    }
    Ok(value.to_string())
}

/// The bearer token, whitespace-trimmed (the reference trims it too; editors add newlines).
fn read_token(path: &Path) -> Result<String, KubeError> {
    let token = read_trimmed(path)?;
    // A token is an opaque header value; refuse what cannot go into one instead of failing
    // later inside the HTTP stack.
    if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err(KubeError::ServiceAccount {
            path: path.to_path_buf(),
            why: "the token contains characters that cannot be sent in an HTTP header".into(),
        });
    }
    Ok(token)
}

fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, KubeError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| KubeError::ServiceAccount {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut ders = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| KubeError::CaCert {
            path: path.to_path_buf(),
            why: format!("not valid PEM: {e}"),
        })?;
        ders.push(cert.to_vec());
    }
    if ders.is_empty() {
        return Err(KubeError::CaCert {
            path: path.to_path_buf(),
            why: "no PEM certificate found".into(),
        });
    }
    Ok(ders)
}

/// One request as it goes on the wire (the token is added when it is sent). `--explain`
/// prints these, so what is shown is what is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeRequest {
    pub call: Call,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub content_type: Option<&'static str>,
    pub body: Option<Vec<u8>>,
    /// The secret the call is about (for messages).
    pub secret: String,
}

/// `/api/v1/namespaces/{ns}/secrets/{name}`.
pub fn secret_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets/{name}")
}

impl KubeRequest {
    /// SSAR for `verb` on the secret; the body is byte-for-byte the reference's (docs/kubernetes.md §2,
    /// keys sorted as Go marshals a map).
    pub fn access_review(namespace: &str, verb: &str, secret: &str) -> Self {
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "name": secret,
                "namespace": namespace,
                "resource": "secrets",
                "verb": verb,
            }},
        });
        KubeRequest {
            call: Call::AccessReview {
                verb: verb.to_string(),
            },
            method: Method::POST,
            path: SSAR_PATH.to_string(),
            // The seed sent no Content-Type; newer containerboot sends this whenever there is a
            // body, which every API server accepts.
            content_type: Some("application/json"),
            body: Some(body.to_string().into_bytes()),
            secret: secret.to_string(),
        }
    }

    /// `GET` the secret.
    pub fn get_secret(namespace: &str, name: &str) -> Self {
        KubeRequest {
            call: Call::GetSecret,
            method: Method::GET,
            path: secret_path(namespace, name),
            content_type: None,
            body: None,
            secret: name.to_string(),
        }
    }

    /// Strategic-merge `PATCH {"stringData":{...}}`: sets only the given keys (sorted, as the
    /// reference's Go map encoding does; trailing newline like Go's `json.Encoder`).
    pub fn patch_string_data(namespace: &str, name: &str, data: &[(&str, &str)]) -> Self {
        let map: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
            .collect();
        let mut body = serde_json::json!({ "stringData": map }).to_string();
        body.push('\n');
        KubeRequest {
            call: Call::PatchSecret,
            method: Method::PATCH,
            path: format!(
                "{}?fieldManager={FIELD_MANAGER}",
                secret_path(namespace, name)
            ),
            content_type: Some(STRATEGIC_MERGE_PATCH),
            body: Some(body.into_bytes()),
            secret: name.to_string(),
        }
    }

    /// JSON patch `[{"op":"remove","path":"/data/<key>"}]`: removes one key and nothing else.
    pub fn remove_key(namespace: &str, name: &str, key: &str) -> Self {
        let pointer = format!("/data/{}", key.replace('~', "~0").replace('/', "~1"));
        let mut body = serde_json::json!([{"op": "remove", "path": pointer}]).to_string();
        body.push('\n');
        KubeRequest {
            call: Call::RemoveKey {
                key: key.to_string(),
            },
            method: Method::PATCH,
            path: format!(
                "{}?fieldManager={FIELD_MANAGER}",
                secret_path(namespace, name)
            ),
            content_type: Some(JSON_PATCH),
            body: Some(body.into_bytes()),
            secret: name.to_string(),
        }
    }

    /// One line for `--explain`: method, path, content type and body.
    pub fn describe(&self) -> String {
        let mut out = format!("{} {}", self.method, self.path);
        if let Some(ct) = self.content_type {
            out.push_str(&format!(" (Content-Type: {ct})"));
        }
        if let Some(body) = &self.body {
            out.push_str(&format!(
                " body: {}",
                String::from_utf8_lossy(body).trim_end()
            ));
        }
        out
    }
}

/// The client every tsboot Kubernetes call goes through.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
    config: KubeConfig,
    policy: RetryPolicy,
}

impl fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeClient")
            .field("config", &self.config)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// Builds the client from the in-cluster files and environment (see [`KubeConfig`]).
    /// Must be called inside a tokio runtime (the client spawns its connection worker).
    pub fn from_settings(settings: &Settings) -> Result<Self, KubeError> {
        Self::new(KubeConfig::from_settings(settings)?, RetryPolicy::default())
    }

    /// Builds the client from an explicit configuration and retry policy.
    pub fn new(config: KubeConfig, policy: RetryPolicy) -> Result<Self, KubeError> {
        let build_err = |why: String| KubeError::Client {
            server: config.server.clone(),
            why,
        };
        let uri: http::Uri = config
            .server
            .parse()
            .map_err(|e| build_err(format!("invalid URL: {e}")))?;
        let mut kc = kube::Config::new(uri);
        kc.default_namespace = config.namespace.clone();
        kc.root_cert = Some(config.ca_der.clone());
        // kube re-reads this file about once a minute, so a rotated cluster CA is followed.
        kc.root_cert_file = Some(config.ca_path.clone());
        kc.accept_invalid_certs = false;
        // Retries are ours (one policy for every call), not kube's.
        kc.default_retry = false;
        let https = kc
            .rustls_https_connector()
            .map_err(|e| build_err(e.to_string()))?;
        // A bare hyper client under kube::Client: no auth layer (the token is re-read and set
        // per request), no retry layer, and no trace layer (which would log every 5xx we are
        // about to retry as an error).
        let hyper_client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build::<_, Body>(https);
        let client = kube::Client::new(hyper_client, config.namespace.clone());
        Ok(KubeClient {
            client,
            config,
            policy,
        })
    }

    /// Replaces the retry policy (tests use short timeouts).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The namespace of the service account.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// `https://host:port` of the API server.
    pub fn server(&self) -> &str {
        &self.config.server
    }

    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// Asks whether the pod may do `verb` on the secret (SSAR); `Ok(status.allowed)`.
    pub async fn access_review(&self, verb: &str, secret: &str) -> Result<bool, KubeError> {
        let req = KubeRequest::access_review(self.namespace(), verb, secret);
        let body = self.execute(&req).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| KubeError::Decode {
                call: req.call.clone(),
                secret: secret.to_string(),
                detail: format!("SelfSubjectAccessReview is not JSON: {e}"),
            })?;
        Ok(value
            .pointer("/status/allowed")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false))
    }

    /// Fetches the secret; a 404 is `Ok(None)`.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Secret>, KubeError> {
        let req = KubeRequest::get_secret(self.namespace(), name);
        match self.execute(&req).await {
            Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| {
                // The serde message could quote a value of the secret (an auth key): only say
                // where the body went wrong.
                KubeError::Decode {
                    call: req.call.clone(),
                    secret: name.to_string(),
                    detail: format!(
                        "the secret is not a valid v1 Secret ({:?} error at line {} column {})",
                        e.classify(),
                        e.line(),
                        e.column()
                    ),
                }
            }),
            Err(e) if e.status_code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets `stringData` keys with a strategic-merge patch; other keys are untouched.
    pub async fn patch_string_data(
        &self,
        name: &str,
        data: &[(&str, &str)],
    ) -> Result<(), KubeError> {
        let req = KubeRequest::patch_string_data(self.namespace(), name, data);
        self.execute(&req).await.map(drop)
    }

    /// Removes `data.<key>` with a JSON patch. The caller decides what 404/422 mean.
    pub async fn remove_key(&self, name: &str, key: &str) -> Result<(), KubeError> {
        let req = KubeRequest::remove_key(self.namespace(), name, key);
        self.execute(&req).await.map(drop)
    }

    /// Sends `req` with the shared bounded retry; returns the body of a 2xx answer.
    pub async fn execute(&self, req: &KubeRequest) -> Result<Vec<u8>, KubeError> {
        let start = Instant::now();
        let mut attempt: u32 = 0;
        let mut retried_401 = false;
        loop {
            attempt += 1;
            // Re-read for every request (D13): projected tokens rotate under us.
            let token = read_token(&self.config.token_path)?;
            let remaining = self.policy.budget.saturating_sub(start.elapsed());
            let wait = self
                .policy
                .request_timeout
                .min(remaining)
                .max(Duration::from_millis(50));
            let mut err = match self.send_once(req, &token, wait).await {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            if err.status_code() == Some(401) && !retried_401 {
                retried_401 = true;
                tracing::info!(
                    "{} on secret {:?}: 401 Unauthorized; re-reading the service account token and retrying once",
                    req.call,
                    req.secret
                );
                attempt -= 1;
                continue;
            }
            let backoff = self.policy.backoff(attempt);
            if err.is_transient()
                && attempt < self.policy.attempts
                && start.elapsed() + backoff < self.policy.budget
            {
                tracing::warn!(
                    "{} on secret {:?}: {}; retrying in {}ms (attempt {} of {})",
                    req.call,
                    req.secret,
                    short_reason(&err),
                    backoff.as_millis(),
                    attempt + 1,
                    self.policy.attempts
                );
                tokio::time::sleep(backoff).await;
                continue;
            }
            err.finish(attempt, start.elapsed());
            return Err(err);
        }
    }

    async fn send_once(
        &self,
        req: &KubeRequest,
        token: &str,
        wait: Duration,
    ) -> Result<Vec<u8>, KubeError> {
        let http_req = self.build(req, token)?;
        let exchange = async {
            let resp = self.client.send(http_req).await?;
            let status = resp.status();
            let body = resp.into_body().collect_bytes().await?;
            Ok::<_, kube::Error>((status, body))
        };
        let result = tokio::time::timeout(wait, exchange).await;
        ts_common::status::count_kube_request(&match &result {
            Err(_) => "timeout".to_string(),
            Ok(Err(_)) => "error".to_string(),
            Ok(Ok((status, _))) => status.as_u16().to_string(),
        });
        match result {
            Err(_) => Err(KubeError::Timeout {
                call: req.call.clone(),
                secret: req.secret.clone(),
                server: self.config.server.clone(),
                after: wait,
                attempts: 1,
            }),
            Ok(Err(e)) => Err(self.transport_error(req, &e)),
            Ok(Ok((status, body))) if status.is_success() => Ok(body.to_vec()),
            Ok(Ok((status, body))) => Err(status_error(req, status, &body)),
        }
    }

    fn build(&self, req: &KubeRequest, token: &str) -> Result<Request<Body>, KubeError> {
        let uri = format!("{}{}", self.config.server, req.path);
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            KubeError::ServiceAccount {
                path: self.config.token_path.clone(),
                why: "the token contains characters that cannot be sent in an HTTP header".into(),
            }
        })?;
        // Keeps the token out of any debug output of the HTTP stack.
        auth.set_sensitive(true);
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(uri)
            .header(AUTHORIZATION, auth)
            .header(ACCEPT, "application/json");
        if let Some(ct) = req.content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        builder
            .body(Body::from(req.body.clone().unwrap_or_default()))
            .map_err(|e| KubeError::Client {
                server: self.config.server.clone(),
                why: format!("building the request for {}: {e}", req.path),
            })
    }

    fn transport_error(&self, req: &KubeRequest, err: &kube::Error) -> KubeError {
        let detail = error_chain(err);
        if let Some(tls) = find_rustls_error(err) {
            return KubeError::Tls {
                call: req.call.clone(),
                secret: req.secret.clone(),
                server: self.config.server.clone(),
                detail: tls.to_string(),
            };
        }
        KubeError::Transport {
            call: req.call.clone(),
            secret: req.secret.clone(),
            server: self.config.server.clone(),
            detail,
            attempts: 1,
        }
    }
}

fn short_reason(err: &KubeError) -> String {
    match err {
        KubeError::Status { code, .. } => format!("{code} {}", canonical(*code)),
        KubeError::Timeout { after, .. } => format!("no answer within {}ms", after.as_millis()),
        KubeError::Transport { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// Builds a [`KubeError::Status`] from a non-2xx answer, reading the Kubernetes `Status` body.
fn status_error(req: &KubeRequest, status: StatusCode, body: &[u8]) -> KubeError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let reason = field("reason").unwrap_or_else(|| canonical(status.as_u16()).to_string());
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            "(empty body)".to_string()
        } else {
            text.chars().take(200).collect()
        }
    });
    KubeError::Status {
        call: req.call.clone(),
        code: status.as_u16(),
        reason,
        message,
        secret: req.secret.clone(),
        attempts: 1,
    }
}

/// `a: b: c` over an error's source chain (io errors wrapping another error included).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Finds a rustls error in the chain. hyper-rustls and tokio-rustls wrap it in `io::Error`s,
/// whose `source()` skips the wrapped error, so an `io::Error` is followed through `get_ref`.
fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            },
            None => e.source(),
        };
    }
    None
}

/// `data.<key>` of a secret as UTF-8, if present.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(root: &Path, vars: &[(&str, &str)]) -> Settings {
        let mut all: Vec<(String, String)> =
            vec![("TS_TEST_ONLY_ROOT".to_string(), root.display().to_string())];
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_vars(all).expect("valid settings")
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tsboot-kube-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBdTCCARugAwIBAgIUQp3C5g9d3m3b6nL4FZyq2Yz1l0cwCgYIKoZIzj0EAwIw\nEDEOMAwGA1UEAwwFdGVzdDEwHhcNMjQwMTAxMDAwMDAwWhcNMzQwMTAxMDAwMDAw\nWjAQMQ4wDAYDVQQDDAV0ZXN0MTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABC0w\n-----END CERTIFICATE-----\n";

    fn write_sa(root: &Path, token: &str, ns: &str) {
        let dir = root.join(SERVICEACCOUNT_DIR);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("token"), token).expect("token");
        std::fs::write(dir.join("namespace"), ns).expect("ns");
        std::fs::write(dir.join("ca.crt"), CA).expect("ca");
    }

    const K8S: [(&str, &str); 2] = [
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
    ];

    #[test]
    fn config_trims_namespace_and_token() {
        let root = tempdir("trim");
        write_sa(&root, "  tok-123\n", "\tkube-ns \n");
        let cfg = KubeConfig::from_settings(&settings(&root, &K8S)).expect("config");
        assert_eq!(cfg.namespace, "kube-ns");
        assert_eq!(cfg.server, "https://10.0.0.1:443");
        assert_eq!(read_token(&cfg.token_path).expect("token"), "tok-123");
        assert_eq!(cfg.ca_der.len(), 1);
    }

    #[test]
    fn config_brackets_ipv6_host() {
        let root = tempdir("v6");
        write_sa(&root, "t", "default");
        let cfg = KubeConfig::from_settings(&settings(
            &root,
            &[
                ("KUBERNETES_SERVICE_HOST", "fd00::1"),
                ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
            ],
        ))
        .expect("config");
        assert_eq!(cfg.server, "https://[fd00::1]:6443");
    }

    #[test]
    fn each_missing_file_is_named() {
        for missing in ["token", "namespace", "ca.crt"] {
            let root = tempdir(&format!("missing-{}", missing.replace('.', "")));
            write_sa(&root, "t", "default");
            std::fs::remove_file(root.join(SERVICEACCOUNT_DIR).join(missing)).expect("rm");
            let err = KubeConfig::from_settings(&settings(&root, &K8S)).expect_err("missing");
            let msg = err.to_string();
            assert!(matches!(err, KubeError::ServiceAccount { .. }), "{msg}");
            assert!(msg.contains(&format!("serviceaccount/{missing}")), "{msg}");
            assert!(
                msg.contains("mount the pod's service account token"),
                "{msg}"
            );
        }
    }

    #[test]
    fn empty_token_and_bad_ca_are_refused() {
        let root = tempdir("empty");
        write_sa(&root, " \n", "default");
        let err = KubeConfig::from_settings(&settings(&root, &K8S)).expect_err("empty token");
        assert!(err.to_string().contains("empty"), "{err}");

        write_sa(&root, "t", "default");
        std::fs::write(root.join(SERVICEACCOUNT_DIR).join("ca.crt"), "not a cert").expect("ca");
        let err = KubeConfig::from_settings(&settings(&root, &K8S)).expect_err("bad ca");
        assert!(matches!(err, KubeError::CaCert { .. }), "{err}");
        assert!(err.to_string().contains("CA"), "{err}");
    }

    #[test]
    fn not_in_kubernetes_and_missing_port() {
        let root = tempdir("nok8s");
        write_sa(&root, "t", "default");
        let err = KubeConfig::from_settings(&settings(&root, &[])).expect_err("no k8s");
        assert!(matches!(err, KubeError::NotInKubernetes));
        let err =
            KubeConfig::from_settings(&settings(&root, &[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]))
                .expect_err("no port");
        assert!(err.is_usage(), "{err}");
        assert!(
            err.to_string().contains("KUBERNETES_SERVICE_PORT_HTTPS"),
            "{err}"
        );
    }

    #[test]
    fn request_bodies_match_the_reference() {
        let r = KubeRequest::access_review("default", "get", "tailscale");
        assert_eq!(
            String::from_utf8(r.body.clone().expect("body")).expect("utf8"),
            r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"name":"tailscale","namespace":"default","resource":"secrets","verb":"get"}}}"#
        );
        assert_eq!(r.path, SSAR_PATH);

        let p = KubeRequest::patch_string_data(
            "default",
            "tailscale",
            &[
                ("device_id", "myID"),
                ("device_fqdn", "test-node.test.ts.net"),
            ],
        );
        assert_eq!(
            p.path,
            "/api/v1/namespaces/default/secrets/tailscale?fieldManager=tailscale-container"
        );
        assert_eq!(p.content_type, Some(STRATEGIC_MERGE_PATCH));
        assert_eq!(
            String::from_utf8(p.body.expect("body")).expect("utf8"),
            "{\"stringData\":{\"device_fqdn\":\"test-node.test.ts.net\",\"device_id\":\"myID\"}}\n"
        );

        let d = KubeRequest::remove_key("default", "tailscale", "authkey");
        assert_eq!(d.content_type, Some(JSON_PATCH));
        assert_eq!(
            String::from_utf8(d.body.expect("body")).expect("utf8"),
            "[{\"op\":\"remove\",\"path\":\"/data/authkey\"}]\n"
        );
    }

    #[test]
    fn status_errors_name_call_status_secret_and_fix() {
        let req = KubeRequest::get_secret("default", "tailscale");
        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"tailscale\" is forbidden","reason":"Forbidden","details":{"name":"tailscale","kind":"secrets"},"code":403}"#;
        let err = status_error(&req, StatusCode::FORBIDDEN, body);
        let msg = err.to_string();
        assert_eq!(err.status_code(), Some(403));
        assert!(!err.is_transient());
        for want in [
            "GET",
            "403 Forbidden",
            "\"tailscale\"",
            "\"get\" permission",
            "RBAC",
        ] {
            assert!(msg.contains(want), "{want:?} missing in {msg}");
        }
        let err = status_error(&req, StatusCode::UNAUTHORIZED, b"not json");
        assert!(err.to_string().contains("401 Unauthorized"), "{err}");
        assert!(err.to_string().contains("token"), "{err}");
        for code in [409u16, 429, 500, 503] {
            let e = status_error(&req, StatusCode::from_u16(code).expect("code"), b"");
            assert!(e.is_transient(), "{code}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(9), Duration::from_millis(400));
        // The worst case of waiting stays well within the budget.
        let total: Duration = (1..p.attempts).map(|a| p.backoff(a)).sum();
        assert!(total < Duration::from_secs(1));
    }
}
