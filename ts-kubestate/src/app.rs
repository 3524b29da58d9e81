//! The two modes as the binary runs them: load nothing, decide nothing about the command line;
//! take validated [`Settings`], run the mode (or print its plan) and return the exit status.

use crate::explain::Explainer;
use crate::{preflight, settle, watch};
use ts_common::cli::plan;
use ts_common::exit;
use ts_common::settings::{Settings, REDACTED};
use ts_kube::{describe, KubeClient, KubeRequest};

/// What the binary was asked to do.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Before tailscaled: RBAC and the authkey; the result goes to `result_fd` if given.
    Preflight { result_fd: Option<i32> },
    /// After Running: authkey removal and device info; `can_patch` skips the SSAR when known;
    /// `guard` also ends the watcher when tailscaled leaves Running.
    Watch {
        can_patch: Option<bool>,
        guard: bool,
    },
    /// At shutdown, before tailscaled is signalled: wait at most `timeout` for the state in the
    /// secret to be consistent.
    Settle { timeout: std::time::Duration },
}

/// Runs `action` (or, with `explain`, prints its plan) and returns the exit status.
pub async fn run(settings: &Settings, action: Action, explain: bool) -> i32 {
    match (action, explain) {
        (Action::Preflight { .. }, true) => explain_preflight(settings).await,
        (Action::Preflight { result_fd }, false) => run_preflight(settings, result_fd).await,
        (Action::Watch { can_patch, .. }, true) => explain_watch(settings, can_patch).await,
        (Action::Watch { can_patch, guard }, false) => run_watch(settings, can_patch, guard).await,
        (Action::Settle { timeout }, true) => explain_settle(settings, timeout).await,
        (Action::Settle { timeout }, false) => run_settle(settings, timeout).await,
    }
}

/// The client of the long-running modes; a configuration that cannot make one is logged and
/// becomes the exit code.
fn client_or_exit_code(settings: &Settings) -> Result<KubeClient, i32> {
    KubeClient::from_settings(settings).map_err(|e| {
        tracing::error!("{e}");
        e.exit_code()
    })
}

async fn run_settle(settings: &Settings, timeout: std::time::Duration) -> i32 {
    if let Some(why) = preflight::skip_reason(settings) {
        tracing::info!("no state secret to wait for ({why})");
        return exit::SUCCESS;
    }
    let client = match client_or_exit_code(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = settings.kube_secret.as_str();
    tracing::info!("Checking for consistent state");
    let deadline = tokio::time::Instant::now() + timeout;
    match settle::run(&client, secret, deadline).await {
        settle::Settled::Consistent => exit::SUCCESS,
        settle::Settled::TimedOut => {
            tracing::warn!("state in Secret {secret:?} still incomplete after {timeout:?}; stopping tailscaled anyway");
            exit::FAILURE
        }
        settle::Settled::Unreadable(why) => {
            tracing::warn!("Error waiting for consistent state on shutdown: {why}");
            exit::FAILURE
        }
    }
}

async fn explain_settle(settings: &Settings, timeout: std::time::Duration) -> i32 {
    let ex = match skip_or_explainer(settings, "settle", preflight::skip_reason(settings)) {
        Ok(ex) => ex,
        Err(code) => return code,
    };
    let ns = crate::KubeOps::namespace(&ex).to_string();
    plan(format!(
        "  repeat {} (100 ms, doubling to 1 s apart) until the state keys are all present or all absent, at most {timeout:?}",
        describe(&KubeRequest::get_secret(&ns, &settings.kube_secret))
    ));
    let now = match crate::KubeOps::get_secret(&ex, &settings.kube_secret).await {
        Ok(None) => "the secret does not exist: nothing to wait for".to_string(),
        Ok(Some(found)) => {
            let keys = found.data.iter().flat_map(|d| d.keys().map(String::as_str));
            if settle::has_consistent_state(keys) {
                "the state is consistent: it would return at once".to_string()
            } else {
                "the state is incomplete: it would wait".to_string()
            }
        }
        Err(e) => format!("the secret cannot be read ({e}): it would not wait"),
    };
    plan(format!("  now: {now}"));
    exit::SUCCESS
}

async fn run_preflight(settings: &Settings, result_fd: Option<i32>) -> i32 {
    // A one-shot phase: reported only for its Kubernetes request counts, already finished.
    ts_common::status::init(settings, "ts-kubestate preflight");
    ts_common::status::stopped();
    let outcome = match preflight::skip_reason(settings) {
        Some(why) => {
            tracing::info!("Kubernetes preflight: nothing to check ({why})");
            Ok(preflight::skipped(why))
        }
        None => match KubeClient::from_settings(settings) {
            Ok(client) => preflight::run(&client, settings).await,
            Err(e) => Err(preflight::PreflightError::Kube(e)),
        },
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e}");
            return e.exit_code();
        }
    };
    match result_fd {
        Some(fd) => {
            if let Err(e) = preflight::write_result(fd, &outcome) {
                tracing::error!("{e}");
                return e.exit_code();
            }
        }
        None => tracing::info!("Kubernetes preflight done: {}", outcome.describe()),
    }
    exit::SUCCESS
}

async fn run_watch(settings: &Settings, can_patch: Option<bool>, guard: bool) -> i32 {
    ts_common::status::init(settings, "ts-kubestate");
    if let Some(why) = watch::skip_reason(settings) {
        ts_common::status::stopped();
        tracing::info!("nothing to watch ({why})");
        if let Err(e) = ts_common::process::notify_ready(settings.ready_fd) {
            tracing::warn!("could not report readiness on TS_READY_FD: {e}");
        }
        return exit::SUCCESS;
    }
    let client = match client_or_exit_code(settings) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Handlers first, so a SIGTERM during the permission check is a clean stop too.
    let mut stop = ts_localapi::signals::StopSignals::install();
    let result = async {
        let can_patch = watch::resolve_can_patch(&client, &settings.kube_secret, can_patch).await?;
        let shutdown = async {
            stop.recv().await;
        };
        watch::run(&client, settings, can_patch, guard, shutdown).await
    }
    .await;
    match result {
        Ok(_) => {
            ts_common::status::stopped();
            exit::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

/// Prints the header shared by both plans; returns the explainer, or the exit code when the
/// configuration is invalid.
fn explainer(settings: &Settings, mode: &str) -> Result<Explainer, i32> {
    plan(format!(
        "ts-kubestate {mode} plan (reads are made, writes are not sent)"
    ));
    let client = KubeClient::from_settings(settings);
    if let Err(e) = &client {
        if e.is_usage() {
            tracing::error!("invalid configuration: {e}");
            return Err(exit::USAGE);
        }
    }
    let namespace = match &client {
        Ok(c) => {
            plan(format!("  API server: {}", c.server()));
            plan(format!(
                "  service account: {} (token re-read for every request)",
                c.config().token_path.display()
            ));
            c.namespace().to_string()
        }
        Err(e) => {
            plan(format!("  client: cannot be built: {e}"));
            "<namespace: not read>".to_string()
        }
    };
    plan(format!(
        "  namespace: {namespace}, secret: {:?}",
        settings.kube_secret
    ));
    Ok(Explainer::new(client, namespace))
}

async fn explain_preflight(settings: &Settings) -> i32 {
    if let Some(why) = preflight::skip_reason(settings) {
        plan(format!(
            "ts-kubestate preflight plan: no Kubernetes calls ({why})"
        ));
        plan(format!(
            "  result: {}",
            preflight::skipped(why).result_line().trim_end()
        ));
        return exit::SUCCESS;
    }
    let ex = match explainer(settings, "preflight") {
        Ok(ex) => ex,
        Err(code) => return code,
    };
    if settings.auth_key.is_some() {
        plan("  (TS_AUTHKEY is set: the secret's authkey is not read)");
    }
    match preflight::run(&ex, settings).await {
        Ok(outcome) => {
            plan(format!("  outcome: {}", outcome.describe()));
            let shown = preflight::PreflightOutcome {
                authkey: outcome
                    .authkey
                    .as_ref()
                    .map(|_| ts_common::settings::AuthKey::new(REDACTED)),
                ..outcome
            };
            plan(format!(
                "  result line (--result-fd): {}",
                shown.result_line().trim_end()
            ));
        }
        Err(e) => plan(format!(
            "  outcome: the preflight would fail (exit {}): {e}",
            e.exit_code()
        )),
    }
    exit::SUCCESS
}

/// The plan's one line when `skip` says there is nothing to do (`Err(0)`), else the explainer.
fn skip_or_explainer(
    settings: &Settings,
    mode: &str,
    skip: Option<&'static str>,
) -> Result<Explainer, i32> {
    if let Some(why) = skip {
        plan(format!(
            "ts-kubestate {mode} plan: no Kubernetes calls ({why}); exits 0"
        ));
        return Err(exit::SUCCESS);
    }
    explainer(settings, mode)
}

async fn explain_watch(settings: &Settings, can_patch: Option<bool>) -> i32 {
    let ex = match skip_or_explainer(settings, "watch", watch::skip_reason(settings)) {
        Ok(ex) => ex,
        Err(code) => return code,
    };
    let secret = settings.kube_secret.as_str();
    let can_patch = match can_patch {
        Some(b) => {
            plan(format!("  patch permission: {b} (given by --can-patch)"));
            Some(b)
        }
        None => match watch::resolve_can_patch(&ex, secret, None).await {
            Ok(b) => Some(b),
            Err(e) => {
                plan(format!("  patch permission: unknown ({e})"));
                None
            }
        },
    };
    if can_patch == Some(false) {
        plan("  no patch permission: nothing to do, exits 0 (ts-init does not start the watcher)");
        return exit::SUCCESS;
    }
    let ns = crate::KubeOps::namespace(&ex).to_string();
    plan(format!(
        "  then, following the IPN bus at {} (mask {}, this device from GET {} at each watch):",
        settings.socket.display(),
        ts_localapi::localapi::MASK_LEAN,
        ts_localapi::localapi::STATUS_SELF_PATH
    ));
    if settings.auth_once {
        plan("  on the first Running state (TS_AUTH_ONCE): log \"Deleting authkey from kube secret\" and");
        plan(format!(
            "     {}  (404/422: already gone)",
            describe(&KubeRequest::remove_key(&ns, secret, "authkey"))
        ));
    }
    plan("  on every change of the node's (StableID, Name), values from the bus (not known now):");
    plan(format!(
        "     {}  (4xx: skip the write)",
        describe(&KubeRequest::get_secret(&ns, secret))
    ));
    plan(format!(
        "     {}",
        describe(&KubeRequest::patch_string_data(
            &ns,
            secret,
            &[
                ("device_fqdn", "<SelfNode.Name>"),
                ("device_id", "<SelfNode.StableID>")
            ]
        ))
    ));
    plan(match settings.ready_fd {
        Some(fd) => format!("  after the first reconcile: one newline on fd {fd} (readiness)"),
        None => "  readiness: not reported (no TS_READY_FD)".to_string(),
    });
    exit::SUCCESS
}
