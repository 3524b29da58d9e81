//! ts-proxy-rules: the DNAT watcher for `TS_DEST_IP` (containerboot.md §11, deviation D9).
//!
//! **Duty.** Keep exactly one rule `iptables -t nat -I PREROUTING 1 -d <tailnet IP> -j DNAT
//! --to-destination <TS_DEST_IP>` (`ip6tables` for an IPv6 destination), following the node's
//! tailnet address on tailscaled's IPN bus: on every change the rule for the new address is
//! inserted if missing and rules of the same shape for other addresses are deleted. Rules of any
//! other shape are never touched, and a restart in the same network namespace adds nothing.
//!
//! **Inputs.** The `TS_*` environment ts-init gets: `TS_DEST_IP` (required; needs
//! `TS_USERSPACE=false`), `TS_SOCKET`, `TS_READY_FD`, `TS_LOG_FORMAT`; flags override them.
//! `iptables`/`ip6tables` are found on `PATH`. ts-init starts it with no arguments once
//! tailscaled is Running; it also runs alone: `ts-proxy-rules --dest-ip 10.0.0.5 --socket PATH`.
//!
//! **Leaves behind.** The one DNAT rule in the nat table's PREROUTING chain (kept on exit, as
//! the reference does). After the first reconcile it writes `\n` to `TS_READY_FD` and closes it.
//! `--explain` prints the plan and changes nothing.
//!
//! **Exit codes.** 0 on SIGTERM/SIGINT; 1 when tailscaled is gone, the node has no address of
//! the destination's family, or iptables fails (the log names the command and its stderr);
//! 2 on invalid configuration (nothing was changed).

use clap::Parser;
use std::process::ExitCode;
use ts_common::{cli, exit};
use ts_proxy_rules::{Config, ProxyError, SystemIptables};

const ABOUT: &str = "Keep one DNAT rule from this node's tailnet IP to TS_DEST_IP";

const ENV_HELP: &str = "\
Environment: TS_DEST_IP, TS_SOCKET, TS_READY_FD (see the flags); TS_USERSPACE must be false \
when TS_DEST_IP is set; TS_LOG_FORMAT (text or json); RUST_LOG (log level). \
iptables and ip6tables are found on PATH.";

#[derive(Parser, Debug)]
#[command(name = "ts-proxy-rules", version, about = ABOUT)]
struct Args {
    /// Proxy destination: incoming tailnet traffic is DNATed to it [env: TS_DEST_IP]
    #[arg(long, value_name = "IP")]
    dest_ip: Option<String>,

    /// tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,

    /// Write one newline to this fd after the first reconcile, then close it [env: TS_READY_FD]
    #[arg(long, value_name = "FD")]
    ready_fd: Option<String>,

    /// Also exit 1 when tailscaled leaves Running (ts-init asks one long-lived phase to guard it)
    #[arg(long)]
    guard: bool,

    /// Print the plan (program, the rule it keeps, socket, readiness) to stdout and change nothing
    #[arg(long)]
    explain: bool,
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args(ENV_HELP);
    let overrides = cli::overrides(&[
        ("TS_DEST_IP", args.dest_ip.as_ref()),
        ("TS_SOCKET", args.socket.as_ref()),
        ("TS_READY_FD", args.ready_fd.as_ref()),
    ]);
    let code = match cli::load_settings("ts-proxy-rules", &overrides) {
        Err(code) => code,
        Ok(settings) => {
            cli::warn_unsupported(&settings);
            ts_common::status::init(&settings, "ts-proxy-rules");
            match Config::from_settings(&settings) {
                Err(e) => exit_code(Err(e)),
                Ok(cfg) => run(
                    &Config {
                        guard: args.guard,
                        ..cfg
                    },
                    args.explain,
                ),
            }
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cfg: &Config, explain: bool) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    if explain {
        for line in rt.block_on(ts_proxy_rules::explain(cfg)) {
            cli::plan(line);
        }
        return exit::SUCCESS;
    }
    exit_code(rt.block_on(ts_proxy_rules::run_until_signal(cfg, &mut SystemIptables)))
}

/// The one place a result becomes an exit status.
fn exit_code(result: Result<(), ProxyError>) -> i32 {
    match result {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}
