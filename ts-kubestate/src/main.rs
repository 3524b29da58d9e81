//! ts-kubestate: tsboot's Kubernetes phase — every call tsboot makes to the API server.
//!
//! Duty, in two modes:
//! * `ts-kubestate preflight [--result-fd N]` — run by ts-init before tailscaled starts:
//!   SelfSubjectAccessReviews for get/update (required) and patch (optional) on the state
//!   secret, then, without `TS_AUTHKEY`, the secret's `authkey`. With `--result-fd N` it writes
//!   exactly one line `{"can_patch":true|false,"authkey":"<key>"|null}` to fd N and closes it
//!   (how the key reaches ts-init without argv or logs); without it the outcome is logged with
//!   the key redacted.
//! * `ts-kubestate [watch] [--can-patch BOOL]` — the long-lived watcher started by ts-init once
//!   tailscaled is Running: with `TS_AUTH_ONCE` removes `authkey` from the secret, and writes
//!   `device_id` / `device_fqdn` on every change of the node's identity. Reports readiness on
//!   `TS_READY_FD` after its first reconcile. Without patch permission it has nothing to do.
//!
//! Inputs: the same `TS_*` environment as ts-init (`TS_KUBE_SECRET`, `TS_SOCKET`,
//! `TS_AUTH_ONCE`, `TS_AUTHKEY`, `TS_READY_FD`, `TS_TEST_ONLY_ROOT`), `KUBERNETES_SERVICE_HOST`,
//! `KUBERNETES_SERVICE_PORT_HTTPS` and the pod's service account files; flags override the
//! variables. `--explain` prints the calls it would make (reads are made, writes are not).
//!
//! Leaves behind: `device_id`, `device_fqdn` in the secret (and no `authkey` with
//! `TS_AUTH_ONCE`); nothing else in the secret is touched.
//!
//! Exit status: 0 success (or nothing to do, or SIGTERM/SIGINT), 1 failure (the log says what
//! to fix: RBAC, token, CA, tailscaled gone), 2 invalid configuration.

use clap::{Parser, Subcommand};
use ts_common::cli::{self, plan};
use ts_common::exit;
use ts_common::kube::{KubeClient, KubeRequest};
use ts_common::settings::{parse_bool, Settings, REDACTED};
use ts_kubestate::explain::Explainer;
use ts_kubestate::{preflight, watch};

#[derive(Parser, Debug)]
#[command(
    name = "ts-kubestate",
    version,
    about = "tsboot's Kubernetes phase: RBAC/authkey preflight and the device-info watcher",
    after_help = cli::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,

    /// Name of the state secret; "" disables every secret call [env: TS_KUBE_SECRET]
    #[arg(long, value_name = "NAME", global = true)]
    secret: Option<String>,

    /// tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<String>,

    /// Remove the secret's authkey once Running is reached [env: TS_AUTH_ONCE]
    #[arg(long, value_name = "BOOL", global = true)]
    auth_once: Option<String>,

    /// Write one newline to this fd after the first reconcile, then close it [env: TS_READY_FD]
    #[arg(long, value_name = "FD", global = true)]
    ready_fd: Option<String>,

    /// Prefix of host paths such as the service account files (tests) [env: TS_TEST_ONLY_ROOT]
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<String>,

    /// Print the Kubernetes calls this mode would make (reads are made, writes are not sent) and exit
    #[arg(long, global = true)]
    explain: bool,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Before tailscaled starts: RBAC checks and the authkey lookup
    Preflight {
        /// Write the one-line JSON result to this fd and close it (used by ts-init)
        #[arg(long, value_name = "FD")]
        result_fd: Option<i32>,
    },
    /// After tailscaled is Running: authkey removal and device info (the default mode)
    Watch {
        /// Skip the patch-permission check: ts-init passes the preflight's answer
        #[arg(long, value_name = "BOOL")]
        can_patch: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    std::process::exit(run(cli));
}

#[tokio::main(flavor = "current_thread")]
async fn run(cli: Cli) -> i32 {
    let overrides = cli::overrides(&[
        ("TS_KUBE_SECRET", cli.secret.as_ref()),
        ("TS_SOCKET", cli.socket.as_ref()),
        ("TS_AUTH_ONCE", cli.auth_once.as_ref()),
        ("TS_READY_FD", cli.ready_fd.as_ref()),
        ("TS_TEST_ONLY_ROOT", cli.root.as_ref()),
    ]);
    let settings = match cli::load_settings("ts-kubestate", &overrides) {
        Ok(s) => s,
        Err(code) => return code,
    };
    cli::warn_unsupported(&settings);
    match cli.mode.unwrap_or(Mode::Watch { can_patch: None }) {
        Mode::Preflight { result_fd } => {
            if cli.explain {
                explain_preflight(&settings).await
            } else {
                run_preflight(&settings, result_fd).await
            }
        }
        Mode::Watch { can_patch } => {
            let can_patch = match can_patch.as_deref().map(|v| (v, parse_bool(v))) {
                None => None,
                Some((_, Some(b))) => Some(b),
                Some((v, None)) => {
                    tracing::error!(
                        "invalid configuration: --can-patch={v:?} is not a boolean: use true or false"
                    );
                    return exit::USAGE;
                }
            };
            if cli.explain {
                explain_watch(&settings, can_patch).await
            } else {
                run_watch(&settings, can_patch).await
            }
        }
    }
}

async fn run_preflight(settings: &Settings, result_fd: Option<i32>) -> i32 {
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

async fn run_watch(settings: &Settings, can_patch: Option<bool>) -> i32 {
    if let Some(why) = watch::skip_reason(settings) {
        tracing::info!("nothing to watch ({why})");
        if let Err(e) = ts_common::process::notify_ready(settings.ready_fd) {
            tracing::warn!("could not report readiness on TS_READY_FD: {e}");
        }
        return exit::SUCCESS;
    }
    let client = match KubeClient::from_settings(settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ts_kubestate::kube_exit_code(&e);
        }
    };
    let result = async {
        let can_patch = watch::resolve_can_patch(&client, &settings.kube_secret, can_patch).await?;
        watch::run(&client, settings, can_patch, shutdown_signal()).await
    }
    .await;
    match result {
        Ok(_) => exit::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

/// SIGTERM or SIGINT. If the handlers cannot be installed the process keeps the default
/// dispositions, which also end it.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
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

async fn explain_watch(settings: &Settings, can_patch: Option<bool>) -> i32 {
    if let Some(why) = watch::skip_reason(settings) {
        plan(format!(
            "ts-kubestate watch plan: no Kubernetes calls ({why}); exits 0"
        ));
        return exit::SUCCESS;
    }
    let ex = match explainer(settings, "watch") {
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
    let ns = ts_kubestate::KubeOps::namespace(&ex).to_string();
    plan(format!(
        "  then, following the IPN bus at {} (mask {}):",
        settings.socket.display(),
        ts_common::localapi::MASK_STEADY
    ));
    if settings.auth_once {
        plan("  on the first Running state (TS_AUTH_ONCE): log \"Deleting authkey from kube secret\" and");
        plan(format!(
            "     {}  (404/422: already gone)",
            KubeRequest::remove_key(&ns, secret, "authkey").describe()
        ));
    }
    plan("  on every change of the node's (StableID, Name), values from the bus (not known now):");
    plan(format!(
        "     {}  (4xx: skip the write)",
        KubeRequest::get_secret(&ns, secret).describe()
    ));
    plan(format!(
        "     {}",
        KubeRequest::patch_string_data(
            &ns,
            secret,
            &[
                ("device_fqdn", "<SelfNode.Name>"),
                ("device_id", "<SelfNode.StableID>")
            ]
        )
        .describe()
    ));
    plan(match settings.ready_fd {
        Some(fd) => format!("  after the first reconcile: one newline on fd {fd} (readiness)"),
        None => "  readiness: not reported (no TS_READY_FD)".to_string(),
    });
    exit::SUCCESS
}
