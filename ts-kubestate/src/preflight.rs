//! The Kubernetes preflight (the README's boot order, docs/kubernetes.md §2-§3), run by ts-init
//! before tailscaled starts.
//!
//! 1. SSAR `get` and `update` on the secret (required);
//! 2. SSAR `patch` (optional: decides whether tsboot may write the secret);
//! 3. `GET` the secret: when it does not exist, SSAR `create` must allow tailscaled to create
//!    it, or the boot stops here with a clear error (as today's image);
//! 4. without `TS_AUTHKEY` and without an OAuth client, take the secret's `authkey`.
//!
//! Status handling per the README's deviation table: an SSAR that fails (401 after a token re-read, 403, 404,
//! 422, transient faults after the bounded retry) is logged and counts as allowed for
//! get/update and as not allowed for patch, as the reference does; a TLS or service-account
//! problem is fatal (no answer can be trusted). The authkey GET: 404 = no key, anything else
//! that is not 2xx is fatal.
//!
//! The result goes to ts-init as one JSON line on a pipe ([`PreflightOutcome::result_line`]),
//! so the key never appears in an argv or a log.

use crate::{check, Kube};
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use ts_common::preflight::PreflightResult;
use ts_common::settings::AuthKey;
use ts_common::Settings;
use ts_kube::{secret_value, KubeError};

/// What the preflight found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightOutcome {
    /// The pod may patch the secret (device info, authkey removal).
    pub can_patch: bool,
    /// The secret's `authkey`, when `TS_AUTHKEY` was not given and the secret had one.
    pub authkey: Option<AuthKey>,
    /// Why nothing was checked (not in Kubernetes, or `TS_KUBE_SECRET=""`).
    pub skipped: Option<&'static str>,
}

impl PreflightOutcome {
    /// The line for ts-init's result pipe ([`PreflightResult`], the one type both sides use).
    pub fn result_line(&self) -> String {
        PreflightResult {
            can_patch: self.can_patch,
            authkey: self.authkey.clone(),
        }
        .to_line()
    }

    /// The outcome for humans (the key redacted).
    pub fn describe(&self) -> String {
        if let Some(why) = self.skipped {
            return format!(
                "nothing to check ({why}): can_patch=false, no authkey from the secret"
            );
        }
        let key = self
            .authkey
            .as_ref()
            .map_or("none".into(), AuthKey::to_string);
        format!(
            "can_patch={}, authkey from the secret: {key}",
            self.can_patch
        )
    }
}

/// Why the preflight failed (exit status 1). Messages keep the reference's wording where
/// operators rely on it.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// SSAR reported `allowed: false` for get and/or update.
    #[error("Some Kubernetes permissions are missing, please check your RBAC configuration: {0}")]
    MissingPermissions(String),
    /// The permission check could not be made at all (TLS, service account): what `?` makes
    /// of the error of a [`check`].
    #[error("checking Kubernetes permissions: {0}")]
    Check(#[from] KubeError),
    /// The authkey GET failed (401 after a retry, 403, 422, transient after the retry, ...).
    #[error("Getting authkey from kube secret: {0}")]
    GetAuthKey(#[source] KubeError),
    /// The state secret GET (made only to see whether it exists) failed.
    #[error("Getting Tailscale state Secret: {0}")]
    GetSecret(#[source] KubeError),
    #[error("Tailscale state Secret {0:?} does not exist and we don't have permissions to create it. If you intend to store tailscale state elsewhere than a Kubernetes Secret, you can explicitly set TS_KUBE_SECRET env var to an empty string. Else ensure that RBAC is set up that allows the service account associated with this installation to create Secrets (docker/kubernetes/rbac.yaml).")]
    MissingSecretCannotCreate(String),
    #[error("authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions on the secret to manage the authkey.")]
    AuthKeyWithoutPatch,
    #[error("writing the preflight result to fd {fd}: {source} (the fd must be the write end of a pipe opened by the caller)")]
    ResultFd {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
}

/// The outcome when there is nothing to check.
pub fn skipped(why: &'static str) -> PreflightOutcome {
    PreflightOutcome {
        can_patch: false,
        authkey: None,
        skipped: Some(why),
    }
}

/// Runs the checks of a Kubernetes setup with secret storage (see the module docs).
pub async fn run(kube: &Kube, settings: &Settings) -> Result<PreflightOutcome, PreflightError> {
    let secret = settings.kube_secret.as_str();
    let mut missing = Vec::new();
    for verb in ["get", "update"] {
        // An unanswered check (None): the reference cannot tell, so it lets tailscaled find out.
        if check(kube, verb, secret).await? == Some(false) {
            missing.push(format!("missing {verb} permission on secret {secret:?}"));
        }
    }
    if !missing.is_empty() {
        return Err(PreflightError::MissingPermissions(join_errors(&missing)));
    }
    let can_patch = check(kube, "patch", secret).await?.unwrap_or(false);

    let want_key = settings.auth_key.is_none() && !settings.oauth_login();
    let found = kube.get_secret(secret).await.map_err(if want_key {
        PreflightError::GetAuthKey
    } else {
        PreflightError::GetSecret
    })?;
    if found.is_none() {
        // tailscaled's `kube:` store creates a missing secret; without that right it would
        // fail later with a less helpful message. An unanswerable check counts as "no", as in
        // today's image.
        if check(kube, "create", secret).await? != Some(true) {
            return Err(PreflightError::MissingSecretCannotCreate(
                secret.to_string(),
            ));
        }
        tracing::info!(
            "state Secret {secret:?} does not exist yet; tailscaled will create it (create permission granted)"
        );
    }

    let mut authkey = None;
    if want_key {
        authkey = found
            .as_ref()
            .and_then(|s| secret_value(s, "authkey"))
            .filter(|k| !k.is_empty())
            .map(AuthKey::new);
        if authkey.is_some() {
            if !can_patch {
                return Err(PreflightError::AuthKeyWithoutPatch);
            }
            tracing::info!("Using authkey found in kube secret");
        } else {
            tracing::info!("No authkey found in kube secret and TS_AUTHKEY not provided, login will be interactive if needed.");
        }
    }
    Ok(PreflightOutcome {
        can_patch,
        authkey,
        skipped: None,
    })
}

/// Go's `multierr` rendering: one error as is, several as `multiple errors:\n\t…\n\t…`.
pub fn join_errors(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => many
            .iter()
            .fold("multiple errors:".to_string(), |out, e| out + "\n\t" + e),
    }
}

/// Writes the result line to `fd` and closes it.
#[allow(
    unsafe_code,
    reason = "the --result-fd number handed over by ts-init becomes an owned file"
)]
pub fn write_result(fd: RawFd, outcome: &PreflightOutcome) -> Result<(), PreflightError> {
    use std::io::Write as _;
    let err = |source| PreflightError::ResultFd { fd, source };
    // Taking ownership of an fd that is not open would be undefined; check it first.
    nix::fcntl::fcntl(
        // SAFETY: borrowed only for this one F_GETFD, which fails cleanly if it is not open.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    // SAFETY: the fd is open (checked above) and was handed to this process for the result
    // only (--result-fd); nothing else uses it, and it is closed when `file` drops.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(outcome.result_line().as_bytes())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_protocol() {
        let o = PreflightOutcome {
            can_patch: true,
            authkey: Some(AuthKey::new("tskey-\"x\"")),
            skipped: None,
        };
        assert_eq!(
            o.result_line(),
            "{\"can_patch\":true,\"authkey\":\"tskey-\\\"x\\\"\"}\n"
        );
        let o = skipped("x");
        assert_eq!(o.result_line(), "{\"can_patch\":false,\"authkey\":null}\n");
        let o = PreflightOutcome {
            can_patch: true,
            authkey: Some(AuthKey::new("tskey-secret")),
            skipped: None,
        };
        assert!(!o.describe().contains("tskey-secret"));
        assert!(!format!("{o:?}").contains("tskey-secret"));
    }

    #[test]
    fn multierr_wording() {
        assert_eq!(
            join_errors(&["missing get permission on secret \"tailscale\"".into()]),
            "missing get permission on secret \"tailscale\""
        );
        assert_eq!(
            join_errors(&["a".into(), "b".into()]),
            "multiple errors:\n\ta\n\tb"
        );
        assert_eq!(
            PreflightError::MissingPermissions(join_errors(&[
                "missing get permission on secret \"tailscale\"".into()
            ]))
            .to_string(),
            "Some Kubernetes permissions are missing, please check your RBAC configuration: missing get permission on secret \"tailscale\""
        );
    }

    #[test]
    fn result_fd_not_open_is_an_error() {
        let err = write_result(987, &skipped("x")).expect_err("fd 987 is not open");
        assert!(err.to_string().contains("fd 987"), "{err}");
    }
}
