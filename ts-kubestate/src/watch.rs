//! The device-info watcher (the README's boot order; docs/kubernetes.md §3), started by
//! ts-init once tailscaled is Running.
//!
//! It follows the IPN bus (re-watching when a stream ends, exiting when tailscaled is gone) in a
//! reader task of its own ([`ts_localapi::node`]): the writes take the latest state when they are
//! ready for it, so a flapping identity is coalesced and the guard of the Running state never
//! waits for a write that keeps failing. On the first Running state, with `TS_AUTH_ONCE` it removes `authkey` (JSON patch; 404 and
//! 422 mean "already gone"). On every change of the node's (StableID, Name) it checks the
//! secret with a GET and then writes `device_fqdn` and `device_id` with a strategic-merge
//! `stringData` patch: only those keys, never a read-modify-write, so tailscaled's own keys
//! are untouched. The change detector is updated before the write, as the reference does, so a
//! skipped write waits for the next change.
//!
//! Status handling per the README's deviation table: the GET skips the write on 4xx (logged); the PATCH skips
//! on 404 and is fatal on 401/403/422. Transient faults get the shared bounded retry; a failure
//! before the first successful write is fatal, after it (after startup) the write is retried
//! indefinitely with capped exponential backoff and jitter, one log line per retry.

use crate::{check, Kube};
use std::future::Future;
use std::time::Duration;
use ts_common::Settings;
use ts_kube::{Backoff, KubeError};
use ts_localapi::localapi::{LocalApi, LocalApiError, MASK_LEAN};
use ts_localapi::node::{NodeState, NodeWatch, Options, WatchEnd};
use ts_localapi::notify::BackendState;

/// The after-startup retry of a write: 100 ms doubling up to 30 s, jittered.
pub const RETRY: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(30),
};

/// Why the watcher failed (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The permission check could not be made (TLS, service account).
    #[error(transparent)]
    Kube(KubeError),
    #[error("deleting authkey from kube secret: {0}")]
    DeleteAuthKey(#[source] KubeError),
    #[error("storing device ID in kube secret: {0}")]
    StoreDeviceInfo(#[source] KubeError),
    /// tailscaled went away: the watcher has nothing left to follow.
    #[error("{0}; ts-kubestate stops with it")]
    BusGone(#[source] LocalApiError),
    #[error("watching tailscaled's IPN bus: {0}")]
    Bus(#[source] LocalApiError),
    #[error(transparent)]
    LeftRunning(#[from] ts_localapi::notify::LeftRunning),
}

impl From<WatchEnd> for WatchError {
    fn from(end: WatchEnd) -> Self {
        match end {
            WatchEnd::LeftRunning(left) => WatchError::LeftRunning(left),
            WatchEnd::Bus(e @ LocalApiError::Gone { .. }) => WatchError::BusGone(e),
            WatchEnd::Bus(e) => WatchError::Bus(e),
        }
    }
}

/// Whether the pod may patch the secret: `given` (ts-init passes the preflight's answer), else
/// an SSAR. An SSAR that cannot be answered counts as "no", as in the reference; a TLS or
/// service-account problem is an error.
pub async fn resolve_can_patch(
    kube: &Kube,
    secret: &str,
    given: Option<bool>,
) -> Result<bool, WatchError> {
    match given {
        Some(given) => Ok(given),
        None => Ok(check(kube, "patch", secret)
            .await
            .map_err(WatchError::Kube)?
            .unwrap_or(false)),
    }
}

/// Runs the watcher until `shutdown` resolves (→ `Ok`), tailscaled is gone or a fatal error.
/// `can_patch` as from [`resolve_can_patch`]. With `guard`, it also ends (with
/// [`WatchError::LeftRunning`]) when tailscaled leaves Running: ts-init asks one long-lived
/// phase to guard that state.
pub async fn run(
    kube: &Kube,
    settings: &Settings,
    can_patch: bool,
    guard: bool,
    shutdown: impl Future,
) -> Result<(), WatchError> {
    let secret = settings.kube_secret.as_str();
    if !can_patch {
        tracing::info!(
            "no patch permission on secret {secret:?}: device info is not stored and the authkey is not removed; nothing to do"
        );
        report_ready(settings);
        return Ok(());
    }
    tracing::info!(
        "watching tailscaled's IPN bus at {} to keep device_id/device_fqdn in secret {secret:?} (namespace {:?})",
        settings.socket.display(),
        kube.namespace()
    );
    let mut node = NodeWatch::spawn(
        LocalApi::new(&settings.socket),
        Options {
            mask: MASK_LEAN,
            guard,
            resolve: None,
        },
    );
    let mut rec = Reconciler {
        kube,
        secret,
        auth_once: settings.auth_once,
        running: false,
        seen: None,
        last: None,
        stored_once: false,
        reconciled: false,
    };
    let main = follow(&mut node, &mut rec, settings);
    tokio::select! {
        result = main => result,
        _ = shutdown => {
            tracing::info!("shutdown requested; exiting");
            Ok(())
        }
    }
}

/// Reconciles on every change, forever; returns only with an error.
async fn follow(
    node: &mut NodeWatch,
    rec: &mut Reconciler<'_>,
    settings: &Settings,
) -> Result<(), WatchError> {
    loop {
        let st = node.changed().await?;
        let was_ready = rec.reconciled;
        node.guarded(rec.on_state(&st)).await??;
        if rec.reconciled && !was_ready {
            report_ready(settings);
        }
    }
}

/// One newline on `TS_READY_FD`, if given; a failure is only logged.
pub fn report_ready(settings: &Settings) {
    if let Err(e) = ts_common::process::notify_ready(settings.ready_fd) {
        tracing::warn!("could not report readiness on TS_READY_FD: {e}");
    }
}

/// The watcher's state between reconciles.
pub struct Reconciler<'a> {
    kube: &'a Kube,
    secret: &'a str,
    auth_once: bool,
    running: bool,
    /// The last (StableID, Name) seen, applied once Running.
    seen: Option<(String, String)>,
    /// The change detector: the pair of the last write attempt.
    last: Option<(String, String)>,
    /// A write succeeded: startup is over, transient write failures are retried forever.
    stored_once: bool,
    /// The first reconcile (authkey removal if due, device info once) is done.
    pub reconciled: bool,
}

impl<'a> Reconciler<'a> {
    /// Brings the secret in line with the node as the bus last told it.
    pub async fn on_state(&mut self, st: &NodeState) -> Result<(), WatchError> {
        if let Some(id) = &st.me {
            self.seen = Some((id.stable_id.clone(), id.name.clone()));
        }
        if st.state == Some(BackendState::Running) && !self.running {
            self.running = true;
            if self.auth_once {
                ts_common::status::track(self.remove_authkey()).await?;
            }
        }
        let (true, Some(pair)) = (self.running, self.seen.clone()) else {
            return Ok(());
        };
        if self.last.as_ref() != Some(&pair) {
            self.last = Some(pair.clone());
            self.store(&pair.0, &pair.1).await?;
        }
        self.reconciled = true;
        Ok(())
    }

    /// JSON-patch remove of `authkey` (the reference's call 5).
    pub async fn remove_authkey(&self) -> Result<(), WatchError> {
        tracing::info!("Deleting authkey from kube secret");
        let Err(e) = self.kube.remove_key(self.secret, "authkey").await else {
            return Ok(());
        };
        match e.status_code() {
            // 404: no secret; 422: the key is already absent. Either way it is gone.
            Some(code @ (404 | 422)) => {
                tracing::info!(
                    "authkey already absent from secret {:?} ({code})",
                    self.secret
                );
                Ok(())
            }
            _ => Err(WatchError::DeleteAuthKey(e)),
        }
    }

    /// GET, then the strategic-merge PATCH of device_fqdn/device_id.
    async fn store(&mut self, id: &str, name: &str) -> Result<(), WatchError> {
        let mut retry: u32 = 0;
        loop {
            let Err(err) = ts_common::status::track(self.try_store(id, name)).await else {
                return Ok(());
            };
            // Before the first successful write a failure ends the watcher (ts-init ends the
            // container, as the reference's crash did); after it, the write is retried.
            if !(self.stored_once && err.is_transient()) {
                return Err(WatchError::StoreDeviceInfo(err));
            }
            retry += 1;
            let delay = RETRY.jittered(retry);
            tracing::warn!(
                "storing device info in secret {:?} failed: {err}; retrying in {}ms (retry {retry})",
                self.secret,
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One GET + PATCH, or only the GET when the write is skipped per the status table.
    async fn try_store(&mut self, id: &str, name: &str) -> Result<(), KubeError> {
        match self.kube.get_secret(self.secret).await {
            Ok(Some(_)) => {}
            // A 2xx whose body we could not read: the secret is there, go on.
            Err(KubeError::Decode { .. }) => {}
            Ok(None) => {
                tracing::info!(
                    "secret {:?} not found: not storing device info (retried when the node's identity changes)",
                    self.secret
                );
                return Ok(());
            }
            Err(e)
                if e.status_code().is_some_and(|c| (400..500).contains(&c))
                    && !e.is_transient() =>
            {
                tracing::warn!(
                    "cannot read secret {:?} before storing device info, skipping the write: {e}",
                    self.secret
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let data = [("device_fqdn", name), ("device_id", id)];
        match self.kube.patch_string_data(self.secret, &data).await {
            Ok(()) => {
                self.stored_once = true;
                tracing::info!(
                    "stored device info in secret {:?}: device_id={id} device_fqdn={name}",
                    self.secret
                );
                Ok(())
            }
            Err(e) if e.status_code() == Some(404) => {
                tracing::info!(
                    "secret {:?} disappeared before device info was stored: skipping the write",
                    self.secret
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jitter_bounded() {
        assert_eq!(RETRY.delay(1), Duration::from_millis(100));
        assert_eq!(RETRY.delay(2), Duration::from_millis(200));
        assert_eq!(RETRY.delay(9), Duration::from_millis(25_600));
        assert_eq!(RETRY.delay(10), RETRY.max);
        assert_eq!(RETRY.delay(100), RETRY.max);
        for _ in 0..100 {
            let j = RETRY.jittered(9);
            assert!(
                j >= Duration::from_millis(12_800) && j <= Duration::from_millis(25_600),
                "{j:?}"
            );
        }
    }
}
