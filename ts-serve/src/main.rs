//! ts-serve: the serve-config watcher for `TS_SERVE_CONFIG` (README D21).
//!
//! **Duty.** Once tailscaled is Running: unset any previous serve config, apply the file (an
//! `ipn.ServeConfig` JSON, `${TS_CERT_DOMAIN}` replaced by the node's first certificate
//! domain), and apply it again whenever the file or the certificate domain changes (inotify on
//! its directory, including ConfigMap symlink swaps and write-and-rename; a 5 s poll where
//! inotify cannot be had). A bad file never ends it: the last good config stays, one line says
//! what is wrong, and the next valid version is applied. Services in the config are advertised
//! (`TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT`, default true) and withdrawn at shutdown.
//!
//! **Inputs.** The `TS_*` environment ts-init gets: `TS_SERVE_CONFIG` (required), `TS_SOCKET`,
//! `TS_READY_FD`, `TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT`, `TS_SHUTDOWN_GRACE` (bounds the
//! wait after withdrawing services), `TS_LOG_FORMAT`; flags override them. ts-init starts it
//! once tailscaled is Running; it also runs alone: `ts-serve --config PATH --socket PATH`.
//!
//! **Leaves behind.** The applied serve config in tailscaled (kept on exit, as the reference
//! does); no advertised services after a clean exit. After the first reconcile it writes `\n`
//! to `TS_READY_FD` and closes it. `--explain` prints the plan and changes nothing.
//!
//! **Exit codes.** 0 on SIGTERM/SIGINT; 1 when tailscaled is gone or refuses to unset the
//! previous config; 2 on invalid configuration (nothing was changed).

use clap::Parser;
use std::process::ExitCode;
use ts_common::cli;
use ts_serve::Config;

const ABOUT: &str = "Apply TS_SERVE_CONFIG (Tailscale Serve) to tailscaled and keep it applied";

const ENV_HELP: &str = "\
Environment: TS_SERVE_CONFIG, TS_SOCKET, TS_READY_FD (see the flags); \
TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT (default true: advertise the config's svc: services, \
withdraw them at shutdown); TS_SHUTDOWN_GRACE (the wait after withdrawing services is at most \
half of it, 20s at most); TS_LOG_FORMAT (text or json); RUST_LOG (log level).";

#[derive(Parser, Debug)]
#[command(name = "ts-serve", version, about = ABOUT)]
struct Args {
    /// Path of the ipn.ServeConfig JSON file to apply [env: TS_SERVE_CONFIG]
    #[arg(long, id = "TS_SERVE_CONFIG", value_name = "PATH")]
    config: Option<String>,

    #[command(flatten)]
    watcher: cli::WatcherArgs,
}

fn main() -> ExitCode {
    let (args, phase): (Args, _) = cli::parse_args("ts-serve", ENV_HELP);
    let guard = args.watcher.guard;
    ts_localapi::run_phase(phase, |settings, explain| async move {
        ts_common::status::init(&settings, "ts-serve");
        let cfg = Config {
            guard,
            ..Config::from_settings(&settings)?
        };
        if explain {
            ts_serve::explain(&cfg).await.iter().for_each(cli::plan);
            return Ok(());
        }
        ts_serve::run_until_signal(&cfg).await
    })
}
