//! ts-kubestate: every Kubernetes call tsboot makes, in the binary's modes: the [`preflight`]
//! before tailscaled starts, the device-info [`watch`]er once it is Running, and the shutdown
//! wait of [`settle`].
//!
//! Every call follows the README's status table; the calls themselves (and the shared bounded
//! retry) live in [`ts_kube`]. All modes make them through [`Kube`], so `--explain` runs the
//! same code with [`Kube::explain`], which performs the reads and only prints the writes.

pub mod app;
pub mod preflight;
pub mod settle;
pub mod watch;

use k8s_openapi::api::core::v1::Secret;
use std::cell::Cell;
use ts_common::cli::plan;
use ts_common::Settings;
use ts_kube::{describe, KubeClient, KubeError, KubeRequest};

/// Why there is no state secret to check, watch or wait for, if so.
pub fn skip_reason(settings: &Settings) -> Option<&'static str> {
    if !settings.in_kubernetes() {
        Some("not running in Kubernetes: KUBERNETES_SERVICE_HOST is not set")
    } else if settings.kube_secret.is_empty() {
        Some("TS_KUBE_SECRET is empty: the state secret is not used")
    } else {
        None
    }
}

/// One SSAR: `Some(allowed)`, or `None` when the answer could not be obtained (logged, as the
/// reference does). A TLS or service-account failure is an error: no answer can be trusted.
pub async fn check(kube: &Kube, verb: &str, secret: &str) -> Result<Option<bool>, KubeError> {
    match kube.access_review(verb, secret).await {
        Ok(allowed) => Ok(Some(allowed)),
        Err(e) if e.is_setup() => Err(e),
        Err(e) => {
            tracing::warn!("error checking {verb} permission on secret {secret}: {e}");
            Ok(None)
        }
    }
}

/// The Kubernetes calls ts-kubestate makes, through the real client. Made by
/// [`Kube::explain`], it prints every call (method, path, body) to stdout, performs the reads
/// (SSARs and GETs change nothing) and never sends a write; an answer that could not be
/// obtained is shown as such, and what depends on it is reported as undecided.
pub struct Kube {
    client: Result<KubeClient, KubeError>,
    namespace: String,
    /// With `--explain`: the number of calls printed so far.
    explain: Option<Cell<u32>>,
}

impl Kube {
    pub fn new(client: KubeClient) -> Self {
        let namespace = client.namespace().to_string();
        Kube {
            client: Ok(client),
            namespace,
            explain: None,
        }
    }

    /// `client` is the real client, or why it could not be built (then no read is made).
    pub fn explain(client: Result<KubeClient, KubeError>, namespace: String) -> Self {
        Kube {
            client,
            namespace,
            explain: Some(Cell::new(0)),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// With `--explain`, prints the call and returns true.
    fn show(&self, req: impl FnOnce(&str) -> Result<KubeRequest, KubeError>, note: &str) -> bool {
        let Some(step) = &self.explain else {
            return false;
        };
        step.set(step.get() + 1);
        let req = describe(&req(&self.namespace));
        plan(format!("  {}. {req}{note}", step.get()));
        true
    }

    /// With `--explain`, prints the answer to the call just shown.
    fn answer<T>(&self, result: &Result<T, KubeError>, ok: impl FnOnce(&T) -> String) {
        match result {
            _ if self.explain.is_none() => {}
            Ok(v) => plan(format!("     answer: {}", ok(v))),
            Err(e) if self.client.is_err() => {
                plan(format!("     answer not obtained (no client: {e})"))
            }
            Err(e) => plan(format!("     answer: error: {e}")),
        }
    }

    fn client(&self) -> Result<&KubeClient, KubeError> {
        self.client.as_ref().map_err(Clone::clone)
    }

    pub async fn access_review(&self, verb: &str, secret: &str) -> Result<bool, KubeError> {
        self.show(|ns| KubeRequest::access_review(ns, verb, secret), "");
        let result = async { self.client()?.access_review(verb, secret).await }.await;
        self.answer(&result, |allowed| format!("status.allowed={allowed}"));
        result
    }

    pub async fn get_secret(&self, name: &str) -> Result<Option<Secret>, KubeError> {
        self.show(|ns| KubeRequest::get_secret(ns, name), "");
        let result = async { self.client()?.get_secret(name).await }.await;
        // Key names only: values (an auth key) are never printed.
        self.answer(&result, |found| match found {
            Some(s) => format!(
                "secret exists, data keys: [{}]",
                s.data
                    .as_ref()
                    .map(|d| d.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ),
            None => "404: the secret does not exist".to_string(),
        });
        result
    }

    pub async fn patch_string_data(
        &self,
        name: &str,
        data: &[(&str, &str)],
    ) -> Result<(), KubeError> {
        if self.show(
            |ns| KubeRequest::patch_string_data(ns, name, data),
            NOT_SENT,
        ) {
            return Ok(());
        }
        self.client()?.patch_string_data(name, data).await
    }

    pub async fn remove_key(&self, name: &str, key: &str) -> Result<(), KubeError> {
        if self.show(|ns| KubeRequest::remove_key(ns, name, key), NOT_SENT) {
            return Ok(());
        }
        self.client()?.remove_key(name, key).await
    }
}

const NOT_SENT: &str = "  [not sent: --explain]";
