//! ts-proxy-rules: keeps exactly one DNAT rule from this node's tailnet IP to `TS_DEST_IP`
//! (containerboot.md §11, deviation D9).
//!
//! The rule is the reference's, byte for byte:
//! `iptables -t nat -I PREROUTING 1 -d <tailnet IP> -j DNAT --to-destination <TS_DEST_IP>`
//! (`ip6tables` for an IPv6 destination). Where the reference inserted one more rule on every
//! address change and never removed any, this watcher reconciles: it lists PREROUTING
//! (`-S`), inserts the rule for the current address only if it is missing, and deletes rules of
//! exactly that shape to the same destination whose `-d` is another address (or a duplicate).
//! Rules of any other shape — extra matches, another destination — belong to someone else and
//! are never touched. A restarted container in a surviving network namespace therefore finds its
//! rule and adds nothing.
//!
//! Addresses come from every bus era (D10): seed `NetMap.Addresses`, `NetMap.SelfNode.Addresses`
//! (v1.50+), `SelfChange` (v1.100+), through [`Notify::self_identity`].

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use ts_common::argv::{self, Command, RuleOp};
use ts_common::localapi::{Follower, LocalApi, LocalApiError, MASK_STEADY};
use ts_common::notify::{single_ip, Notify};
use ts_common::settings::{IpPrefix, Settings};

/// What the watcher needs, taken from [`Settings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `iptables` or `ip6tables`, by the destination's family.
    pub program: &'static str,
    pub dest: IpAddr,
    /// `TS_DEST_IP` verbatim: what goes after `--to-destination`, as in the reference.
    pub dest_raw: String,
    pub socket: PathBuf,
    pub ready_fd: Option<i32>,
    /// Also guard the Running state (ts-init asks one long-lived phase to): exit 1 when
    /// tailscaled leaves it.
    pub guard: bool,
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Config, ProxyError> {
        let dest = s.dest_ip.ok_or(ProxyError::NoDestination)?;
        Ok(Config {
            program: argv::dnat_program(&dest),
            dest,
            dest_raw: s.dest_ip_raw.clone(),
            socket: s.socket.clone(),
            ready_fd: s.ready_fd,
            guard: false,
        })
    }

    fn family(&self) -> &'static str {
        if self.dest.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("TS_DEST_IP is not set, so there is no DNAT rule to keep: set TS_DEST_IP (or --dest-ip) to the proxy destination, with TS_USERSPACE=false")]
    NoDestination,
    #[error("no tailscale IP matching family of {dest} found in [{}]; the node has no {family} tailnet address, so {dest} cannot be proxied (check the tailnet's IP settings or use a destination of the other family)", join(.addresses))]
    NoFamilyAddress {
        dest: IpAddr,
        family: &'static str,
        addresses: Vec<IpPrefix>,
    },
    #[error("executing {command} failed: {status}{}; the container needs CAP_NET_ADMIN and a working {program}", stderr_suffix(.stderr))]
    Command {
        command: String,
        program: String,
        status: String,
        stderr: String,
    },
    #[error("executing {command} failed: {source} (is {program} installed and on PATH?)")]
    Spawn {
        command: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    LeftRunning(#[from] ts_common::notify::LeftRunning),
    #[error("watching tailscaled: {0}")]
    Bus(#[source] LocalApiError),
    #[error("reporting readiness on TS_READY_FD={fd}: {source} (was the fd really passed to this process?)")]
    Ready {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

impl ProxyError {
    /// 2 for configuration problems (nothing was changed), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProxyError::NoDestination => ts_common::exit::USAGE,
            _ => ts_common::exit::FAILURE,
        }
    }
}

fn join(addresses: &[IpPrefix]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The local end of the rule: the first single-IP address of the destination's family
/// (reference `installIPTablesRule`).
pub fn pick_local(addresses: &[IpPrefix], dest: IpAddr) -> Result<IpAddr, ProxyError> {
    addresses
        .iter()
        .find(|p| p.addr.is_ipv4() == dest.is_ipv4() && p.len == single_ip(p.addr).len)
        .map(|p| p.addr)
        .ok_or_else(|| ProxyError::NoFamilyAddress {
            dest,
            family: if dest.is_ipv4() { "IPv4" } else { "IPv6" },
            addresses: addresses.to_vec(),
        })
}

/// A rule of our shape found in the listing: `-d <addr> -j DNAT --to-destination <dest>`.
fn our_rule(line: &str, dest: IpAddr) -> Option<IpAddr> {
    let rest = line.strip_prefix("-A PREROUTING ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [d_flag, d, j_flag, target, to_flag, to] = words.as_slice() else {
        return None;
    };
    if (*d_flag, *j_flag, *target, *to_flag) != ("-d", "-j", "DNAT", "--to-destination") {
        return None;
    }
    if to.parse::<IpAddr>().ok()? != dest {
        return None;
    }
    // iptables-save prints `-d` as a prefix; only a single address is ours.
    let (addr, len) = match d.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (d.parse::<IpAddr>().ok()?, None),
    };
    match len {
        Some(l) if l != single_ip(addr).len => None,
        _ => Some(addr),
    }
}

/// The commands that turn `listing` (`-S PREROUTING` output) into exactly one rule for
/// `local`: the insert first (so the destination is never unreachable in between), then the
/// deletions of stale addresses and duplicates.
pub fn plan_changes(listing: &str, cfg: &Config, local: IpAddr) -> Vec<Command> {
    let mut have_current = false;
    let mut deletes = Vec::new();
    for addr in listing.lines().filter_map(|l| our_rule(l.trim(), cfg.dest)) {
        if addr == local && !have_current {
            have_current = true;
        } else {
            deletes.push(argv::dnat_rule(
                RuleOp::Delete,
                cfg.program,
                &addr.to_string(),
                &cfg.dest_raw,
            ));
        }
    }
    let mut out = Vec::new();
    if !have_current {
        out.push(argv::dnat_rule(
            RuleOp::Insert,
            cfg.program,
            &local.to_string(),
            &cfg.dest_raw,
        ));
    }
    out.extend(deletes);
    out
}

/// Runs iptables commands. The real one uses `PATH`; tests substitute a recording fake.
pub trait Iptables {
    /// Runs `cmd` and returns its stdout; a non-zero exit is an error carrying stderr.
    fn run(&mut self, cmd: &Command) -> impl Future<Output = Result<String, ProxyError>>;
}

/// Runs the programs found on `PATH`, as the reference does.
#[derive(Debug, Default)]
pub struct SystemIptables;

impl Iptables for SystemIptables {
    async fn run(&mut self, cmd: &Command) -> Result<String, ProxyError> {
        let output = tokio::process::Command::new(&cmd.program)
            .args(cmd.argv())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| ProxyError::Spawn {
                command: cmd.display_redacted(),
                program: cmd.program.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(ProxyError::Command {
                command: cmd.display_redacted(),
                program: cmd.program.clone(),
                status: describe_status(&output.status),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        // The reference let iptables write to its stderr; keep such warnings visible.
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.trim().is_empty() {
            tracing::warn!("{}: {}", cmd.display_redacted(), stderr.trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Brings the rules in line with `local` once; returns the commands that changed something.
pub async fn reconcile<R: Iptables>(
    cfg: &Config,
    runner: &mut R,
    local: IpAddr,
) -> Result<Vec<Command>, ProxyError> {
    let listing = runner.run(&argv::list_prerouting(cfg.program)).await?;
    let changes = plan_changes(&listing, cfg, local);
    for cmd in &changes {
        runner.run(cmd).await?;
        tracing::info!("ran {}", cmd.display_redacted());
    }
    Ok(changes)
}

/// Follows the IPN bus and reconciles on every address change, forever. Returns only with an
/// error: tailscaled gone, no address of the right family, an iptables failure.
pub async fn watch<R: Iptables>(cfg: &Config, runner: &mut R) -> Result<Infallible, ProxyError> {
    let mut follower = Follower::new(LocalApi::new(&cfg.socket), MASK_STEADY);
    let mut applied: Option<IpAddr> = None;
    let mut ready_fd = cfg.ready_fd;
    tracing::info!(
        "watching tailscaled at {} to keep the DNAT rule to {} ({})",
        cfg.socket.display(),
        cfg.dest_raw,
        cfg.program
    );
    loop {
        let msg: Notify = follower.next().await.map_err(ProxyError::Bus)?;
        if cfg.guard {
            msg.check_still_running()?;
        }
        let Some(me) = msg.self_identity() else {
            continue;
        };
        let local = pick_local(&me.addresses, cfg.dest)?;
        if applied == Some(local) {
            continue;
        }
        let changes = ts_common::status::track(reconcile(cfg, runner, local)).await?;
        if changes.is_empty() {
            tracing::info!(
                "DNAT rule {local} -> {} already in place, nothing to change",
                cfg.dest_raw
            );
        } else {
            tracing::info!("DNAT rule {local} -> {} in place", cfg.dest_raw);
        }
        applied = Some(local);
        if let Some(fd) = ready_fd.take() {
            ts_common::process::notify_ready(Some(fd))
                .map_err(|source| ProxyError::Ready { fd, source })?;
            tracing::info!("first reconcile done, readiness reported on fd {fd}");
        }
    }
}

/// [`watch`] until SIGTERM or SIGINT (then `Ok`). The handlers are installed before the first
/// connection so a shutdown during startup is a clean exit too.
pub async fn run_until_signal<R: Iptables>(cfg: &Config, runner: &mut R) -> Result<(), ProxyError> {
    let mut stop = ts_common::signals::StopSignals::install();
    tokio::select! {
        r = watch(cfg, runner) => r.map(|never| match never {}),
        sig = stop.recv() => {
            tracing::info!("received {sig}, exiting");
            ts_common::status::stopped();
            Ok(())
        }
    }
}

/// The `--explain` plan: what would be run and kept, without running anything. When tailscaled
/// answers, its current address is shown too (a read of the bus, nothing else).
pub async fn explain(cfg: &Config) -> Vec<String> {
    let program = cfg.program;
    let on_path = ts_common::process::look_path(program).map_or_else(
        || "not found on PATH".to_string(),
        |p| p.display().to_string(),
    );
    let mut out = vec![
        "ts-proxy-rules plan (nothing is changed by --explain):".to_string(),
        format!(
            "  destination: {} ({}), so the program is {program} ({on_path})",
            cfg.dest_raw,
            cfg.family()
        ),
        format!(
            "  watch: GET /localapi/v0/watch-ipn-bus?mask={MASK_STEADY} on {}, watching again whenever the stream ends, until tailscaled is gone",
            cfg.socket.display()
        ),
        format!(
            "  on every change of this node's first {} tailnet address, read the rules with: {}",
            cfg.family(),
            argv::list_prerouting(program).display_redacted()
        ),
        format!(
            "  keep exactly one rule, inserting it if missing: {}",
            argv::dnat_rule(RuleOp::Insert, program, "<tailnet IP>", &cfg.dest_raw).display_redacted()
        ),
        format!(
            "  delete stale ones (other address, or duplicates): {}",
            argv::dnat_rule(RuleOp::Delete, program, "<old tailnet IP>", &cfg.dest_raw).display_redacted()
        ),
        "  rules of any other shape are left alone".to_string(),
        match cfg.ready_fd {
            Some(fd) => format!("  readiness: write \"\\n\" to fd {fd} after the first reconcile, then close it"),
            None => "  readiness: none (TS_READY_FD / --ready-fd unset)".to_string(),
        },
        "  exit: 0 on SIGTERM/SIGINT; 1 when tailscaled is gone, the node has no address of the destination's family, or iptables fails; 2 on invalid configuration".to_string(),
    ];
    let current = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut w = LocalApi::new(&cfg.socket)
            .watch_ipn_bus(MASK_STEADY)
            .await?;
        w.next().await
    })
    .await;
    out.push(match current {
        Ok(Ok(Some(msg))) => match msg
            .self_identity()
            .map(|me| pick_local(&me.addresses, cfg.dest))
        {
            Some(Ok(local)) => format!(
                "  now: tailnet address {local}, so the rule would be: {}",
                argv::dnat_rule(RuleOp::Insert, program, &local.to_string(), &cfg.dest_raw)
                    .display_redacted()
            ),
            Some(Err(e)) => format!("  now: {e}"),
            None => "  now: tailscaled has no netmap yet (not logged in?)".to_string(),
        },
        Ok(Ok(None)) => "  now: tailscaled ended the stream at once".to_string(),
        Ok(Err(e)) => format!("  now: {e}"),
        Err(_) => "  now: tailscaled did not answer within 2s".to_string(),
    });
    out
}

#[cfg(test)]
mod tests;
