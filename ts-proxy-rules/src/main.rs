//! ts-proxy-rules: the firewall watcher for `TS_DEST_IP` (ingress) and a tailnet target
//! (egress) (the README's Configuration table1, README D9 and D22).
//!
//! **Duty.** Follow the node's tailnet addresses (and, for `TS_TAILNET_TARGET_FQDN`, the
//! netmap's peers) on tailscaled's IPN bus and keep exactly the wanted rules: the ingress DNAT
//! from the tailnet IP to `TS_DEST_IP`; for egress, DNAT of traffic arriving on a
//! non-`tailscale0` interface to the target, SNAT to the node's tailnet address, TCP MSS
//! clamping on `tailscale0`. Stale rules (old address, old target, duplicates) are removed;
//! rules tsboot does not own are never touched; a restart in the same network namespace adds
//! nothing. The rules go into the backend tailscaled uses: iptables or nftables.
//!
//! **Inputs.** The `TS_*` environment ts-init gets: `TS_DEST_IP` and/or `TS_TAILNET_TARGET_IP`
//! or `TS_TAILNET_TARGET_FQDN` (one is required; all need `TS_USERSPACE=false`),
//! `TS_DEBUG_FIREWALL_MODE`, `TS_SOCKET`, `TS_READY_FD`, `TS_LOG_FORMAT`; flags override them.
//! `iptables`/`ip6tables`/`nft` are found on `PATH`. ts-init starts it with no arguments once
//! tailscaled is Running; it also runs alone: `ts-proxy-rules --dest-ip 10.0.0.5 --socket PATH`.
//!
//! **Leaves behind.** The rules (kept on exit, as the reference does). After the first
//! reconcile it writes `\n` to `TS_READY_FD` and closes it. `--explain` prints the plan and
//! changes nothing.
//!
//! **Exit codes.** 0 on SIGTERM/SIGINT; 1 when tailscaled is gone, the node has no address of a
//! needed family, or a firewall command fails or hangs (the log names the command and its
//! stderr); 2 on invalid configuration (nothing was changed).

use clap::Parser;
use std::process::ExitCode;
use ts_common::{cli, exit};
use ts_proxy_rules::firewall::SystemRunner;
use ts_proxy_rules::{Config, ProxyError};

const ABOUT: &str = "Keep the DNAT rule to TS_DEST_IP and the egress rules to a tailnet target";

const ENV_HELP: &str = "\
Environment: TS_DEST_IP, TS_TAILNET_TARGET_IP, TS_TAILNET_TARGET_FQDN, TS_DEBUG_FIREWALL_MODE, \
TS_SOCKET, TS_READY_FD (see the flags); TS_USERSPACE must be false; TS_LOG_FORMAT (text or \
json); RUST_LOG (log level). iptables, ip6tables and nft are found on PATH.";

#[derive(Parser, Debug)]
#[command(name = "ts-proxy-rules", version, about = ABOUT)]
struct Args {
    /// Proxy destination: incoming tailnet traffic is DNATed to it [env: TS_DEST_IP]
    #[arg(long, value_name = "IP")]
    dest_ip: Option<String>,

    /// Egress: traffic arriving on a non-tailscale0 interface goes to this tailnet IP
    /// [env: TS_TAILNET_TARGET_IP]
    #[arg(long, value_name = "IP")]
    tailnet_target_ip: Option<String>,

    /// Egress to the peer with this MagicDNS name, resolved from the netmap
    /// [env: TS_TAILNET_TARGET_FQDN]
    #[arg(long, value_name = "NAME")]
    tailnet_target_fqdn: Option<String>,

    /// iptables, nftables or auto; unset: tailscaled's own choice [env: TS_DEBUG_FIREWALL_MODE]
    #[arg(long, value_name = "MODE")]
    firewall_mode: Option<String>,

    /// tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,

    /// Write one newline to this fd after the first reconcile, then close it [env: TS_READY_FD]
    #[arg(long, value_name = "FD")]
    ready_fd: Option<String>,

    /// Also exit 1 when tailscaled leaves Running (ts-init asks one long-lived phase to guard it)
    #[arg(long)]
    guard: bool,

    /// Print the plan (backend, the rules it keeps, socket, readiness) to stdout and change nothing
    #[arg(long)]
    explain: bool,
}

fn main() -> ExitCode {
    let args: Args = cli::parse_args(ENV_HELP);
    let overrides = cli::overrides(&[
        ("TS_DEST_IP", args.dest_ip.as_ref()),
        ("TS_TAILNET_TARGET_IP", args.tailnet_target_ip.as_ref()),
        ("TS_TAILNET_TARGET_FQDN", args.tailnet_target_fqdn.as_ref()),
        ("TS_DEBUG_FIREWALL_MODE", args.firewall_mode.as_ref()),
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
        for line in rt.block_on(ts_proxy_rules::explain(cfg, SystemRunner::default())) {
            cli::plan(line);
        }
        return exit::SUCCESS;
    }
    exit_code(rt.block_on(ts_proxy_rules::run_until_signal(
        cfg,
        SystemRunner::default(),
    )))
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
