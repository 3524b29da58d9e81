//! The modes as the binary runs them: load nothing, decide nothing about the command line; take
//! validated [`Settings`], run the mode (or print its plan). `Err` is the exit status of a
//! failure (already logged).

use crate::{preflight, settle, skip_reason, watch, Kube};
use ts_common::cli::plan;
use ts_common::exit;
use ts_common::settings::{Settings, REDACTED};
use ts_kube::{describe, KubeClient, KubeRequest};

/// The client of a run; a configuration that cannot make one is logged and becomes the exit
/// code.
fn connect(settings: &Settings) -> Result<Kube, i32> {
    KubeClient::from_settings(settings)
        .map(Kube::new)
        .map_err(|e| {
            tracing::error!("{e}");
            e.exit_code()
        })
}

/// Logs the error that ends a run (exit status 1).
fn failed(e: impl std::fmt::Display) -> i32 {
    tracing::error!("{e}");
    exit::FAILURE
}

/// At shutdown, before tailscaled is signalled: wait at most `timeout` for the state in the
/// secret to be consistent.
pub async fn run_settle(settings: &Settings, timeout: std::time::Duration) -> Result<(), i32> {
    if let Some(why) = skip_reason(settings) {
        tracing::info!("no state secret to wait for ({why})");
        return Ok(());
    }
    let kube = connect(settings)?;
    let secret = settings.kube_secret.as_str();
    tracing::info!("Checking for consistent state");
    let deadline = tokio::time::Instant::now() + timeout;
    match settle::run(&kube, secret, deadline).await {
        settle::Settled::Consistent => Ok(()),
        settle::Settled::TimedOut => {
            tracing::warn!("state in Secret {secret:?} still incomplete after {timeout:?}; stopping tailscaled anyway");
            Err(exit::FAILURE)
        }
        settle::Settled::Unreadable(why) => {
            tracing::warn!("Error waiting for consistent state on shutdown: {why}");
            Err(exit::FAILURE)
        }
    }
}

pub async fn explain_settle(settings: &Settings, timeout: std::time::Duration) -> Result<(), i32> {
    let ex = explainer(settings, "settle")?;
    plan(format!(
        "  repeat {} (100 ms, doubling to 1 s apart) until the state keys are all present or all absent, at most {timeout:?}",
        describe(&KubeRequest::get_secret(ex.namespace(), &settings.kube_secret))
    ));
    let now = match ex.get_secret(&settings.kube_secret).await {
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
    Ok(())
}

/// Before tailscaled: RBAC and the authkey; the result goes to `result_fd` if given.
pub async fn run_preflight(settings: &Settings, result_fd: Option<i32>) -> Result<(), i32> {
    // A one-shot phase: reported only for its Kubernetes request counts, already finished.
    ts_common::status::init(settings, "ts-kubestate preflight");
    ts_common::status::stopped();
    let outcome = match skip_reason(settings) {
        Some(why) => {
            tracing::info!("Kubernetes preflight: nothing to check ({why})");
            Ok(preflight::skipped(why))
        }
        None => preflight::run(&connect(settings)?, settings).await,
    };
    outcome
        .and_then(|outcome| match result_fd {
            Some(fd) => preflight::write_result(fd, &outcome),
            None => {
                tracing::info!("Kubernetes preflight done: {}", outcome.describe());
                Ok(())
            }
        })
        .map_err(failed)
}

/// After Running: authkey removal and device info; `can_patch` skips the SSAR when known;
/// `guard` also ends the watcher when tailscaled leaves Running.
pub async fn run_watch(
    settings: &Settings,
    can_patch: Option<bool>,
    guard: bool,
) -> Result<(), i32> {
    ts_common::status::init(settings, "ts-kubestate");
    if let Some(why) = skip_reason(settings) {
        ts_common::status::stopped();
        tracing::info!("nothing to watch ({why})");
        watch::report_ready(settings);
        return Ok(());
    }
    let kube = connect(settings)?;
    // Handlers first, so a SIGTERM during the permission check is a clean stop too.
    let mut stop = ts_localapi::signals::StopSignals::install();
    async {
        let can_patch = watch::resolve_can_patch(&kube, &settings.kube_secret, can_patch).await?;
        watch::run(&kube, settings, can_patch, guard, stop.recv()).await
    }
    .await
    .map_err(failed)?;
    ts_common::status::stopped();
    Ok(())
}

/// Prints the header of a plan; returns the [`Kube`] that prints the calls, or the exit code
/// when there is nothing to do (0) or the configuration is invalid (2).
fn explainer(settings: &Settings, mode: &str) -> Result<Kube, i32> {
    if let Some(why) = skip_reason(settings) {
        plan(format!(
            "ts-kubestate {mode} plan: no Kubernetes calls ({why}); exits 0"
        ));
        return Err(exit::SUCCESS);
    }
    plan(format!(
        "ts-kubestate {mode} plan (reads are made, writes are not sent)"
    ));
    let client = KubeClient::from_settings(settings);
    if let Some(e) = client.as_ref().err().filter(|e| e.is_usage()) {
        tracing::error!("invalid configuration: {e}");
        return Err(exit::USAGE);
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
    Ok(Kube::explain(client, namespace))
}

pub async fn explain_preflight(settings: &Settings) -> Result<(), i32> {
    if let Some(why) = skip_reason(settings) {
        plan(format!(
            "ts-kubestate preflight plan: no Kubernetes calls ({why})"
        ));
        plan(format!(
            "  result: {}",
            preflight::skipped(why).result_line().trim_end()
        ));
        return Ok(());
    }
    let ex = explainer(settings, "preflight")?;
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
            exit::FAILURE
        )),
    }
    Ok(())
}

pub async fn explain_watch(settings: &Settings, can_patch: Option<bool>) -> Result<(), i32> {
    let ex = explainer(settings, "watch")?;
    let secret = settings.kube_secret.as_str();
    if let Some(b) = can_patch {
        plan(format!("  patch permission: {b} (given by --can-patch)"));
    }
    match watch::resolve_can_patch(&ex, secret, can_patch).await {
        Ok(true) => {}
        Ok(false) => {
            plan("  no patch permission: nothing to do, exits 0 (ts-init does not start the watcher)");
            return Ok(());
        }
        Err(e) => plan(format!("  patch permission: unknown ({e})")),
    }
    let ns = ex.namespace();
    plan(format!(
        "  then, following the IPN bus at {} (mask {}, this device from GET {} at each watch):",
        settings.socket.display(),
        ts_localapi::localapi::MASK_LEAN,
        ts_localapi::localapi::STATUS_SELF_PATH
    ));
    if settings.auth_once {
        plan("  on the first Running state (TS_AUTH_ONCE): log \"Deleting authkey from kube secret\" and");
        let remove = describe(&KubeRequest::remove_key(ns, secret, "authkey"));
        plan(format!("     {remove}  (404/422: already gone)"));
    }
    plan("  on every change of the node's (StableID, Name), values from the bus (not known now):");
    let get = describe(&KubeRequest::get_secret(ns, secret));
    plan(format!("     {get}  (4xx: skip the write)"));
    let data = [
        ("device_fqdn", "<SelfNode.Name>"),
        ("device_id", "<SelfNode.StableID>"),
    ];
    let patch = describe(&KubeRequest::patch_string_data(ns, secret, &data));
    plan(format!("     {patch}"));
    plan(match settings.ready_fd {
        Some(fd) => format!("  after the first reconcile: one newline on fd {fd} (readiness)"),
        None => "  readiness: not reported (no TS_READY_FD)".to_string(),
    });
    Ok(())
}
