//! The Kubernetes client of tsboot: every call tsboot makes to the API server
//! (docs/kubernetes.md).
//!
//! Configuration is the pod's in-cluster service account, read under `TS_TEST_ONLY_ROOT`
//! (`var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`) plus
//! `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT_HTTPS` (IPv6 hosts bracketed, D14); the
//! server is verified against `ca.crt` only.
//!
//! kube-rs builds the requests from k8s-openapi types and sends them. tsboot keeps the token
//! re-read for every request (D13), the deadline of a request and the one bounded retry (D12),
//! and reads and decodes answers itself within a size limit (docs/kubernetes.md §4 says why).
//! Each call returns a typed [`KubeError`] carrying the call, the status and the secret, so
//! ts-kubestate applies the README's "Kubernetes status handling" table. Writes are patches of
//! the keys tsboot owns, never a read-modify-write.

use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::BodyExt as _;
use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{GetParams, Patch, PatchParams};
use kube::client::{Body, ClientBuilder, ConfigExt as _};
use kube::core::request::Error as RequestError;
use kube::Resource as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use ts_common::logging::outside;
use ts_common::settings::{Settings, SettingsError};

/// Directory of the service-account files, relative to `TS_TEST_ONLY_ROOT`.
pub const SERVICEACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";
/// `fieldManager` of every write, as the reference sends it.
pub const FIELD_MANAGER: &str = "tailscale-container";
/// Longest answer read: a secret holds at most 1 MiB, 1.4 MiB in base64, plus its metadata.
pub const MAX_ANSWER: usize = 4 << 20;

/// Exponential backoff: `first`, doubling for each further step, never above `max`. The one
/// backoff of tsboot's Kubernetes calls: the per-call retry, the watcher's retry after startup
/// and the shutdown wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before step `n + 1` (steps count from 1).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// [`Backoff::delay`] cut to a random point between half and all of it, so many pods do
    /// not retry in lockstep.
    pub fn jittered(&self, n: u32) -> Duration {
        use std::hash::{BuildHasher as _, Hasher as _};
        // RandomState is seeded randomly per instance: enough entropy for jitter.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let half = self.delay(n) / 2;
        half + half.mul_f64((r % 1000) as f64 / 1000.0)
    }
}

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
    pub fn backoff(&self) -> Backoff {
        Backoff {
            first: self.first_backoff,
            max: self.max_backoff,
        }
    }
}

/// One kind of call, for error messages and plans.
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
/// status and the secret, and says what to fix. None of them contains an auth key or a token,
/// and text from the API server in them is bounded and escaped.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KubeError {
    #[error("not running in Kubernetes (KUBERNETES_SERVICE_HOST is not set), so there is no API server to call")]
    NotInKubernetes,
    /// The service-account environment is invalid (e.g. a bad port): a configuration error.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A service-account file is missing, unreadable or unusable.
    #[error("reading {}: {why}; mount the pod's service account token (automountServiceAccountToken: true) or unset KUBERNETES_SERVICE_HOST", path.display())]
    ServiceAccount { path: PathBuf, why: String },
    /// The token file could not be read when a request was due, on every attempt.
    #[error("reading the service account token {}: {why} ({attempts} attempt(s)); check that the pod's service account token stays mounted (automountServiceAccountToken: true)", path.display())]
    Token {
        path: PathBuf,
        why: String,
        attempts: u32,
    },
    #[error("CA certificate {}: {why}; mount the cluster's CA certificate (the service account's ca.crt)", path.display())]
    CaCert { path: PathBuf, why: String },
    #[error("building the Kubernetes client for {server}: {why}")]
    Client { server: String, why: String },
    /// A request could not be built from its parts (kube refused a name or a body).
    #[error("building the {call} request for secret {secret:?}: {why}; check TS_KUBE_SECRET")]
    Request {
        call: Call,
        secret: String,
        why: String,
    },
    /// The API server answered with a status that is not 2xx.
    #[error("{call} on secret {secret:?} failed: {code} {}: {message}; {}", canonical(*code), advice(call, *code, secret, *attempts))]
    Status {
        call: Call,
        code: u16,
        /// The `message` of the `Status` body (or the start of a body that is not one),
        /// bounded and escaped.
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
    match code {
        401 => format!(
            "the API server rejected the service account token (re-read from {SERVICEACCOUNT_DIR}/token and retried once); check that the mounted token is valid and not expired"
        ),
        403 => {
            // The RBAC verb and resource the call needs.
            let (verb, target) = match call {
                Call::AccessReview { .. } => ("create", "selfsubjectaccessreviews (authorization.k8s.io)".to_string()),
                Call::GetSecret => ("get", format!("secret {secret:?}")),
                Call::PatchSecret | Call::RemoveKey { .. } => ("patch", format!("secret {secret:?}")),
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

    /// A fault worth retrying: 409, 429, 5xx, a timeout, a connection failure or a token file
    /// missing for a moment (a projected token is replaced by a rename; a remount takes longer).
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Status { code, .. } => matches!(code, 409 | 429 | 500..=599),
            KubeError::Timeout { .. } | KubeError::Transport { .. } | KubeError::Token { .. } => {
                true
            }
            _ => false,
        }
    }

    /// An invalid configuration (exit status 2), as opposed to a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, KubeError::Settings(_))
    }

    /// The client could not be configured, no request could be made or TLS failed: no
    /// permission answer can be trusted.
    pub fn is_setup(&self) -> bool {
        !matches!(
            self,
            KubeError::Status { .. }
                | KubeError::Timeout { .. }
                | KubeError::Transport { .. }
                | KubeError::Decode { .. }
        )
    }

    /// The exit status of a phase that ends on this error: 2 for invalid configuration, else 1.
    pub fn exit_code(&self) -> i32 {
        if self.is_usage() {
            ts_common::exit::USAGE
        } else {
            ts_common::exit::FAILURE
        }
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
            KubeError::Status { attempts, .. }
            | KubeError::Transport { attempts, .. }
            | KubeError::Token { attempts, .. } => *attempts = n,
            _ => {}
        }
    }

    /// The fault in a few words, for a retry's log line.
    fn short(&self) -> String {
        match self {
            KubeError::Status { code, .. } => format!("{code} {}", canonical(*code)),
            KubeError::Timeout { after, .. } => {
                format!("no answer within {}ms", after.as_millis())
            }
            KubeError::Transport { detail, .. } | KubeError::Token { why: detail, .. } => {
                detail.clone()
            }
            other => other.to_string(),
        }
    }
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
        let unusable = |name: &str, why: String| KubeError::ServiceAccount {
            path: dir.join(name),
            why,
        };
        let namespace =
            trimmed(&dir.join("namespace")).map_err(|why| unusable("namespace", why))?;
        let token_path = dir.join("token");
        read_token(&token_path).map_err(|why| unusable("token", why))?;
        let ca_path = dir.join("ca.crt");
        let pem = std::fs::read(&ca_path).map_err(|e| unusable("ca.crt", e.to_string()))?;
        let ca_der = parse_ca(&pem).map_err(|why| KubeError::CaCert {
            path: ca_path.clone(),
            why,
        })?;
        Ok(KubeConfig {
            server,
            namespace,
            token_path,
            ca_path,
            ca_der,
        })
    }
}

fn trimmed(path: &Path) -> Result<String, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    match raw.trim() {
        "" => Err("the file is empty".into()),
        value => Ok(value.to_string()),
    }
}

/// The bearer token, whitespace-trimmed (the reference trims it too; editors add newlines),
/// as a header value kept out of any debug output of the HTTP stack.
fn read_token(path: &Path) -> Result<HeaderValue, String> {
    let token = trimmed(path)?;
    // A token is an opaque header value; refuse what cannot go into one here instead of
    // failing later inside the HTTP stack.
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        "the token contains characters that cannot be sent in an HTTP header".to_string()
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The DER certificates of a PEM file.
fn parse_ca(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let ders = CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if ders.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(ders)
}

/// One request as it goes on the wire, built by kube (the token and `Accept` are added when
/// it is sent). `--explain` prints these, so what is shown is what is sent.
#[derive(Clone, Debug)]
pub struct KubeRequest {
    pub call: Call,
    /// The secret the call is about (for messages).
    pub secret: String,
    /// Method, path and query (the server's address is added by the client), content type
    /// and body.
    pub http: http::Request<Vec<u8>>,
}

/// Where the secrets of `namespace` live, for kube's request builder.
fn secrets(namespace: &str) -> kube::api::Request {
    kube::api::Request::new(Secret::url_path(&(), Some(namespace)))
}

/// A patch of a secret exactly as the reference sends it: with tsboot's field manager, without
/// the empty first query pair of kube 5 (`?&fieldManager=…`, which API servers ignore), and with
/// the newline that ends the body of the reference's Go `json.Encoder`.
fn patch<P: serde::Serialize>(
    namespace: &str,
    name: &str,
    patch: &Patch<P>,
) -> Result<http::Request<Vec<u8>>, RequestError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let mut req = secrets(namespace).patch(name, &params, patch)?;
    let fixed = req.uri().to_string().replacen("?&", "?", 1);
    *req.uri_mut() = fixed
        .parse()
        .map_err(|e: http::uri::InvalidUri| RequestError::BuildRequest(e.into()))?;
    req.body_mut().push(b'\n');
    Ok(req)
}

impl KubeRequest {
    fn new(
        call: Call,
        secret: &str,
        built: Result<http::Request<Vec<u8>>, RequestError>,
    ) -> Result<Self, KubeError> {
        let secret = secret.to_string();
        match built {
            Ok(http) => Ok(KubeRequest { call, secret, http }),
            Err(e) => Err(KubeError::Request {
                call,
                secret,
                why: e.to_string(),
            }),
        }
    }

    /// SSAR for `verb` on the secret; the body is byte-for-byte the reference's
    /// (docs/kubernetes.md §2): the k8s-openapi review without its empty `metadata`.
    pub fn access_review(namespace: &str, verb: &str, secret: &str) -> Result<Self, KubeError> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    name: Some(secret.to_string()),
                    namespace: Some(namespace.to_string()),
                    resource: Some("secrets".to_string()),
                    verb: Some(verb.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let built = serde_json::to_value(&review)
            .map_err(RequestError::SerializeBody)
            .and_then(|mut v| {
                // The reference sends no empty `metadata`, and no empty query (`?`) as kube's
                // `create` would. The seed sent no Content-Type; newer containerboot sends this
                // whenever there is a body, which every API server accepts.
                if let Some(fields) = v.as_object_mut() {
                    fields.remove("metadata");
                }
                http::Request::post(SelfSubjectAccessReview::url_path(&(), None))
                    .header(CONTENT_TYPE, "application/json")
                    .body(v.to_string().into_bytes())
                    .map_err(RequestError::BuildRequest)
            });
        let call = Call::AccessReview {
            verb: verb.to_string(),
        };
        Self::new(call, secret, built)
    }

    /// `GET` the secret.
    pub fn get_secret(namespace: &str, name: &str) -> Result<Self, KubeError> {
        let built = secrets(namespace).get(name, &GetParams::default());
        Self::new(Call::GetSecret, name, built)
    }

    /// Strategic-merge `PATCH {"stringData":{...}}`: sets only the given keys (sorted, as the
    /// reference's Go map encoding does).
    pub fn patch_string_data(
        namespace: &str,
        name: &str,
        data: &[(&str, &str)],
    ) -> Result<Self, KubeError> {
        let data: std::collections::BTreeMap<&str, &str> = data.iter().copied().collect();
        let string_data = Patch::Strategic(serde_json::json!({ "stringData": data }));
        Self::new(
            Call::PatchSecret,
            name,
            patch(namespace, name, &string_data),
        )
    }

    /// JSON patch `[{"op":"remove","path":"/data/<key>"}]`: removes one key and nothing else.
    pub fn remove_key(namespace: &str, name: &str, key: &str) -> Result<Self, KubeError> {
        let remove = json_patch::PatchOperation::Remove(json_patch::RemoveOperation {
            path: PointerBuf::from_tokens(["data", key]),
        });
        let remove = Patch::Json::<()>(json_patch::Patch(vec![remove]));
        let call = Call::RemoveKey {
            key: key.to_string(),
        };
        Self::new(call, name, patch(namespace, name, &remove))
    }
}

/// One line for `--explain`: method, path, content type and body, or why the request could not
/// be built.
pub fn describe(req: &Result<KubeRequest, KubeError>) -> String {
    let http = match req {
        Ok(r) => &r.http,
        Err(e) => return format!("(no request: {e})"),
    };
    let mut out = format!("{} {}", http.method(), http.uri());
    if let Some(ct) = http.headers().get(CONTENT_TYPE) {
        out.push_str(&format!(
            " (Content-Type: {})",
            String::from_utf8_lossy(ct.as_bytes())
        ));
    }
    if !http.body().is_empty() {
        out.push_str(&format!(
            " body: {}",
            String::from_utf8_lossy(http.body()).trim_end()
        ));
    }
    out
}

/// The client every tsboot Kubernetes call goes through.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
    config: KubeConfig,
    policy: RetryPolicy,
}

impl KubeClient {
    /// Builds the client from the in-cluster files and environment (see [`KubeConfig`]).
    /// Must be called inside a tokio runtime (the client spawns its connection worker).
    pub fn from_settings(settings: &Settings) -> Result<Self, KubeError> {
        let config = KubeConfig::from_settings(settings)?;
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
        let https = kc
            .rustls_https_connector()
            .map_err(|e| build_err(e.to_string()))?;
        // kube's stack minus its auth layer (the token is re-read and set per request), retry
        // layer (one policy for every call is ours) and trace layer (which would log every 5xx
        // we are about to retry as an error).
        let hyper_client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build::<_, Body>(https);
        let client = ClientBuilder::new(hyper_client, config.namespace.clone())
            .with_layer(&kc.base_uri_layer())
            .build();
        Ok(KubeClient {
            client,
            config,
            policy: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy (tests use short timeouts).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
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
        let req = KubeRequest::access_review(self.namespace(), verb, secret)?;
        let body = self.execute(&req).await?;
        let review: SelfSubjectAccessReview =
            serde_json::from_slice(&body).map_err(|e| KubeError::Decode {
                call: req.call.clone(),
                secret: secret.to_string(),
                detail: format!("not a SelfSubjectAccessReview: {}", outside(&e.to_string())),
            })?;
        Ok(review.status.is_some_and(|s| s.allowed))
    }

    /// Fetches the secret; a 404 is `Ok(None)`.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Secret>, KubeError> {
        let req = KubeRequest::get_secret(self.namespace(), name)?;
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
        let req = KubeRequest::patch_string_data(self.namespace(), name, data)?;
        self.execute(&req).await.map(drop)
    }

    /// Removes `data.<key>` with a JSON patch. The caller decides what 404/422 mean.
    pub async fn remove_key(&self, name: &str, key: &str) -> Result<(), KubeError> {
        let req = KubeRequest::remove_key(self.namespace(), name, key)?;
        self.execute(&req).await.map(drop)
    }

    /// Sends `req` with the shared bounded retry; returns the body of a 2xx answer.
    pub async fn execute(&self, req: &KubeRequest) -> Result<Vec<u8>, KubeError> {
        let start = Instant::now();
        let mut attempt: u32 = 0;
        let mut retried_401 = false;
        loop {
            attempt += 1;
            let remaining = self.policy.budget.saturating_sub(start.elapsed());
            let wait = self
                .policy
                .request_timeout
                .min(remaining)
                .max(Duration::from_millis(50));
            // Re-read for every request (D13): projected tokens rotate under us.
            let mut err = match read_token(&self.config.token_path) {
                Ok(token) => match self.send_once(req, token, wait).await {
                    Ok(body) => return Ok(body),
                    Err(e) => e,
                },
                Err(why) => KubeError::Token {
                    path: self.config.token_path.clone(),
                    why,
                    attempts: 1,
                },
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
            let delay = self.policy.backoff().delay(attempt);
            if err.is_transient()
                && attempt < self.policy.attempts
                && start.elapsed() + delay < self.policy.budget
            {
                tracing::warn!(
                    "{} on secret {:?}: {}; retrying in {}ms (attempt {} of {})",
                    req.call,
                    req.secret,
                    err.short(),
                    delay.as_millis(),
                    attempt + 1,
                    self.policy.attempts
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            err.finish(attempt, start.elapsed());
            return Err(err);
        }
    }

    async fn send_once(
        &self,
        req: &KubeRequest,
        token: HeaderValue,
        wait: Duration,
    ) -> Result<Vec<u8>, KubeError> {
        let mut http = req.http.clone().map(Body::from);
        http.headers_mut().insert(AUTHORIZATION, token);
        http.headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        let exchange = async {
            let resp = self.client.send(http).await?;
            let status = resp.status();
            let (body, cut) = read_bounded(resp.into_body()).await?;
            Ok::<_, kube::Error>((status, body, cut))
        };
        let result = tokio::time::timeout(wait, exchange).await;
        ts_common::status::count_kube_request(&match &result {
            Err(_) => "timeout".to_string(),
            Ok(Err(_)) => "error".to_string(),
            Ok(Ok((status, ..))) => status.as_u16().to_string(),
        });
        match result {
            Err(_) => Err(KubeError::Timeout {
                call: req.call.clone(),
                secret: req.secret.clone(),
                server: self.config.server.clone(),
                after: wait,
                attempts: 1,
            }),
            Ok(Err(e)) => Err(match find_rustls_error(&e) {
                Some(tls) => KubeError::Tls {
                    call: req.call.clone(),
                    secret: req.secret.clone(),
                    server: self.config.server.clone(),
                    detail: outside(&tls.to_string()),
                },
                None => KubeError::Transport {
                    call: req.call.clone(),
                    secret: req.secret.clone(),
                    server: self.config.server.clone(),
                    detail: outside(&error_chain(&e)),
                    attempts: 1,
                },
            }),
            Ok(Ok((status, body, false))) if status.is_success() => Ok(body),
            Ok(Ok((status, _, true))) if status.is_success() => Err(KubeError::Decode {
                call: req.call.clone(),
                secret: req.secret.clone(),
                detail: format!("the answer is larger than {MAX_ANSWER} bytes"),
            }),
            Ok(Ok((status, body, _))) => Err(status_error(req, status, &body)),
        }
    }
}

/// The body up to [`MAX_ANSWER`] bytes, and whether it was cut there.
async fn read_bounded(mut body: Body) -> Result<(Vec<u8>, bool), kube::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = MAX_ANSWER - out.len();
            if data.len() > room {
                out.extend_from_slice(&data[..room]);
                return Ok((out, true));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((out, false))
}

/// Builds a [`KubeError::Status`] from a non-2xx answer and its Kubernetes `Status` body.
fn status_error(req: &KubeRequest, status: StatusCode, body: &[u8]) -> KubeError {
    let parsed: kube::core::Status = serde_json::from_slice(body).unwrap_or_default();
    let message = match (parsed.message.as_str(), body.trim_ascii()) {
        ("", []) => "(empty body)".to_string(),
        ("", text) => outside(&String::from_utf8_lossy(text)),
        (message, _) => outside(message),
    };
    KubeError::Status {
        call: req.call.clone(),
        code: status.as_u16(),
        message,
        secret: req.secret.clone(),
        attempts: 1,
    }
}

type DynError = dyn std::error::Error + 'static;

/// `a: b: c` over an error's source chain (io errors wrapping another error included).
fn error_chain(err: &DynError) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in std::iter::successors(Some(err), |e| e.source()) {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Finds a rustls error in the chain. hyper-rustls and tokio-rustls wrap it in `io::Error`s,
/// whose `source()` skips the wrapped error, so an `io::Error` is followed through `get_ref`.
fn find_rustls_error<'a>(err: &'a DynError) -> Option<&'a rustls::Error> {
    let next = |e: &&'a DynError| -> Option<&'a DynError> {
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        wrapped.map_or_else(|| e.source(), |inner| Some(inner))
    };
    std::iter::successors(Some(err), next).find_map(|e| e.downcast_ref::<rustls::Error>())
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
        assert_eq!(
            read_token(&cfg.token_path).expect("token"),
            "Bearer tok-123"
        );
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

    fn body(r: &KubeRequest) -> &str {
        std::str::from_utf8(r.http.body()).expect("utf8")
    }

    fn content_type(r: &KubeRequest) -> Option<&str> {
        r.http
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn request_bodies_match_the_reference() {
        let r = KubeRequest::access_review("default", "get", "tailscale").expect("ssar");
        assert_eq!(
            body(&r),
            r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"name":"tailscale","namespace":"default","resource":"secrets","verb":"get"}}}"#
        );
        assert_eq!(
            r.http.uri(),
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        );

        let p = KubeRequest::patch_string_data(
            "default",
            "tailscale",
            &[
                ("device_id", "myID"),
                ("device_fqdn", "test-node.test.ts.net"),
            ],
        )
        .expect("patch");
        assert_eq!(
            p.http.uri(),
            "/api/v1/namespaces/default/secrets/tailscale?fieldManager=tailscale-container"
        );
        assert_eq!(
            content_type(&p),
            Some("application/strategic-merge-patch+json")
        );
        assert_eq!(
            body(&p),
            "{\"stringData\":{\"device_fqdn\":\"test-node.test.ts.net\",\"device_id\":\"myID\"}}\n"
        );

        let d = KubeRequest::remove_key("default", "tailscale", "authkey").expect("remove");
        assert_eq!(content_type(&d), Some("application/json-patch+json"));
        assert_eq!(
            body(&d),
            "[{\"op\":\"remove\",\"path\":\"/data/authkey\"}]\n"
        );
        // A key with JSON-pointer specials is escaped, not split.
        let odd = KubeRequest::remove_key("default", "tailscale", "a/b~c").expect("remove");
        assert!(body(&odd).contains("\"/data/a~1b~0c\""), "{}", body(&odd));
        // kube refuses a request without a name instead of sending one to the collection.
        let err = KubeRequest::get_secret("default", "").expect_err("no name");
        assert!(err.is_setup() && !err.is_transient(), "{err}");
    }

    #[test]
    fn status_errors_name_call_status_secret_and_fix() {
        let req = KubeRequest::get_secret("default", "tailscale").expect("get");
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
        let p = RetryPolicy::default().backoff();
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(400));
        assert_eq!(p.delay(9), Duration::from_millis(400));
        // The worst case of waiting stays well within the budget.
        let total: Duration = (1..RetryPolicy::default().attempts)
            .map(|a| p.delay(a))
            .sum();
        assert!(total < Duration::from_secs(1));
        for _ in 0..100 {
            let j = p.jittered(3);
            assert!(
                j >= Duration::from_millis(200) && j <= Duration::from_millis(400),
                "{j:?}"
            );
        }
    }

    #[test]
    fn a_huge_status_message_is_bounded_and_escaped() {
        let req = KubeRequest::get_secret("default", "tailscale").expect("get");
        let message = format!("denied\nboot: forged{}", "x".repeat(1 << 20));
        let body = serde_json::json!({"kind": "Status", "message": message, "code": 403});
        let err = status_error(&req, StatusCode::FORBIDDEN, body.to_string().as_bytes());
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.len() < 2000, "{}", msg.len());
        assert!(msg.contains("denied\\nboot: forged"), "{msg}");
        assert!(msg.contains("\"get\" permission"), "{msg}");
    }
}
