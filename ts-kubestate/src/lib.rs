//! ts-kubestate: every Kubernetes call tsboot makes, in two modes.
//!
//! * [`preflight`]: before tailscaled starts (the README's boot order): RBAC checks through
//!   SelfSubjectAccessReviews and the `authkey` lookup in the state secret; the result (patch
//!   permission, the key) goes to ts-init through a pipe, never through argv or a log (D15).
//! * [`watch`]: the long-lived watcher after tailscaled reached Running (the README's boot order,
//!   §7): removes `authkey` with `TS_AUTH_ONCE`, and stores `device_id` / `device_fqdn` on
//!   every identity change.
//!
//! Every call follows the status table of the README's deviation table; the calls themselves (and the shared
//! bounded retry) live in [`ts_kube`]. Both modes are written against [`KubeOps`], so
//! `--explain` runs the same code with [`explain::Explainer`], which performs the reads and
//! only prints the writes.

pub mod app;
pub mod explain;
pub mod preflight;
pub mod settle;
pub mod watch;

use k8s_openapi::api::core::v1::Secret;
use ts_kube::{KubeClient, KubeError};

/// The Kubernetes calls ts-kubestate makes. Implemented by the real client and by the
/// `--explain` printer.
// The futures need not be `Send`: ts-kubestate runs on a current-thread runtime.
#[allow(async_fn_in_trait)]
pub trait KubeOps {
    fn namespace(&self) -> &str;
    async fn access_review(&self, verb: &str, secret: &str) -> Result<bool, KubeError>;
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, KubeError>;
    async fn patch_string_data(&self, name: &str, data: &[(&str, &str)]) -> Result<(), KubeError>;
    async fn remove_key(&self, name: &str, key: &str) -> Result<(), KubeError>;
}

impl KubeOps for KubeClient {
    fn namespace(&self) -> &str {
        KubeClient::namespace(self)
    }
    async fn access_review(&self, verb: &str, secret: &str) -> Result<bool, KubeError> {
        KubeClient::access_review(self, verb, secret).await
    }
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, KubeError> {
        KubeClient::get_secret(self, name).await
    }
    async fn patch_string_data(&self, name: &str, data: &[(&str, &str)]) -> Result<(), KubeError> {
        KubeClient::patch_string_data(self, name, data).await
    }
    async fn remove_key(&self, name: &str, key: &str) -> Result<(), KubeError> {
        KubeClient::remove_key(self, name, key).await
    }
}
