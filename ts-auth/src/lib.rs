//! ts-auth: `tailscale up` with the reference's argv and the login watch over the IPN bus until
//! tailscaled is Running (the README's boot order). In guard mode (what ts-init asks for) it
//! then stays resident and ends the container when tailscaled leaves Running (the README's
//! "Signals and exit status of ts-init").

use std::time::Duration;
use tokio::time::Instant;
use ts_common::argv;
use ts_common::logging::outside;
use ts_common::settings::Settings;
use ts_localapi::localapi::{BusWatch, Follower, LocalApi, LocalApiError, MASK_LEAN};
use ts_localapi::notify::{BackendState, Notify};
use ts_localapi::signals::StopSignals;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("failed to watch tailscaled for updates: {0}")]
    Watch(#[source] LocalApiError),
    #[error("rewatching tailscaled for updates after auth: {0}")]
    Rewatch(#[source] LocalApiError),
    #[error("failed to read from tailscaled: {0}")]
    Read(#[source] LocalApiError),
    #[error("failed to read from tailscaled: EOF (tailscaled closed the IPN bus stream)")]
    BusClosed,
    // The reference wraps this twice; operators grep for the exact text.
    #[error("failed to auth tailscale: failed to auth tailscale: {0}")]
    Up(#[source] CliError),
    /// `tailscale set` after Running (TS_AUTH_ONCE), worded as today's image words it.
    #[error("failed to auth tailscale: {0}")]
    Set(#[source] CliError),
    #[error(transparent)]
    LeftRunning(#[from] ts_localapi::notify::LeftRunning),
    #[error("tailscaled did not reach Running within {0:?} (TS_BOOT_TIMEOUT); check the log above for a login URL or machine approval")]
    Deadline(Duration),
    #[error("interrupted by {0} before tailscaled reached Running")]
    Interrupted(&'static str),
}

/// Why a `tailscale` command failed, worded as today's image words it
/// (`tailscale up failed: exit status 1`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotFound(String),
    #[error("starting tailscale {sub}: {source}")]
    Start {
        sub: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for tailscale {sub}: {source}")]
    Wait {
        sub: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed; `how` is `exit status N` or `signal: <name>`.
    #[error("tailscale {sub} failed: {how}")]
    Failed { sub: &'static str, how: String },
}

/// When `tailscale up` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpWhen {
    /// At once, before the first watch (the environment owns every `up` preference).
    AtOnce,
    /// Only when tailscaled reports NeedsLogin (`TS_AUTH_ONCE`).
    OnNeedsLogin,
}

/// What ts-auth does, decided once from the settings: [`run`] follows it step by step and
/// `--explain` prints it, so the two cannot tell different stories.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `tailscale up` with the reference's argv (the auth key inside is redacted when shown).
    pub up: argv::Command,
    pub up_when: UpWhen,
    /// The mask of every watch: the state only, no netmap (README D26).
    pub mask: u64,
    pub socket: std::path::PathBuf,
    /// How long reaching Running may take (`TS_BOOT_TIMEOUT`).
    pub timeout: Duration,
    /// `tailscale set` once Running, whether or not `up` ran (`TS_AUTH_ONCE`, D19).
    pub set: Option<argv::Command>,
    /// Stay on the watch after Running and fail when tailscaled leaves it.
    pub guard: bool,
    /// No auth key and no OAuth client: a login would be interactive.
    pub interactive: bool,
}

impl Plan {
    pub fn new(settings: &Settings, guard: bool) -> Plan {
        Plan {
            up: argv::tailscale_up(settings, settings.auth_key.as_ref()),
            up_when: if settings.auth_once {
                UpWhen::OnNeedsLogin
            } else {
                UpWhen::AtOnce
            },
            mask: MASK_LEAN,
            socket: settings.socket.clone(),
            timeout: settings.boot_timeout,
            set: settings.auth_once.then(|| argv::tailscale_set(settings)),
            guard,
            interactive: settings.auth_key.is_none() && !settings.oauth_login(),
        }
    }

    /// The plan as `--explain` prints it, one line each.
    pub fn explain(&self) -> Vec<String> {
        let watch = format!(
            "watch the IPN bus (GET /localapi/v0/watch-ipn-bus?mask={} on {})",
            self.mask,
            self.socket.display()
        );
        let up = &self.up;
        let (first, second) = match self.up_when {
            UpWhen::OnNeedsLogin => (
                watch,
                format!("only if tailscaled reports NeedsLogin: run {up}, then watch again"),
            ),
            UpWhen::AtOnce => (format!("run {up} at once"), watch),
        };
        let mut out = vec![
            "ts-auth plan (nothing below has been run)".to_string(),
            format!("1. {first}"),
            format!("2. {second}"),
            format!(
                "3. until Running, at most {:?} (TS_BOOT_TIMEOUT)",
                self.timeout
            ),
        ];
        out.extend(
            self.set
                .iter()
                .map(|set| format!("3b. once Running (whether or not up ran): run {set}")),
        );
        out.push(if self.guard {
            "4. report readiness on TS_READY_FD, then stay on the same watch and exit 1 if tailscaled leaves Running"
        } else {
            "4. report readiness on TS_READY_FD if set, then exit 0"
        }.to_string());
        if self.interactive {
            out.push(
                "note: no auth key (TS_AUTHKEY / TS_AUTH_KEY): login will be interactive if needed"
                    .to_string(),
            );
        }
        out
    }
}

/// Brings tailscaled to Running. Returns when Running is reached (not with `guard`), or when
/// guarding ends: `Ok(())` on a requested stop, an error when tailscaled left Running.
pub async fn run(settings: &Settings, guard: bool) -> Result<(), AuthError> {
    let plan = Plan::new(settings, guard);
    let api = LocalApi::new(plan.socket.clone());
    let deadline = Instant::now() + plan.timeout;
    let login = Login {
        plan: &plan,
        api: &api,
        deadline,
        did_login: false,
    };
    let mut stop = StopSignals::install();
    let watch = tokio::select! {
        reached = login.until_running_then_set() => reached?,
        sig = stop.recv() => return Err(AuthError::Interrupted(sig)),
    };
    if let Err(e) = ts_common::process::notify_ready(settings.ready_fd) {
        tracing::warn!("could not report readiness on TS_READY_FD: {e}");
    }
    if !plan.guard {
        tracing::info!("tailscaled is Running");
        return Ok(());
    }
    tokio::select! {
        left = guard_running(api, plan.mask, watch) => left,
        sig = stop.recv() => {
            tracing::debug!("{sig} received, stopping the guard");
            Ok(())
        }
    }
}

struct Login<'a> {
    plan: &'a Plan,
    api: &'a LocalApi,
    deadline: Instant,
    /// The auth step runs at most once per process, as in the reference.
    did_login: bool,
}

impl Login<'_> {
    /// Running, then (TS_AUTH_ONCE) `tailscale set` with the preferences the environment owns,
    /// whether or not `up` ran on this boot (D19). Returns the watch that saw Running, for the
    /// guard to go on with (one watch less per boot).
    async fn until_running_then_set(mut self) -> Result<BusWatch, AuthError> {
        let watch = self.until_running().await?;
        if let Some(set) = &self.plan.set {
            tracing::info!("Running 'tailscale set'");
            run_cli(set, "set", self.deadline)
                .await
                .map_err(AuthError::Set)?;
        }
        Ok(watch)
    }

    /// The login watches ask for the state only (README D26): no netmap, whatever the tailnet.
    /// Without TS_AUTH_ONCE `up` runs at once, and the first watch starts after it: a watch
    /// opened before would only be closed again unread (the reference opens and closes one).
    async fn until_running(&mut self) -> Result<BusWatch, AuthError> {
        let mut watch = match self.plan.up_when {
            UpWhen::OnNeedsLogin => self.watch(AuthError::Watch).await?,
            UpWhen::AtOnce => self.login().await?,
        };
        loop {
            let notify = match tokio::time::timeout_at(self.deadline, watch.next()).await {
                Err(_) => return Err(AuthError::Deadline(self.plan.timeout)),
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) => return Err(AuthError::BusClosed),
                Ok(Err(e)) => return Err(AuthError::Read(e)),
            };
            if let Some(msg) = &notify.err_message {
                tracing::warn!("tailscaled reported an error: {}", outside(msg));
            }
            match notify.backend_state() {
                // After our own login the re-watch may still say NeedsLogin: nothing to do.
                Some(BackendState::NeedsLogin) if !self.did_login => {
                    // Closed first, so `up` is not blocked by our unread stream.
                    drop(watch);
                    watch = self.login().await?;
                }
                Some(BackendState::NeedsLogin) => {}
                Some(BackendState::NeedsMachineAuth) => {
                    tracing::info!("machine authorization required, please visit the admin panel")
                }
                Some(BackendState::Running) => return Ok(watch),
                Some(other) => tracing::info!("tailscaled in state {:?}, waiting", other.name()),
                None => {}
            }
        }
    }

    async fn watch(&self, wrap: fn(LocalApiError) -> AuthError) -> Result<BusWatch, AuthError> {
        let opened = self.api.watch_ipn_bus(self.plan.mask);
        tokio::time::timeout_at(self.deadline, opened)
            .await
            .map_err(|_| AuthError::Deadline(self.plan.timeout))?
            .map_err(wrap)
    }

    /// Runs `tailscale up` and re-watches.
    async fn login(&mut self) -> Result<BusWatch, AuthError> {
        self.did_login = true;
        tracing::info!("Running 'tailscale up'");
        run_cli(&self.plan.up, "up", self.deadline)
            .await
            .map_err(AuthError::Up)?;
        self.watch(AuthError::Rewatch).await
    }
}

/// Runs a `tailscale` command to completion before `deadline`, through the one spawn path (no
/// descriptor of ours reaches it, it dies with us, the deadline kills its whole group); the
/// error is worded as today's image words it (`tailscale up failed: exit status 1`).
async fn run_cli(
    cmd: &argv::Command,
    sub: &'static str,
    deadline: Instant,
) -> Result<(), CliError> {
    use ts_localapi::command::{self, Output, RunError};
    tracing::debug!("{cmd}");
    let path = ts_common::process::look_path(&cmd.program)
        .ok_or_else(|| CliError::NotFound(cmd.program.clone()))?;
    // argv[0] is the resolved path, as the reference's exec.Command gives it.
    let mut resolved = cmd.clone();
    resolved.program = path.display().to_string();
    let status = command::run_until(&resolved, deadline, Output::Inherit)
        .await
        .map_err(|e| match e {
            // As the reference's context does: killed at the deadline.
            RunError::Timeout { .. } => CliError::Failed {
                sub,
                how: "signal: killed".into(),
            },
            RunError::Spawn(e) => CliError::Start {
                sub,
                source: e.into_io(),
            },
            RunError::Wait { source, .. } => CliError::Wait { sub, source },
        })?
        .status;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt as _;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!(
            "signal: {}",
            nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().trim_start_matches("SIG").to_ascii_lowercase())
                .unwrap_or_else(|_| sig.to_string())
        ),
        _ => "unknown status".into(),
    };
    Err(CliError::Failed { sub, how })
}

/// Follows the bus after Running, on the watch that saw it (and on new ones when a stream
/// ends): any other state ends the container.
async fn guard_running(api: LocalApi, mask: u64, watch: BusWatch) -> Result<(), AuthError> {
    let mut follower = Follower::resume(api, mask, watch);
    loop {
        let notify: Notify = follower.next().await.map_err(AuthError::Read)?;
        notify.check_still_running()?;
    }
}

/// Every error is a runtime failure, exit 1: bad configuration is refused before anything runs.
impl ts_common::cli::Failure for AuthError {}
