//! ts-prep: prepare the host for kernel-mode tailscaled (the README's boot order).
//!
//! **Duty.** In kernel mode (`TS_USERSPACE=false`): make sure `<root>/dev/net/tun` exists
//! (creating `dev/net` 0755 and the char device 10,200 0600 only if missing), and enable IP
//! forwarding for the families `TS_ROUTES` / `TS_DEST_IP` contain
//! (`proc/sys/net/ipv4/ip_forward`, then `proc/sys/net/ipv6/conf/all/forwarding`), writing `1`
//! only where the value is not already `1`. In userspace mode (the default) there is nothing to
//! do.
//!
//! **Inputs.** The `TS_*` environment ts-init gets (read by `ts_common::settings`): `TS_USERSPACE`,
//! `TS_ROUTES`, `TS_DEST_IP`, `TS_TEST_ONLY_ROOT`, plus `KUBERNETES_SERVICE_HOST` (picks the
//! advice) and `TS_LOG_FORMAT`. Flags override the variable named in their help. ts-init runs
//! this binary with no arguments; in Kubernetes it can run alone as a privileged initContainer.
//!
//! **Leaves behind.** The tun node and the sysctl values; nothing else. Every sysctl is read
//! before anything is changed, and a failed write restores the ones this run wrote.
//! `--explain` prints the plan and changes nothing.
//!
//! **Exit codes.** 0 done (or nothing to do), 1 a change was refused (the log carries the
//! reference's message and what to do), 2 invalid configuration (nothing changed).

use clap::Parser;
use std::process::ExitCode;
use ts_common::cli;
use ts_prep::RealHost;

const ABOUT: &str = "Prepare the host for kernel-mode tailscaled: /dev/net/tun and IP forwarding";

const LONG_ABOUT: &str = "\
Prepare the host for kernel-mode tailscaled (the phase containerboot runs before starting it).

In kernel mode (TS_USERSPACE=false) ts-prep makes sure <root>/dev/net/tun exists (char device \
10,200, created only if missing) and enables IP forwarding for the IP families that TS_ROUTES, \
TS_DEST_IP and TS_TAILNET_TARGET_IP contain (IPv4 for TS_TAILNET_TARGET_FQDN) (<root>/proc/sys/net/ipv4/ip_forward, <root>/proc/sys/net/ipv6/conf/all/forwarding), \
writing 1 only where the value is not already 1. In userspace mode (the default) there is nothing \
to do.

ts-init runs it with no arguments; it also runs alone, e.g. as a privileged Kubernetes \
initContainer, configured by the same environment.";

const ENV_HELP: &str = "\
Environment: TS_USERSPACE, TS_ROUTES, TS_DEST_IP, TS_TEST_ONLY_ROOT (see the flags); \
TS_TAILNET_TARGET_IP / TS_TAILNET_TARGET_FQDN (egress: the target's family); \
KUBERNETES_SERVICE_HOST (non-empty: the advice on failure is for Kubernetes); \
TS_LOG_FORMAT (text or json); RUST_LOG (log level).";

#[derive(Parser, Debug)]
#[command(name = "ts-prep", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Args {
    /// Userspace networking (true: nothing to prepare) [env: TS_USERSPACE]
    #[arg(long, id = "TS_USERSPACE", value_name = "BOOL")]
    userspace: Option<String>,

    /// Comma-separated CIDRs to be advertised; their families get forwarding [env: TS_ROUTES]
    #[arg(long, id = "TS_ROUTES", value_name = "CIDRS")]
    routes: Option<String>,

    /// Proxy destination; its family gets forwarding [env: TS_DEST_IP]
    #[arg(long, id = "TS_DEST_IP", value_name = "IP")]
    dest_ip: Option<String>,

    /// Prefix of dev/ and proc/ paths [env: TS_TEST_ONLY_ROOT]
    #[arg(long, id = "TS_TEST_ONLY_ROOT", value_name = "DIR")]
    root: Option<String>,

    #[command(flatten)]
    common: cli::CommonArgs,
}

fn main() -> ExitCode {
    let (_, phase): (Args, _) = cli::parse_args("ts-prep", ENV_HELP);
    cli::run_phase(phase, |settings, explain| {
        if explain {
            // Planning only needs the read-only probe: --explain cannot change anything.
            ts_prep::plan(&settings, &RealHost)
                .explain()
                .iter()
                .for_each(cli::plan);
            return Ok(());
        }
        ts_prep::run(&settings, &mut RealHost).map(drop)
    })
}
