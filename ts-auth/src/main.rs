//! ts-auth — brings tailscaled to Running.
//!
//! Duty: watch tailscaled's IPN bus, run `tailscale up` (at once, or with TS_AUTH_ONCE only when
//! tailscaled reports NeedsLogin), and wait until tailscaled is Running. With `--guard` (how
//! ts-init runs it) it then reports readiness on TS_READY_FD and stays, exiting 1 as soon as
//! tailscaled leaves Running.
//! With TS_AUTH_ONCE it runs `tailscale set` with the preferences the environment owns once
//! Running.
//! Inputs: TS_SOCKET, TS_AUTHKEY / TS_AUTH_KEY, TS_CLIENT_SECRET, TS_ID_TOKEN (never flags: argv
//! is visible to every process), TS_CLIENT_ID, TS_AUDIENCE, TS_ACCEPT_DNS, TS_ROUTES,
//! TS_HOSTNAME, TS_EXTRA_ARGS, TS_AUTH_ONCE, TS_BOOT_TIMEOUT, TS_READY_FD.
//! Leaves behind: tailscaled logged in and Running.
//! Exit: 0 Running reached (or guard stopped by SIGTERM/SIGINT); 1 any failure (the log says
//! which); 2 invalid configuration.

use clap::{CommandFactory, Parser};
use std::process::ExitCode;
use ts_common::cli;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Bring tailscaled to Running: tailscale up and the login watch",
    long_about = "Bring tailscaled to Running: watch the IPN bus, run `tailscale up` (at once, or with \
TS_AUTH_ONCE only when tailscaled needs a login, then `tailscale set` once Running), and wait for \
Running. Credentials come from TS_AUTHKEY / TS_AUTH_KEY, TS_CLIENT_SECRET and TS_ID_TOKEN only (a \
flag would show them in the process list).",
    after_help = ts_common::cli::EXIT_CODES_HELP
)]
struct Cli {
    /// After Running, report readiness and stay; exit 1 when tailscaled leaves Running (ts-init uses this).
    #[arg(long)]
    guard: bool,
    /// Path of tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, id = "TS_SOCKET", value_name = "PATH")]
    socket: Option<String>,
    /// Run `tailscale up` only when tailscaled needs a login (true/false) [env: TS_AUTH_ONCE]
    #[arg(long, id = "TS_AUTH_ONCE", value_name = "BOOL")]
    auth_once: Option<String>,
    /// Use the tailnet's DNS configuration (true/false) [env: TS_ACCEPT_DNS]
    #[arg(long, id = "TS_ACCEPT_DNS", value_name = "BOOL")]
    accept_dns: Option<String>,
    /// Subnet routes to advertise, comma-separated CIDRs [env: TS_ROUTES]
    #[arg(long, id = "TS_ROUTES", value_name = "CIDRS")]
    routes: Option<String>,
    /// Node name in the tailnet (`--hostname`) [env: TS_HOSTNAME]
    #[arg(long, id = "TS_HOSTNAME", value_name = "NAME")]
    hostname: Option<String>,
    /// OAuth client ID (`--client-id`) [env: TS_CLIENT_ID]
    #[arg(long, id = "TS_CLIENT_ID", value_name = "ID")]
    client_id: Option<String>,
    /// Audience for workload identity federation (`--audience`) [env: TS_AUDIENCE]
    #[arg(long, id = "TS_AUDIENCE", value_name = "AUDIENCE")]
    audience: Option<String>,
    /// Extra arguments for `tailscale up`, split on whitespace [env: TS_EXTRA_ARGS]
    #[arg(
        long,
        id = "TS_EXTRA_ARGS",
        value_name = "ARGS",
        allow_hyphen_values = true
    )]
    extra_args: Option<String>,
    /// Deadline for reaching Running, e.g. 60s [env: TS_BOOT_TIMEOUT]
    #[arg(long, id = "TS_BOOT_TIMEOUT", value_name = "DURATION")]
    boot_timeout: Option<String>,
    /// File descriptor to write one newline to once Running is reached (with --guard) [env: TS_READY_FD]
    #[arg(long, id = "TS_READY_FD", value_name = "FD")]
    ready_fd: Option<String>,
    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let (cli, phase) = ts_common::cli::parse_with::<Cli>("ts-auth", Cli::command());
    ts_localapi::run_phase(phase, |settings, explain| async move {
        if explain {
            for line in ts_auth::Plan::new(&settings, cli.guard).explain() {
                println!("{line}");
            }
            return Ok(());
        }
        ts_auth::run(&settings, cli.guard).await
    })
}
