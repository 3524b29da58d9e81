//! The boot plan: which phases run, with which command lines and environment. `--explain`
//! prints it and the boot executes it, so the two cannot drift apart.

use std::fmt::Write as _;
use std::time::Duration;
use ts_common::argv::{self, Command};
use ts_common::process::DAEMON_ENV_REMOVE;
use ts_common::settings::{AuthKeySource, Override, ServeSettings, Settings};

/// A tsboot phase binary ts-init runs, with its arguments.
#[derive(Clone, Debug)]
pub struct Phase {
    pub program: &'static str,
    pub args: Vec<String>,
    /// Long-lived phases report readiness on fd 3 (`TS_READY_FD=3`).
    pub readiness: bool,
}

impl Phase {
    fn new(program: &'static str, args: &[&str], readiness: bool) -> Self {
        Phase {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            readiness,
        }
    }

    pub fn display(&self) -> String {
        std::iter::once(self.program.to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Clone, Debug)]
pub struct BootPlan {
    /// Always run: it validates and, in kernel mode, prepares tun and sysctls.
    pub prep: Phase,
    /// In Kubernetes with secret storage: RBAC check and the authkey lookup, before tailscaled.
    pub preflight: Option<Phase>,
    /// The compatibility symlink of newer images (D17).
    pub socket_symlink: Option<std::path::PathBuf>,
    pub tailscaled: Command,
    /// Brings tailscaled to Running; stays resident as the guard of that state only when no
    /// watcher runs (see [`BootPlan::guard`]).
    pub auth: Phase,
    /// The `tailscale up` ts-auth will run (shown by `--explain`; ts-auth builds it itself).
    pub up: Command,
    pub proxy_rules: Option<Phase>,
    /// Started only if the preflight reports patch permission.
    pub kubestate: Option<Phase>,
    /// The serve-config watcher, when `TS_SERVE_CONFIG` is set.
    pub serve: Option<Phase>,
    /// On shutdown with the kube state store, before tailscaled is signalled: wait for the state
    /// secret to be consistent (`--timeout` is added when it runs).
    pub settle: Option<Phase>,
    /// Flags given to ts-init, passed to every phase as the variables they stand for.
    pub env_overrides: Vec<Override>,
    /// The health and metrics endpoint, started first when a handler is enabled (D20).
    pub health: Option<Phase>,
}

/// Which long-lived phase ends the container when tailscaled leaves Running. One guard is
/// enough, and a watcher already follows the bus, so ts-auth stays resident only when no
/// watcher runs: one process less to keep in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    Auth,
    ProxyRules,
    KubeState,
    Serve,
}

impl Guard {
    /// The phase's binary.
    pub fn program(self) -> &'static str {
        match self {
            Guard::Auth => "ts-auth",
            Guard::ProxyRules => "ts-proxy-rules",
            Guard::KubeState => "ts-kubestate",
            Guard::Serve => "ts-serve",
        }
    }

    /// How `--explain` names it: `ts-auth (--guard)`.
    fn flag(self) -> String {
        format!("{} ({GUARD_FLAG})", self.program())
    }
}

/// The health and metrics endpoint's binary (and its role name).
pub const HEALTH_PROGRAM: &str = "ts-health";

/// The flag that makes a phase the guard.
pub const GUARD_FLAG: &str = "--guard";

impl BootPlan {
    /// The guard, given whether the preflight reported patch permission (ts-kubestate runs
    /// only with it).
    pub fn guard(&self, can_patch: bool) -> Guard {
        if self.proxy_rules.is_some() {
            Guard::ProxyRules
        } else if self.kubestate.is_some() && can_patch {
            Guard::KubeState
        } else if self.serve.is_some() {
            Guard::Serve
        } else {
            Guard::Auth
        }
    }

    pub fn new(settings: &Settings, env_overrides: Vec<Override>) -> Self {
        let kube = settings.kube_state_enabled();
        BootPlan {
            prep: Phase::new("ts-prep", &[], false),
            preflight: kube
                .then(|| Phase::new("ts-kubestate", &["preflight", "--result-fd", "4"], false)),
            socket_symlink: settings.socket_symlink(),
            tailscaled: argv::tailscaled(settings),
            auth: Phase::new("ts-auth", &[], true),
            up: argv::tailscale_up(settings, settings.auth_key.as_ref()),
            proxy_rules: (settings.dest_ip.is_some() || settings.tailnet_target.is_some())
                .then(|| Phase::new("ts-proxy-rules", &[], true)),
            kubestate: kube
                .then(|| Phase::new("ts-kubestate", &["watch", "--can-patch", "true"], true)),
            serve: settings
                .serve
                .config
                .is_some()
                .then(|| Phase::new("ts-serve", &[], true)),
            settle: kube.then(|| Phase::new("ts-kubestate", &["settle"], false)),
            env_overrides,
            health: settings
                .local
                .enabled()
                .then(|| Phase::new(HEALTH_PROGRAM, &[], true)),
        }
    }

    /// How long the watchers get to stop at shutdown before tailscaled is signalled: ts-serve
    /// withdraws advertised services and then waits for control to move their clients.
    pub fn phases_stop(&self, settings: &Settings, default: Duration) -> Duration {
        match &self.serve {
            Some(_) => {
                default.max(ServeSettings::drain(settings.shutdown_grace) + Duration::from_secs(1))
            }
            None => default,
        }
    }

    /// The plan as `--explain` prints it.
    pub fn explain(&self, settings: &Settings) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        macro_rules! say {
            ($($arg:tt)*) => {{
                let _ = writeln!(out, $($arg)*);
            }};
        }
        say!("ts-init boot plan (nothing below has been run)");
        say!(
            "startup deadline: {:?} (TS_BOOT_TIMEOUT); shutdown grace: {:?} (TS_SHUTDOWN_GRACE)",
            settings.boot_timeout,
            settings.shutdown_grace
        );
        if let Some(h) = &self.health {
            say!(
                "0. start {} and wait until it listens (see `ts-health --explain`): {}; 503 until startup is complete",
                h.display(),
                health_endpoints(settings)
            );
        }
        say!("1. run {} (see `ts-prep --explain`)", self.prep.display());
        match &self.preflight {
            Some(p) => say!(
                "2. run {} (see `ts-kubestate preflight --explain`): SelfSubjectAccessReviews for get/update/patch on secret {:?}{}",
                p.display(),
                settings.kube_secret,
                if settings.auth_key.is_none() && !settings.oauth_login() {
                    "; reads the secret (its existence, or create permission, and its authkey)"
                } else {
                    "; reads the secret (its existence, or create permission)"
                }
            ),
            None => say!("2. no Kubernetes preflight (not in Kubernetes, or TS_KUBE_SECRET is empty)"),
        }
        match &self.socket_symlink {
            Some(link) => say!(
                "3. symlink {} -> {}",
                link.display(),
                settings.socket.display()
            ),
            None => say!("3. no socket symlink (TS_SOCKET is already the standard path)"),
        }
        say!(
            "4. start {} (own process group; without {})",
            self.tailscaled,
            DAEMON_ENV_REMOVE.join(", ")
        );
        say!(
            "5. wait for the LocalAPI socket {}",
            settings.socket.display()
        );
        let key_note = if settings.auth_key.is_none()
            && settings.auth_key_source == AuthKeySource::Unset
            && self.preflight.is_some()
            && !settings.oauth_login()
        {
            " (plus --authkey=<redacted> if the preflight finds one in the secret)"
        } else {
            ""
        };
        say!(
            "6. run {} : {} {}{}, then wait for Running{}",
            self.auth.display(),
            if settings.auth_once {
                "only on NeedsLogin:"
            } else {
                "at once:"
            },
            self.up,
            key_note,
            if settings.auth_once {
                format!(", then run {}", argv::tailscale_set(settings))
            } else {
                String::new()
            }
        );
        let mut n = 7;
        for (phase, what) in [
            (
                &self.proxy_rules,
                match (settings.dest_ip.is_some(), &settings.tailnet_target) {
                    (true, Some(_)) => {
                        "DNAT rule to TS_DEST_IP, egress rules to the tailnet target"
                    }
                    (false, Some(_)) => "egress rules to the tailnet target",
                    _ => "DNAT rule to TS_DEST_IP",
                },
            ),
            (
                &self.kubestate,
                "device info in the secret (only with patch permission)",
            ),
            (&self.serve, "serve config from TS_SERVE_CONFIG"),
        ] {
            if let Some(p) = phase {
                say!(
                    "{n}. start watcher {} ({what}) and wait for its readiness",
                    p.display()
                );
                n += 1;
            }
        }
        say!("{n}. log \"Startup complete, waiting for shutdown signal\"");
        // The same decision the boot makes once the preflight answered, for both answers.
        let (with_patch, without) = (self.guard(true), self.guard(false));
        let guard = if with_patch == without {
            match with_patch {
                Guard::Auth => format!("{}, which stays resident", with_patch.flag()),
                other => other.flag(),
            }
        } else {
            format!(
                "{} if the preflight reports patch permission, else {}",
                with_patch.flag(),
                without.flag()
            )
        };
        say!("guard of the Running state (exit 1 when tailscaled leaves it): {guard}");
        if let Some(p) = &self.settle {
            say!(
                "on shutdown, before SIGTERM to tailscaled: run {} --timeout <at most {:?}, half of TS_SHUTDOWN_GRACE> (wait for a consistent state secret)",
                p.display(),
                settings.shutdown_grace / 2
            );
        }
        for var in &settings.unsupported_vars {
            say!("warning: {var} is set but not supported by tsboot yet; it is ignored");
        }
        out
    }
}

/// What ts-health serves where, for `--explain`.
fn health_endpoints(settings: &Settings) -> String {
    let local = &settings.local;
    let mut parts = Vec::new();
    if let Some(addr) = &local.addr {
        let paths: Vec<&str> = [
            (local.health_check, "/healthz"),
            (local.metrics, "/metrics"),
        ]
        .into_iter()
        .filter_map(|(on, path)| on.then_some(path))
        .collect();
        parts.push(format!("{} on {addr}", paths.join(" and ")));
    }
    if let Some(addr) = &local.deprecated_health_addr {
        parts.push(format!(
            "/healthz on {addr} (TS_HEALTHCHECK_ADDR_PORT, deprecated)"
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard_line(vars: &[(&str, &str)]) -> String {
        let settings = Settings::from_vars(vars.iter().copied()).expect("settings");
        let plan = BootPlan::new(&settings, Vec::new());
        plan.explain(&settings)
            .lines()
            .find_map(|l| {
                l.strip_prefix("guard of the Running state (exit 1 when tailscaled leaves it): ")
                    .map(str::to_string)
            })
            .expect("a guard line")
    }

    #[test]
    fn explain_names_the_guard_the_boot_picks() {
        let kube = [
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ];
        assert_eq!(guard_line(&[]), "ts-auth (--guard), which stays resident");
        assert_eq!(
            guard_line(&[("TS_USERSPACE", "false"), ("TS_DEST_IP", "10.0.0.5")]),
            "ts-proxy-rules (--guard)"
        );
        assert_eq!(
            guard_line(&[("TS_SERVE_CONFIG", "/s.json")]),
            "ts-serve (--guard)"
        );
        assert_eq!(
            guard_line(&kube),
            "ts-kubestate (--guard) if the preflight reports patch permission, else ts-auth (--guard)"
        );
        let mut kube_serve = kube.to_vec();
        kube_serve.push(("TS_SERVE_CONFIG", "/s.json"));
        assert_eq!(
            guard_line(&kube_serve),
            "ts-kubestate (--guard) if the preflight reports patch permission, else ts-serve (--guard)"
        );
    }
}
