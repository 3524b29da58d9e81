//! `--explain`: the same preflight and watcher code, run against a [`KubeOps`] that prints
//! every call (method, path, body) to stdout, performs the reads (SSARs and GETs change
//! nothing) and never sends a write. An answer that could not be obtained is shown as such, and
//! what depends on it is reported as undecided.

use crate::KubeOps;
use k8s_openapi::api::core::v1::Secret;
use std::cell::Cell;
use ts_common::cli::plan;
use ts_kube::{describe, KubeClient, KubeError, KubeRequest};

/// Prints calls; forwards reads to the real client when there is one.
pub struct Explainer {
    client: Result<KubeClient, KubeError>,
    namespace: String,
    step: Cell<u32>,
}

impl Explainer {
    /// `client` is the real client, or why it could not be built (then no read is made).
    pub fn new(client: Result<KubeClient, KubeError>, namespace: String) -> Self {
        Explainer {
            client,
            namespace,
            step: Cell::new(0),
        }
    }

    fn show(&self, req: &Result<KubeRequest, KubeError>, note: &str) {
        let n = self.step.get() + 1;
        self.step.set(n);
        plan(format!("  {n}. {}{note}", describe(req)));
    }

    fn answer<T>(&self, result: &Result<T, KubeError>, ok: impl FnOnce(&T) -> String) {
        match result {
            Ok(v) => plan(format!("     answer: {}", ok(v))),
            Err(e) if self.client.is_err() => {
                plan(format!("     answer not obtained (no client: {e})"))
            }
            Err(e) => plan(format!("     answer: error: {e}")),
        }
    }
}

impl KubeOps for Explainer {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn access_review(&self, verb: &str, secret: &str) -> Result<bool, KubeError> {
        self.show(
            &KubeRequest::access_review(&self.namespace, verb, secret),
            "",
        );
        let result = match &self.client {
            Ok(c) => c.access_review(verb, secret).await,
            Err(e) => Err(e.clone()),
        };
        self.answer(&result, |allowed| format!("status.allowed={allowed}"));
        result
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, KubeError> {
        self.show(&KubeRequest::get_secret(&self.namespace, name), "");
        let result = match &self.client {
            Ok(c) => c.get_secret(name).await,
            Err(e) => Err(e.clone()),
        };
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

    async fn patch_string_data(&self, name: &str, data: &[(&str, &str)]) -> Result<(), KubeError> {
        self.show(
            &KubeRequest::patch_string_data(&self.namespace, name, data),
            "  [not sent: --explain]",
        );
        Ok(())
    }

    async fn remove_key(&self, name: &str, key: &str) -> Result<(), KubeError> {
        self.show(
            &KubeRequest::remove_key(&self.namespace, name, key),
            "  [not sent: --explain]",
        );
        Ok(())
    }
}
