//! ts-health: the local HTTP endpoint for probes and Prometheus (README "Health and metrics
//! endpoint", D20).
//!
//! **Duty.** Listen on `TS_LOCAL_ADDR_PORT` (default `[::]:9002`) and serve `GET /healthz`
//! (`TS_ENABLE_HEALTH_CHECK=true`): `200 ok` only when tailscaled is Running with a tailnet IP,
//! ts-init's startup is complete and every running watcher's last reconcile succeeded (none
//! running for over a second), else `503` and a one-line reason; and `GET /metrics`
//! (`TS_ENABLE_METRICS=true`): tailscaled's `/localapi/v0/usermetrics` followed by tsboot's
//! `tsboot_*` series. The deprecated `TS_HEALTHCHECK_ADDR_PORT` gets `/healthz` alone on its own
//! listener. Anything else: 404.
//!
//! **Inputs.** The `TS_*` environment ts-init gets; flags override it. It reads tailscaled's
//! IPN bus on `TS_SOCKET` and the reports the phases write to `tsboot-status/` beside the socket.
//! ts-init starts it first, before tailscaled; it also runs alone (its own container sharing the
//! socket's directory, or by hand).
//!
//! **Leaves behind.** Nothing. Once listening it writes `\n` to `TS_READY_FD` and closes it.
//!
//! **Exit codes.** 0 on SIGTERM/SIGINT; 1 when a listener cannot be bound; 2 on invalid
//! configuration (including no handler enabled).

use clap::Parser;
use std::process::ExitCode;
use ts_common::cli;
use ts_health::Config;

const ABOUT: &str = "Serve /healthz and /metrics for a tsboot container";

const ENV_HELP: &str = "\
Environment: TS_ENABLE_HEALTH_CHECK, TS_ENABLE_METRICS, TS_LOCAL_ADDR_PORT, \
TS_HEALTHCHECK_ADDR_PORT (deprecated), TS_SOCKET, TS_READY_FD (see the flags); POD_IPS (an \
unbracketed IPv6 pod address in TS_LOCAL_ADDR_PORT gets brackets); TS_LOG_FORMAT (text or \
json); RUST_LOG (log level).";

#[derive(Parser, Debug)]
#[command(name = "ts-health", version, about = ABOUT)]
struct Args {
    /// Serve /healthz on the local address: true or false [env: TS_ENABLE_HEALTH_CHECK]
    #[arg(long, id = "TS_ENABLE_HEALTH_CHECK", value_name = "BOOL")]
    enable_health_check: Option<String>,

    /// Serve /metrics on the local address: true or false [env: TS_ENABLE_METRICS]
    #[arg(long, id = "TS_ENABLE_METRICS", value_name = "BOOL")]
    enable_metrics: Option<String>,

    /// Address and port to listen on, IPv6 in brackets (default [::]:9002) [env: TS_LOCAL_ADDR_PORT]
    #[arg(long, id = "TS_LOCAL_ADDR_PORT", value_name = "IP:PORT")]
    local_addr_port: Option<String>,

    /// Deprecated: /healthz alone on this address [env: TS_HEALTHCHECK_ADDR_PORT]
    #[arg(long, id = "TS_HEALTHCHECK_ADDR_PORT", value_name = "IP:PORT")]
    healthcheck_addr_port: Option<String>,

    /// tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, id = "TS_SOCKET", value_name = "PATH")]
    socket: Option<String>,

    /// Write one newline to this fd once listening, then close it [env: TS_READY_FD]
    #[arg(long, id = "TS_READY_FD", value_name = "FD")]
    ready_fd: Option<String>,

    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let (_, phase): (Args, _) = cli::parse_args("ts-health", ENV_HELP);
    ts_localapi::run_phase(phase, |settings, explain| async move {
        let cfg = Config::from_settings(&settings)?;
        if explain {
            ts_health::explain(&cfg).await.iter().for_each(cli::plan);
            return Ok(());
        }
        ts_health::run(&cfg).await
    })
}
