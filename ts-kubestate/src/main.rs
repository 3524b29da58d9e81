//! ts-kubestate: tsboot's Kubernetes phase — every call tsboot makes to the API server.
//!
//! Duty, in three modes:
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
//! * `ts-kubestate settle [--timeout DUR]` — run by ts-init on shutdown, before tailscaled is
//!   signalled: waits (at most half of `TS_SHUTDOWN_GRACE` by default) until the state in the
//!   secret is consistent, so a pod stopped mid-login keeps a usable state. Exits 0 when it is,
//!   1 when the wait ended without it (ts-init stops tailscaled either way).
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

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;
use ts_common::cli;
use ts_common::exit;
use ts_common::settings::{parse_bool, parse_duration, Settings};
use ts_kubestate::app;

#[derive(Parser, Debug)]
#[command(
    name = "ts-kubestate",
    version,
    about = "tsboot's Kubernetes phase: RBAC/authkey preflight, the device-info watcher, the shutdown state wait",
    after_help = cli::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,

    /// Name of the state secret; "" disables every secret call [env: TS_KUBE_SECRET]
    #[arg(long, id = "TS_KUBE_SECRET", value_name = "NAME", global = true)]
    secret: Option<String>,

    /// tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, id = "TS_SOCKET", value_name = "PATH", global = true)]
    socket: Option<String>,

    /// Remove the secret's authkey once Running is reached [env: TS_AUTH_ONCE]
    #[arg(long, id = "TS_AUTH_ONCE", value_name = "BOOL", global = true)]
    auth_once: Option<String>,

    /// Write one newline to this fd after the first reconcile, then close it [env: TS_READY_FD]
    #[arg(long, id = "TS_READY_FD", value_name = "FD", global = true)]
    ready_fd: Option<String>,

    /// Prefix of host paths such as the service account files (tests) [env: TS_TEST_ONLY_ROOT]
    #[arg(long, id = "TS_TEST_ONLY_ROOT", value_name = "DIR", global = true)]
    root: Option<String>,

    #[command(flatten)]
    common: cli::CommonArgs,
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
        /// Also exit 1 when tailscaled leaves Running (ts-init asks one long-lived phase to guard it)
        #[arg(long)]
        guard: bool,
    },
    /// At shutdown, before tailscaled is stopped: wait until the state in the secret is consistent
    Settle {
        /// Longest wait, e.g. 10s [default: half of TS_SHUTDOWN_GRACE]
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
}

fn main() -> ExitCode {
    let (cli, phase) = ts_common::cli::parse_with::<Cli>("ts-kubestate", Cli::command());
    let mode = cli.mode.unwrap_or(Mode::Watch {
        can_patch: None,
        guard: false,
    });
    ts_localapi::run_phase(phase, |settings, explain| async move {
        run(mode, &settings, explain).await
    })
}

/// Runs the subcommand (or prints its plan); a flag value it cannot use is refused (exit 2).
async fn run(mode: Mode, settings: &Settings, explain: bool) -> Result<(), cli::Logged> {
    let usage = |flag: &str, value: &str, want: &str| {
        tracing::error!("invalid configuration: --{flag}={value:?} is not {want}");
        cli::Logged(exit::USAGE)
    };
    match mode {
        Mode::Preflight { .. } if explain => app::explain_preflight(settings).await,
        Mode::Preflight { result_fd } => app::run_preflight(settings, result_fd).await,
        Mode::Watch { can_patch, guard } => {
            let can_patch = can_patch
                .map(|value| {
                    parse_bool(&value)
                        .ok_or_else(|| usage("can-patch", &value, "a boolean: use true or false"))
                })
                .transpose()?;
            if explain {
                app::explain_watch(settings, can_patch).await
            } else {
                app::run_watch(settings, can_patch, guard).await
            }
        }
        Mode::Settle { timeout } => {
            let timeout = match timeout {
                None => settings.shutdown_grace / 2,
                Some(value) => parse_duration(&value)
                    .ok_or_else(|| usage("timeout", &value, "a duration: use e.g. 10s or 500ms"))?,
            };
            if explain {
                app::explain_settle(settings, timeout).await
            } else {
                app::run_settle(settings, timeout).await
            }
        }
    }
    .map_err(cli::Logged)
}
