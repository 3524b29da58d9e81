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
use ts_common::cli;
use ts_proxy_rules::firewall::SystemRunner;
use ts_proxy_rules::Config;

const ABOUT: &str = "Keep the DNAT rule to TS_DEST_IP and the egress rules to a tailnet target";

const ENV_HELP: &str = "\
Environment: TS_DEST_IP, TS_TAILNET_TARGET_IP, TS_TAILNET_TARGET_FQDN, TS_DEBUG_FIREWALL_MODE, \
TS_SOCKET, TS_READY_FD (see the flags); TS_USERSPACE must be false; TS_LOG_FORMAT (text or \
json); RUST_LOG (log level). iptables, ip6tables and nft are found on PATH.";

#[derive(Parser, Debug)]
#[command(name = "ts-proxy-rules", version, about = ABOUT)]
struct Args {
    /// Proxy destination: incoming tailnet traffic is DNATed to it [env: TS_DEST_IP]
    #[arg(long, id = "TS_DEST_IP", value_name = "IP")]
    dest_ip: Option<String>,

    /// Egress: traffic arriving on a non-tailscale0 interface goes to this tailnet IP
    /// [env: TS_TAILNET_TARGET_IP]
    #[arg(long, id = "TS_TAILNET_TARGET_IP", value_name = "IP")]
    tailnet_target_ip: Option<String>,

    /// Egress to the peer with this MagicDNS name, resolved from the netmap
    /// [env: TS_TAILNET_TARGET_FQDN]
    #[arg(long, id = "TS_TAILNET_TARGET_FQDN", value_name = "NAME")]
    tailnet_target_fqdn: Option<String>,

    /// iptables, nftables or auto; unset: tailscaled's own choice [env: TS_DEBUG_FIREWALL_MODE]
    #[arg(long, id = "TS_DEBUG_FIREWALL_MODE", value_name = "MODE")]
    firewall_mode: Option<String>,

    #[command(flatten)]
    watcher: cli::WatcherArgs,
}

fn main() -> ExitCode {
    let (args, phase): (Args, _) = cli::parse_args("ts-proxy-rules", ENV_HELP);
    ts_localapi::run_phase(phase, |settings, explain| async move {
        ts_common::status::init(&settings, "ts-proxy-rules");
        let cfg = Config {
            guard: args.watcher.guard,
            ..Config::from_settings(&settings)?
        };
        if explain {
            let lines = ts_proxy_rules::explain(&cfg, SystemRunner::default()).await;
            lines.iter().for_each(cli::plan);
            return Ok(());
        }
        ts_proxy_rules::run_until_signal(&cfg, SystemRunner::default()).await
    })
}
