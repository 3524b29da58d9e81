//! ts-init — tsboot's container entrypoint and PID 1.
//!
//! Duty: validate the TS_* configuration, run `ts-prep`, (in Kubernetes) `ts-kubestate
//! preflight`, start `tailscaled`, run `ts-auth` until tailscaled is Running, start the watchers
//! the configuration needs (`ts-proxy-rules`, `ts-kubestate`), log
//! `Startup complete, waiting for shutdown signal`, then reap every process, forward signals to
//! tailscaled and stop everything cleanly.
//! Inputs: the TS_* environment (see README), flags below override it.
//! Leaves behind: nothing running; the socket symlink /var/run/tailscale/tailscaled.sock.
//! Exit: 0 requested shutdown; 137 tailscaled had to be SIGKILLed; tailscaled's own status
//! (128+N for signal N) when it dies; 1 failed startup, failed watcher, or leaving Running;
//! 2 invalid configuration (nothing started).

use clap::{CommandFactory, Parser};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Boot tailscaled in a container: tsboot's entrypoint and PID 1",
    long_about = "Boot tailscaled in a container: tsboot's entrypoint and PID 1.\n\n\
Runs ts-prep, the Kubernetes preflight (ts-kubestate preflight) when in Kubernetes, starts \
tailscaled, runs ts-auth until tailscaled is Running, starts the watchers the configuration \
needs (ts-proxy-rules for TS_DEST_IP, ts-kubestate for the state secret), then reaps every \
process, forwards SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to tailscaled and shuts down on SIGTERM/SIGINT.\n\
Configuration is the TS_* environment of containerboot; every phase reads the same environment.",
    after_help = "Exit status: 0 requested shutdown; 137 tailscaled had to be SIGKILLed after the grace; \
tailscaled's own status (128+N if killed by signal N) when it exits on its own; 1 failed startup, \
failed watcher, or tailscaled leaving Running; 2 invalid configuration (nothing was started)."
)]
struct Cli {
    /// Path of tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, id = "TS_SOCKET", value_name = "PATH")]
    socket: Option<String>,
    /// Startup deadline, e.g. 60s or 2m [env: TS_BOOT_TIMEOUT]
    #[arg(long, id = "TS_BOOT_TIMEOUT", value_name = "DURATION")]
    boot_timeout: Option<String>,
    /// Time tailscaled gets after SIGTERM before SIGKILL, e.g. 20s [env: TS_SHUTDOWN_GRACE]
    #[arg(long, id = "TS_SHUTDOWN_GRACE", value_name = "DURATION")]
    shutdown_grace: Option<String>,
    #[command(flatten)]
    common: ts_common::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    let (_, phase) = ts_common::cli::parse_with::<Cli>("ts-init", Cli::command());
    // ts-init does not go through `cli::run_phase`: as PID 1 it must block signals before its
    // log writer thread exists, and judge TS_READY_FD before its signalfd exists.
    let code = ts_init::run(phase.overrides, phase.explain);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
