//! The firewall seam: every rule tsboot owns (ingress DNAT for `TS_DEST_IP`, egress to a
//! tailnet target) goes through a [`Driver`], carried by the backend tailscaled uses (D22).
//!
//! One [`Driver`], over one [`Runner`] (the single spawn path, with a timeout on every command),
//! for either backend:
//! * [`iptables`]: `iptables` / `ip6tables`, the reference's commands;
//! * [`nftables`]: the `nft` command line. Chosen over a netlink crate on purpose:
//!   no new dependency, the same program an operator inspects the rules with, a whole change
//!   applied as one `nft` transaction (atomic), and `nft -j` gives a stable JSON listing to
//!   diff against. The cost, one process per reconcile, is paid only when an address or the
//!   target changes.
//!
//! [`choose`] picks the backend the way tailscaled does (`TS_DEBUG_FIREWALL_MODE`, README D22).

pub mod iptables;
pub mod nftables;

use crate::rules::{Family, Rule};
use crate::ProxyError;
use std::future::Future;
use std::time::Duration;
use ts_common::argv::Command;
use ts_common::logging::outside;
use ts_common::settings::FirewallMode;

/// How long one iptables or nft command may take before it is killed and the reconcile fails.
/// They normally take milliseconds; a stuck xtables lock must not hang the watcher forever.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs firewall commands. The real one uses `PATH`; tests substitute a recording model.
pub trait Runner {
    /// Runs `cmd` and returns its stdout; a non-zero exit is an error carrying stderr.
    fn run(&mut self, cmd: &Command) -> impl Future<Output = Result<String, ProxyError>>;
}

/// Runs the programs found on `PATH`, as the reference does, each under a deadline.
#[derive(Debug)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner {
            timeout: COMMAND_TIMEOUT,
        }
    }
}

impl Runner for SystemRunner {
    async fn run(&mut self, cmd: &Command) -> Result<String, ProxyError> {
        use ts_localapi::command::{self, Output, RunError};
        let shown = cmd.display_redacted();
        let spawn = |source| ProxyError::Spawn {
            command: shown.clone(),
            program: cmd.program.clone(),
            source,
        };
        let output = command::run(cmd, self.timeout, Output::Capture)
            .await
            .map_err(|e| match e {
                RunError::Timeout { .. } => ProxyError::Timeout {
                    command: shown.clone(),
                    after: self.timeout,
                },
                RunError::Spawn(e) => spawn(e.into_io()),
                RunError::Wait { source, .. } => spawn(source),
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(ProxyError::Command {
                command: shown,
                program: cmd.program.clone(),
                status: describe_status(&output.status),
                stderr: outside(&stderr),
            });
        }
        // The reference let iptables write to its stderr; keep such warnings visible.
        if !stderr.trim().is_empty() {
            tracing::warn!("{shown}: {}", outside(&stderr));
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

/// Which netfilter interface carries tsboot's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }

    /// How to look at the rules by hand, for the log and `--explain`.
    pub fn inspect_hint(&self) -> String {
        match self {
            Backend::Iptables => format!(
                "iptables -t nat -S; iptables -t mangle -S FORWARD (ip6tables for IPv6); egress rules carry --comment {}",
                iptables::EGRESS_TAG
            ),
            Backend::Nftables => format!(
                "nft list table ip {0}; nft list table ip6 {0}",
                nftables::TABLE
            ),
        }
    }
}

/// The backend and the reason, for the log and `--explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub why: String,
}

/// What the choice looks at; the real one runs the tools, tests answer from a table.
pub trait Probe {
    /// Is `program` on `PATH`?
    fn on_path(&self, program: &str) -> bool;
    /// Runs a read-only command (`iptables -S`, `nft -j list ruleset`): stdout, or why not.
    fn read(&mut self, cmd: &Command) -> impl Future<Output = Result<String, ProxyError>>;
}

/// [`Probe`] over a [`Runner`] and the process's `PATH`.
pub struct SystemProbe<'a, R: Runner>(pub &'a mut R);

impl<R: Runner> Probe for SystemProbe<'_, R> {
    fn on_path(&self, program: &str) -> bool {
        ts_common::process::look_path(program).is_some()
    }

    async fn read(&mut self, cmd: &Command) -> Result<String, ProxyError> {
        self.0.run(cmd).await
    }
}

/// `iptables -S` and `ip6tables -S` (the filter table, as tailscaled counts): the number of
/// `-A` lines, or an error when neither runs.
async fn iptables_rule_count<P: Probe>(probe: &mut P) -> Result<usize, String> {
    let mut count = 0;
    let mut errors = Vec::new();
    for program in ["iptables", "ip6tables"] {
        match probe.read(&Command::new(program).arg("-S")).await {
            Ok(out) => {
                count += out
                    .lines()
                    .filter(|l| l.trim_start().starts_with("-A"))
                    .count()
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.len() == 2 {
        return Err(errors.join("; "));
    }
    Ok(count)
}

/// The rules in every nftables table (tailscaled counts them all), or why nft is unusable.
async fn nft_rule_count<P: Probe>(probe: &mut P) -> Result<usize, String> {
    if !probe.on_path("nft") {
        return Err("nft not found on PATH".into());
    }
    let out = probe
        .read(&nftables::list_ruleset())
        .await
        .map_err(|e| e.to_string())?;
    nftables::count_rules(&out)
}

/// tailscaled's choice (its `util/linuxfw` detector), made the same way from the same
/// environment: `TS_DEBUG_FIREWALL_MODE` first; unset means iptables unless neither `iptables`
/// nor `ip6tables` can run for want of the program; `auto` prefers whichever already holds
/// rules, and nftables when both or neither do and it works. (tailscaled may also get a hint
/// from the control plane, which tsboot cannot see: set the variable to pin the choice.)
pub async fn choose<P: Probe>(mode: Option<FirewallMode>, probe: &mut P) -> Choice {
    let choice = |backend, why: String| Choice { backend, why };
    match mode {
        Some(FirewallMode::Iptables) => {
            choice(Backend::Iptables, "TS_DEBUG_FIREWALL_MODE=iptables".into())
        }
        Some(FirewallMode::Nftables) => {
            choice(Backend::Nftables, "TS_DEBUG_FIREWALL_MODE=nftables".into())
        }
        None => {
            let (present, missing): (Vec<&str>, Vec<&str>) = ["iptables", "ip6tables"]
                .into_iter()
                .partition(|p| probe.on_path(p));
            let unusable = match present[..] {
                [_, _] => false,
                // One is missing: the other decides, as tailscaled runs both.
                [other] => probe.read(&Command::new(other).arg("-S")).await.is_err(),
                _ => true,
            };
            if unusable {
                choice(
                    Backend::Nftables,
                    format!(
                        "TS_DEBUG_FIREWALL_MODE unset and {} not found on PATH, so nftables (as tailscaled)",
                        missing.join(" and ")
                    ),
                )
            } else {
                choice(
                    Backend::Iptables,
                    "TS_DEBUG_FIREWALL_MODE unset: iptables, tailscaled's default".into(),
                )
            }
        }
        Some(FirewallMode::Auto) => {
            let ipt = iptables_rule_count(probe).await;
            let nft = nft_rule_count(probe).await;
            let shown = |r: &Result<usize, String>| match r {
                Ok(n) => n.to_string(),
                Err(e) => format!("unavailable ({e})"),
            };
            let counts = format!(
                "TS_DEBUG_FIREWALL_MODE=auto: nftables rules {}, iptables rules {}",
                shown(&nft),
                shown(&ipt)
            );
            match (&ipt, &nft) {
                (Ok(0) | Err(_), Ok(n)) if *n > 0 => {
                    choice(Backend::Nftables, format!("{counts}: nftables in use"))
                }
                (Ok(n), Ok(0) | Err(_)) if *n > 0 => {
                    choice(Backend::Iptables, format!("{counts}: iptables in use"))
                }
                (_, Ok(_)) => choice(Backend::Nftables, format!("{counts}: nftables available")),
                (Ok(_), Err(_)) => {
                    choice(Backend::Iptables, format!("{counts}: iptables available"))
                }
                (Err(_), Err(_)) => choice(
                    Backend::Iptables,
                    format!("{counts}: neither works, iptables as tailscaled falls back to"),
                ),
            }
        }
    }
}

/// Holds tsboot's rules in the kernel, in the chosen backend.
pub struct Driver<R: Runner> {
    pub backend: Backend,
    pub runner: R,
    /// [`Driver::ipv6_nat`]'s answer, asked once.
    ipv6_nat: Option<bool>,
}

impl<R: Runner> Driver<R> {
    pub fn new(backend: Backend, runner: R) -> Self {
        Driver {
            backend,
            runner,
            ipv6_nat: None,
        }
    }

    /// Makes the rules tsboot owns for `family` exactly `want` (all of that family, each once),
    /// new ones before old ones go so traffic never meets a gap. Returns what was changed.
    pub async fn reconcile(
        &mut self,
        family: Family,
        want: &[Rule],
    ) -> Result<Vec<String>, ProxyError> {
        match self.backend {
            Backend::Iptables => iptables::reconcile(&mut self.runner, family, want).await,
            Backend::Nftables => nftables::reconcile(&mut self.runner, family, want).await,
        }
    }

    /// Can this backend NAT IPv6 here? Asked before installing IPv6 egress for a name.
    pub async fn ipv6_nat(&mut self) -> bool {
        if self.ipv6_nat.is_none() {
            let probe = match self.backend {
                Backend::Iptables => iptables::list(Family::V6, "nat", "POSTROUTING"),
                Backend::Nftables => nftables::ipv6_nat_probe(),
            };
            self.ipv6_nat = Some(self.runner.run(&probe).await.is_ok());
        }
        self.ipv6_nat == Some(true)
    }
}
