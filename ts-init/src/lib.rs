//! ts-init: validates the configuration, runs each phase in order under one startup deadline,
//! supervises tailscaled and the watchers, and stops everything cleanly.

pub mod plan;
pub mod supervisor;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use plan::{BootPlan, Guard, Phase, GUARD_FLAG};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use supervisor::{Event, Exit, Role, Stopped, Supervisor};
use ts_common::preflight::PreflightResult;
use ts_common::process::{
    self, SpawnError, SpawnSpec, AUTH_KEY_VARS, DAEMON_ENV_REMOVE, UNDER_INIT_VAR,
};
use ts_common::settings::{Override, Settings};
use ts_common::status::{self, PhaseState};
use ts_common::{exit, process::describe};

/// Why the container ends; the first observed cause decides the exit status.
#[derive(Debug)]
pub enum Cause {
    /// SIGTERM/SIGINT from the runtime.
    Requested(Signal),
    /// tailscaled ended on its own.
    TailscaledExited(WaitStatus, bool),
    /// A phase or watcher failed, or ts-init itself could not go on.
    Failed(Failure),
}

impl From<Failure> for Cause {
    fn from(failure: Failure) -> Self {
        Cause::Failed(failure)
    }
}

impl Cause {
    /// The container's exit status for this cause (the README's exit-status table).
    pub fn exit_code(&self, tailscaled_killed: bool) -> i32 {
        match self {
            Cause::Requested(_) if tailscaled_killed => exit::signal_status(Signal::SIGKILL as i32),
            Cause::Requested(_) => exit::SUCCESS,
            Cause::TailscaledExited(status, during_startup) => match process::exit_code(status) {
                // Exiting 0 before startup completed is still a failed startup.
                Some(0) if *during_startup => exit::FAILURE,
                Some(code) => code,
                None => exit::FAILURE,
            },
            // Configuration errors (2) are caught before anything starts and never get here.
            Cause::Failed(_) => exit::FAILURE,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Requested(sig) => write!(f, "shutdown requested by {}", sig.as_str()),
            Cause::TailscaledExited(status, during_startup) => write!(
                f,
                "tailscaled exited on its own ({}){}",
                describe(status),
                if *during_startup {
                    " during startup"
                } else {
                    ""
                }
            ),
            Cause::Failed(failure) => failure.fmt(f),
        }
    }
}

/// What failed. Each says which part and why, in the words the log line uses.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// containerboot's words, so that log scrapers written for it still match.
    #[error("failed to bring up tailscale: starting tailscaled failed: exec: \"{0}\": executable file not found in $PATH")]
    TailscaledNotFound(String),
    #[error("failed to bring up tailscale: starting tailscaled failed: {0}")]
    TailscaledSpawn(#[source] SpawnError),
    #[error("cannot find {0}: install tsboot's binaries next to ts-init or on PATH")]
    PhaseNotFound(&'static str),
    #[error(transparent)]
    PhaseSpawn(#[from] SpawnError),
    #[error("{}", process::describe_errno("cannot create a pipe", *.0))]
    Pipe(Errno),
    #[error("{} failed ({})", .0.name(), describe(.1))]
    PhaseFailed(Role, WaitStatus),
    #[error("{} failed during startup ({})", .0.name(), describe(.1))]
    FailedDuringStartup(Role, WaitStatus),
    #[error("{} closed its readiness fd without becoming ready; {}", .0.name(), .1)]
    NeverReady(Role, Box<Failure>),
    #[error("ts-kubestate preflight returned an unreadable result ({0}); is ts-kubestate from the same tsboot release as ts-init?")]
    PreflightUnreadable(#[source] serde_json::Error),
    #[error("startup deadline of {0:?} (TS_BOOT_TIMEOUT) passed while {1}")]
    Deadline(Duration, String),
    #[error("Timed out waiting for tailscaled socket")]
    SocketTimeout,
    #[error("Waiting for tailscaled socket: {0}")]
    SocketWait(Errno),
    #[error("waiting for events failed: {0}")]
    EventLoop(Errno),
    /// What ended the guard is in its status: its own log line says whether tailscaled left
    /// Running; a signal means something else killed it.
    #[error("ts-auth (guard of the Running state) {}", ended(.0))]
    GuardEnded(WaitStatus),
    #[error("watcher {} failed ({})", .0.name(), describe(.1))]
    WatcherFailed(Role, WaitStatus),
}

/// How long a watcher's failure waits for tailscaled's death to show up, so that a watcher
/// losing the bus because tailscaled died does not mask tailscaled's own status.
const CAUSE_SETTLE: Duration = Duration::from_millis(250);
/// How long the phases get to stop before tailscaled is signalled too.
const PHASES_STOP: Duration = Duration::from_secs(2);
/// After SIGKILL, how long to wait for the kernel to hand the statuses back.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// How long the last log lines may take to reach a stalled stderr before ts-init exits anyway.
const LOG_FLUSH: Duration = Duration::from_secs(1);

/// Runs ts-init; returns the exit status.
pub fn run(overrides: Vec<Override>, explain: bool) -> i32 {
    // Judged before ts-init opens anything: the configuration, then the readiness fd as it was
    // inherited (once the signalfd exists, a TS_READY_FD naming its number would look open),
    // then the open-file limit.
    let loaded =
        Settings::load(&overrides).and_then(|s| process::claim_ready_fd(s.ready_fd).map(|()| s));
    let fd_limit = process::ensure_open_file_limit();
    // Signal intake comes next: before any child exists or any thread is started (the log
    // writer below is one), so every thread and every child's window inherits the mask.
    let supervisor = Supervisor::new();
    let format = match &loaded {
        Ok(s) => s.log_format,
        Err(_) => Settings::log_format_only(&overrides),
    };
    ts_common::logging::init_nonblocking("ts-init", format);
    let code = match (supervisor, loaded, fd_limit) {
        (Err(e), _, _) => {
            tracing::error!("Exiting with status 1: cannot set up signal handling: {e}");
            exit::FAILURE
        }
        (_, Err(err), _) => {
            tracing::error!("invalid configuration: {err}");
            tracing::error!(
                "Exiting with status {}: invalid configuration, nothing was started",
                exit::USAGE
            );
            exit::USAGE
        }
        (_, _, Err(why)) if !explain => {
            tracing::error!(
                "Exiting with status {}: {why}; nothing was started",
                exit::USAGE
            );
            exit::USAGE
        }
        (Ok(supervisor), Ok(settings), _) => boot(supervisor, settings, overrides, explain),
    };
    ts_common::logging::flush(LOG_FLUSH);
    code
}

fn boot(
    supervisor: Supervisor,
    settings: Settings,
    overrides: Vec<Override>,
    explain: bool,
) -> i32 {
    let plan = BootPlan::new(&settings, overrides);
    if explain {
        print!("{}", plan.explain(&settings));
        return exit::SUCCESS;
    }
    ts_common::cli::warn_unsupported(&settings);
    if let Some(dir) = &settings.local.status_dir {
        // Reports of an earlier boot (a restarted container keeps /tmp) must not count now.
        status::clear(dir);
        status::init(&settings, status::INIT_NAME);
        status::set_activity("starting");
    }
    let mut boot = Boot {
        deadline: Instant::now() + settings.boot_timeout,
        sup: supervisor,
        settings,
        plan,
        guard: Guard::Auth,
    };
    let cause = boot.run();
    boot.shutdown(cause)
}

struct Boot {
    sup: Supervisor,
    settings: Settings,
    plan: BootPlan,
    deadline: Instant,
    /// Which phase guards the Running state (decided once the preflight answered).
    guard: Guard,
}

impl Boot {
    fn run(&mut self) -> Cause {
        if let Err(cause) = self.startup() {
            return cause;
        }
        tracing::info!("Startup complete, waiting for shutdown signal");
        status::set_startup_complete();
        if let Err(e) = process::notify_ready(self.settings.ready_fd) {
            tracing::warn!("could not report readiness on TS_READY_FD: {e}");
        }
        self.steady()
    }

    fn startup(&mut self) -> Result<(), Cause> {
        // The endpoint listens before anything else starts: probes get 503, not a refused
        // connection, for the whole boot.
        if let Some(health) = self.plan.health.clone() {
            let role = Role::Watcher(plan::HEALTH_PROGRAM);
            let fd = self.start_ready_phase(role, &health, Vec::new())?;
            self.wait_ready(vec![(role, fd)], "waiting for ts-health to listen")?;
        }
        status::set_activity("running ts-prep");
        let prep = self.plan.prep.clone();
        self.run_phase(Role::Prep, &prep)?;

        let mut auth_env: Vec<(String, String)> = Vec::new();
        let mut can_patch = false;
        if let Some(preflight) = self.plan.preflight.clone() {
            let result = self.run_preflight(&preflight)?;
            can_patch = result.can_patch;
            if let Some(key) = result.authkey {
                auth_env.push(("TS_AUTHKEY".to_string(), key.expose().to_string()));
            }
        }

        self.link_socket();
        tracing::info!("Starting tailscaled");
        let tailscaled = self.plan.tailscaled.clone();
        let path = process::look_path(&tailscaled.program)
            .ok_or_else(|| Failure::TailscaledNotFound(tailscaled.program.clone()))?;
        self.sup
            .spawn(
                Role::Tailscaled,
                SpawnSpec {
                    program: &tailscaled.program,
                    path: &path,
                    args: tailscaled.argv(),
                    env_remove: &tailscaled_env_remove(),
                    env_set: self.plan.env_overrides.clone(),
                    ready_fd: None,
                    result_fd: None,
                },
            )
            .map_err(Failure::TailscaledSpawn)?;

        tracing::info!("Waiting for tailscaled socket");
        status::set_activity("waiting for tailscaled's socket");
        self.wait_socket()?;
        status::set_activity("waiting for tailscaled to reach Running");

        self.guard = self.plan.guard(can_patch);
        let auth = with_guard(self.plan.auth.clone(), self.guard == Guard::Auth);
        let auth_ready = self.start_ready_phase(Role::Auth, &auth, auth_env)?;
        self.wait_ready(
            vec![(Role::Auth, auth_ready)],
            "waiting for tailscaled to reach Running",
        )?;

        if self.plan.kubestate.is_some() && !can_patch {
            tracing::info!(
                "no patch permission on secret {:?}: device info will not be stored, ts-kubestate not started",
                self.settings.kube_secret
            );
        }
        let planned = [
            (self.plan.proxy_rules.clone(), Guard::ProxyRules),
            (
                self.plan.kubestate.clone().filter(|_| can_patch),
                Guard::KubeState,
            ),
            (self.plan.serve.clone(), Guard::Serve),
        ];
        let mut watchers = Vec::new();
        for (phase, guard) in planned {
            if let Some(phase) = phase {
                let role = Role::Watcher(guard.program());
                let phase = with_guard(phase, self.guard == guard);
                watchers.push((role, self.start_ready_phase(role, &phase, Vec::new())?));
            }
        }
        if !watchers.is_empty() {
            status::set_activity("waiting for the watchers' first reconcile");
            self.wait_ready(watchers, "waiting for the watchers' first reconcile")?;
        }
        Ok(())
    }

    /// Environment for a tsboot phase: ts-init's flags as variables, and the marker that keeps
    /// phases from repeating ts-init's one-time warnings.
    fn child_env(&self, with_ready_fd: bool) -> Vec<(String, String)> {
        let mut env = self.plan.env_overrides.clone();
        env.push((UNDER_INIT_VAR.to_string(), "1".to_string()));
        if with_ready_fd {
            env.push((
                "TS_READY_FD".to_string(),
                process::CHILD_READY_FD.to_string(),
            ));
        }
        env
    }

    /// Starts one of tsboot's own phases (found next to ts-init, then on PATH), with
    /// [`Boot::child_env`] and `extra_env`.
    fn spawn_phase(
        &mut self,
        role: Role,
        phase: &Phase,
        extra_env: Vec<(String, String)>,
        env_remove: &[&str],
        ready_fd: Option<&OwnedFd>,
        result_fd: Option<&OwnedFd>,
    ) -> Result<Pid, Cause> {
        let path =
            process::find_sibling(phase.program).ok_or(Failure::PhaseNotFound(phase.program))?;
        let mut env_set = self.child_env(phase.readiness);
        env_set.extend(extra_env);
        self.sup
            .spawn(
                role,
                SpawnSpec {
                    program: phase.program,
                    path: &path,
                    args: phase.args.clone(),
                    env_remove,
                    env_set,
                    ready_fd,
                    result_fd,
                },
            )
            .map_err(|e| Failure::PhaseSpawn(e).into())
    }

    /// Runs a one-shot phase to completion; non-zero exit fails the boot.
    fn run_phase(&mut self, role: Role, phase: &Phase) -> Result<(), Cause> {
        let pid = self.spawn_phase(role, phase, Vec::new(), &["TS_READY_FD"], None, None)?;
        let status = self.wait_exit(pid, role)?;
        check_success(role, &status)
    }

    fn run_preflight(&mut self, phase: &Phase) -> Result<PreflightResult, Cause> {
        let (read_end, write_end) = pipe()?;
        let pid = self.spawn_phase(
            Role::Preflight,
            phase,
            Vec::new(),
            &["TS_READY_FD"],
            None,
            Some(&write_end),
        )?;
        drop(write_end);
        let mut reader = PipeReader::new(read_end);
        let mut status = None;
        while status.is_none() || !reader.eof {
            let fds: Vec<_> = if reader.eof {
                Vec::new()
            } else {
                vec![reader.fd.as_fd()]
            };
            match self.next(&fds, "running the Kubernetes preflight")? {
                Event::Readable(_) => reader.read_some(),
                Event::Exited(e) if e.pid == pid => status = Some(e.status),
                Event::Exited(e) => return Err(self.unexpected_exit(e)),
                Event::Shutdown(sig) => return Err(Cause::Requested(sig)),
                Event::Timeout => {}
            }
        }
        let status = status.unwrap_or(WaitStatus::StillAlive);
        check_success(Role::Preflight, &status)?;
        PreflightResult::from_bytes(&reader.data)
            .map_err(|e| Failure::PreflightUnreadable(e).into())
    }

    fn start_ready_phase(
        &mut self,
        role: Role,
        phase: &Phase,
        extra_env: Vec<(String, String)>,
    ) -> Result<OwnedFd, Cause> {
        let (read_end, write_end) = pipe()?;
        let has_key = !extra_env.is_empty();
        // Credentials go to ts-auth only; watchers never see them (D15). A key found by the
        // preflight replaces whatever the environment had.
        let env_remove: &[&str] = match role {
            Role::Auth if has_key => AUTH_KEY_VARS,
            Role::Auth => &[],
            _ => DAEMON_ENV_REMOVE,
        };
        self.spawn_phase(role, phase, extra_env, env_remove, Some(&write_end), None)?;
        Ok(read_end)
    }

    /// Waits until every phase in `pending` wrote its readiness newline.
    fn wait_ready(&mut self, pending: Vec<(Role, OwnedFd)>, what: &str) -> Result<(), Cause> {
        let mut pending: Vec<(Role, PipeReader)> = pending
            .into_iter()
            .map(|(role, fd)| (role, PipeReader::new(fd)))
            .collect();
        while !pending.is_empty() {
            let fds: Vec<_> = pending.iter().map(|(_, r)| r.fd.as_fd()).collect();
            let event = self.next(&fds, what)?;
            drop(fds);
            match event {
                Event::Readable(raw) => {
                    if let Some(i) = pending.iter().position(|(_, r)| r.fd.as_raw_fd() == raw) {
                        let reader = &mut pending[i].1;
                        reader.read_some();
                        if reader.data.contains(&b'\n') {
                            let (role, _) = pending.remove(i);
                            tracing::debug!("{} is ready", role.name());
                            status::set_phase(role.name(), PhaseState::Ready);
                        } else if reader.eof {
                            // Closed without the newline: it will never be ready. Its exit
                            // status, which follows, says why.
                            let role = pending[i].0;
                            return Err(self.await_failure(role));
                        }
                    }
                }
                Event::Exited(e) if self.finished_auth(&e) => {}
                Event::Exited(e) => return Err(self.unexpected_exit(e)),
                Event::Shutdown(sig) => return Err(Cause::Requested(sig)),
                Event::Timeout => {}
            }
        }
        Ok(())
    }

    /// ts-auth exiting 0 after Running is its job done, unless it is the guard.
    fn finished_auth(&self, e: &Exit) -> bool {
        e.role == Role::Auth
            && self.guard != Guard::Auth
            && matches!(e.status, WaitStatus::Exited(_, 0))
    }

    /// A phase closed its readiness fd without reporting: wait for its exit to explain why.
    fn await_failure(&mut self, role: Role) -> Cause {
        loop {
            match self.next(&[], "waiting for a failed phase to exit") {
                Ok(Event::Exited(e)) => return self.unexpected_exit(e),
                Ok(Event::Shutdown(sig)) => return Cause::Requested(sig),
                Ok(_) => {}
                Err(Cause::Failed(why)) => return Failure::NeverReady(role, Box::new(why)).into(),
                Err(other) => return other,
            }
        }
    }

    fn wait_exit(&mut self, pid: Pid, role: Role) -> Result<WaitStatus, Cause> {
        let what = format!("running {}", role.name());
        loop {
            match self.next(&[], &what)? {
                Event::Exited(e) if e.pid == pid => return Ok(e.status),
                Event::Exited(e) => return Err(self.unexpected_exit(e)),
                Event::Shutdown(sig) => return Err(Cause::Requested(sig)),
                Event::Readable(_) | Event::Timeout => {}
            }
        }
    }

    /// Waits for the socket with inotify on its directory; where that cannot be watched (the
    /// directory does not exist yet), a tight bounded poll takes over.
    fn wait_socket(&mut self) -> Result<(), Cause> {
        let socket = self.settings.socket.clone();
        let dir = socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut inotify = None;
        loop {
            if socket_ready(&socket) {
                return Ok(());
            }
            if inotify.is_none() {
                inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                    .ok()
                    .and_then(|ino| {
                        ino.add_watch(
                            &dir,
                            AddWatchFlags::IN_CREATE
                                | AddWatchFlags::IN_MOVED_TO
                                | AddWatchFlags::IN_ATTRIB,
                        )
                        .ok()
                        .map(|_| ino)
                    });
                // The socket may have appeared between the check and the watch.
                if socket_ready(&socket) {
                    return Ok(());
                }
            }
            let fds: Vec<_> = inotify.iter().map(|i| i.as_fd()).collect();
            // Without inotify, or when the socket exists but does not accept yet (between
            // tailscaled's bind and listen), re-check soon: 1 ms keeps that gap out of the boot.
            let recheck = Instant::now()
                + if inotify.is_some() && !socket.exists() {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(1)
                };
            let event = self.sup.next_event(&fds, Some(recheck.min(self.deadline)));
            drop(fds);
            match event {
                Ok(Event::Readable(_)) => {
                    if let Some(ino) = &inotify {
                        let _ = ino.read_events();
                    }
                }
                Ok(Event::Timeout) => {
                    if Instant::now() >= self.deadline {
                        return Err(Failure::SocketTimeout.into());
                    }
                }
                Ok(Event::Exited(e)) => return Err(self.unexpected_exit(e)),
                Ok(Event::Shutdown(sig)) => return Err(Cause::Requested(sig)),
                Err(e) => return Err(Failure::SocketWait(e).into()),
            }
        }
    }

    /// Next event before the startup deadline.
    fn next(&mut self, fds: &[std::os::fd::BorrowedFd<'_>], what: &str) -> Result<Event, Cause> {
        match self.sup.next_event(fds, Some(self.deadline)) {
            Ok(Event::Timeout) => {
                Err(Failure::Deadline(self.settings.boot_timeout, what.to_string()).into())
            }
            Ok(event) => Ok(event),
            Err(e) => Err(Failure::EventLoop(e).into()),
        }
    }

    /// A child we were not waiting for ended during startup.
    fn unexpected_exit(&mut self, e: Exit) -> Cause {
        if e.role == Role::Tailscaled {
            return Cause::TailscaledExited(e.status, true);
        }
        self.settle(Failure::FailedDuringStartup(e.role, e.status).into())
    }

    /// After startup: wait for a shutdown request or the first thing to go wrong.
    fn steady(&mut self) -> Cause {
        loop {
            let event = match self.sup.next_event(&[], None) {
                Ok(e) => e,
                Err(e) => return Failure::EventLoop(e).into(),
            };
            match event {
                Event::Shutdown(sig) => return Cause::Requested(sig),
                Event::Exited(e) if e.role == Role::Tailscaled => {
                    tracing::info!("Tailscaled exited");
                    return Cause::TailscaledExited(e.status, false);
                }
                Event::Exited(e) if self.finished_auth(&e) => {
                    tracing::debug!("ts-auth finished (a watcher guards the Running state)");
                }
                Event::Exited(e) if e.role == Role::Auth => {
                    return self.settle(Failure::GuardEnded(e.status).into());
                }
                Event::Exited(e) => {
                    if matches!(e.status, WaitStatus::Exited(_, 0)) {
                        tracing::info!("{} exited with nothing left to do", e.role.name());
                        continue;
                    }
                    return self.settle(Failure::WatcherFailed(e.role, e.status).into());
                }
                Event::Readable(_) | Event::Timeout => {}
            }
        }
    }

    /// Gives tailscaled's death a moment to show up before blaming `cause`.
    fn settle(&mut self, cause: Cause) -> Cause {
        if !self.sup.tailscaled_alive() {
            return cause;
        }
        let until = Instant::now() + CAUSE_SETTLE;
        loop {
            match self.sup.next_event(&[], Some(until)) {
                Ok(Event::Exited(e)) if e.role == Role::Tailscaled => {
                    return Cause::TailscaledExited(e.status, false);
                }
                Ok(Event::Exited(e)) => {
                    tracing::info!("{} also exited ({})", e.role.name(), describe(&e.status));
                }
                Ok(Event::Timeout) | Err(_) => return cause,
                Ok(_) => {}
            }
        }
    }

    /// Stops every child (SIGTERM, then SIGKILL after the grace) and picks the exit status.
    fn shutdown(&mut self, cause: Cause) -> i32 {
        match &cause {
            Cause::Requested(sig) => tracing::info!(
                "Received {} from container runtime, shutting down tailscaled",
                sig.as_str()
            ),
            Cause::TailscaledExited(..) => {}
            Cause::Failed(why) => tracing::error!("{why}"),
        }
        let mut tailscaled_killed = false;
        self.sup.begin_shutdown();
        if self.sup.live_children() > 0 {
            let grace_start = Instant::now();
            let grace_end = grace_start + self.settings.shutdown_grace;
            // Watchers and the guard go first, so they do not report tailscaled's departure as
            // an error; tailscaled follows once they are gone (or after a short wait).
            let mut stopped = Stopped::Done;
            if self.sup.tailscaled_alive() && self.sup.live_children() > 1 {
                self.sup.signal_children_except_tailscaled(Signal::SIGTERM);
                let phases_stop = self.plan.phases_stop(&self.settings, PHASES_STOP);
                let phases_end = (Instant::now() + phases_stop).min(grace_end);
                stopped = self.sup.wait_stopped(phases_end, |sup| {
                    sup.live_children() <= usize::from(sup.tailscaled_alive())
                });
            }
            if !matches!(stopped, Stopped::LoopFailed(_)) {
                if self.sup.tailscaled_alive() {
                    self.settle_state(grace_start);
                }
                self.sup.signal_children(Signal::SIGTERM);
                stopped = self
                    .sup
                    .wait_stopped(grace_end, |sup| sup.live_children() == 0);
            }
            let left = if self.sup.tailscaled_alive() {
                ", including tailscaled"
            } else {
                ""
            };
            match stopped {
                Stopped::Done => {}
                Stopped::DeadlinePassed => {
                    tailscaled_killed = self.sup.tailscaled_alive();
                    tracing::warn!(
                        "shutdown grace of {:?} (TS_SHUTDOWN_GRACE) passed; sending SIGKILL to what is left{left}",
                        self.settings.shutdown_grace,
                    );
                }
                Stopped::LoopFailed(e) => {
                    // Without the event loop nothing can be waited for: this is not the grace
                    // running out, and it is said as what it is.
                    tailscaled_killed = self.sup.tailscaled_alive();
                    tracing::error!(
                        "waiting for the children to stop failed ({e}); sending SIGKILL to what is left{left}"
                    );
                }
            }
        }
        self.sup.kill_leftovers();
        self.sup.reap_until_empty(Instant::now() + KILL_SETTLE);
        tracing::debug!("orphans reaped: {}", self.sup.orphans_reaped());

        let code = cause.exit_code(tailscaled_killed);
        tracing::info!("Exiting with status {code}: {cause}");
        code
    }

    /// With the kube state store: lets `ts-kubestate settle` wait until tailscaled finished
    /// writing its state to the secret, within the first half of the grace, so tailscaled keeps
    /// at least the other half to exit. Whatever the outcome, tailscaled is stopped next.
    fn settle_state(&mut self, grace_start: Instant) {
        let Some(mut phase) = self.plan.settle.clone() else {
            return;
        };
        let until = grace_start + self.settings.shutdown_grace / 2;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        phase.args.extend([
            "--timeout".to_string(),
            format!("{}ms", left.as_millis().max(1)),
        ]);
        let mut env_remove = DAEMON_ENV_REMOVE.to_vec();
        env_remove.push("TS_READY_FD");
        let pid = match self.spawn_phase(Role::Settle, &phase, Vec::new(), &env_remove, None, None)
        {
            Ok(pid) => pid,
            Err(cause) => {
                tracing::warn!("cannot wait for a consistent state secret: {cause}");
                return;
            }
        };
        // The phase bounds itself; this margin only catches one that hangs.
        let hard_end = until + Duration::from_secs(1);
        let name = Role::Settle.name();
        loop {
            match self.sup.next_event(&[], Some(hard_end)) {
                Ok(Event::Exited(e)) if e.pid == pid => {
                    tracing::debug!("{} ended ({})", e.role.name(), describe(&e.status));
                    return;
                }
                Ok(Event::Exited(e)) => {
                    tracing::debug!("{} stopped ({})", e.role.name(), describe(&e.status))
                }
                Ok(Event::Shutdown(sig)) => {
                    tracing::info!("{} received while already shutting down", sig.as_str())
                }
                Ok(Event::Readable(_)) => {}
                Ok(Event::Timeout) => {
                    tracing::warn!("{name} did not finish in time; stopping it");
                    break;
                }
                Err(e) => {
                    tracing::error!("waiting for {name} failed ({e}); stopping it");
                    break;
                }
            }
        }
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
    }

    fn link_socket(&self) {
        let Some(link) = &self.plan.socket_symlink else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::symlink_metadata(link) {
                Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)?,
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a symlink is in the way",
                    ))
                }
                Err(_) => {}
            }
            std::os::unix::fs::symlink(&self.settings.socket, link)
        })();
        if let Err(e) = result {
            tracing::warn!(
                "could not create the socket symlink {} -> {}: {e}; `tailscale` without --socket will not find tailscaled",
                link.display(),
                self.settings.socket.display()
            );
        }
    }
}

/// What tailscaled must not inherit: the credentials (D15) and tsboot's own plumbing.
fn tailscaled_env_remove() -> Vec<&'static str> {
    let mut vars = DAEMON_ENV_REMOVE.to_vec();
    vars.extend(["TS_READY_FD", UNDER_INIT_VAR]);
    vars
}

/// `phase` with the guard flag added when it is the guard.
fn with_guard(mut phase: Phase, guard: bool) -> Phase {
    if guard {
        phase.args.push(GUARD_FLAG.to_string());
    }
    phase
}

/// How a long-lived phase ended, for the line that says why the container stops.
fn ended(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Signaled(..) => format!("was {}", describe(status)),
        _ => format!("exited ({}); its log above says why", describe(status)),
    }
}

fn check_success(role: Role, status: &WaitStatus) -> Result<(), Cause> {
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(Failure::PhaseFailed(role, *other).into()),
    }
}

/// The socket exists and accepts connections (a stale socket file from an earlier run does not).
fn socket_ready(socket: &Path) -> bool {
    !socket.as_os_str().is_empty() && std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// A close-on-exec pipe whose read end (ours) does not block; the child's end stays blocking.
fn pipe() -> Result<(OwnedFd, OwnedFd), Cause> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Failure::Pipe)?;
    fcntl(&read_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(Failure::Pipe)?;
    Ok((read_end, write_end))
}

/// The read end of a readiness or result pipe.
struct PipeReader {
    fd: OwnedFd,
    data: Vec<u8>,
    eof: bool,
}

impl PipeReader {
    fn new(fd: OwnedFd) -> Self {
        PipeReader {
            fd,
            data: Vec::new(),
            eof: false,
        }
    }

    fn read_some(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => {
                    // Bounded: a result is one short JSON line.
                    if self.data.len() < 64 * 1024 {
                        self.data.extend_from_slice(&buf[..n]);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: Pid = Pid::from_raw(7);

    #[test]
    fn each_cause_carries_the_exit_status_of_the_readme_table() {
        let requested = Cause::Requested(Signal::SIGTERM);
        assert_eq!(requested.exit_code(false), 0);
        assert_eq!(requested.exit_code(true), 137);
        let died = |status, during_startup| Cause::TailscaledExited(status, during_startup);
        assert_eq!(died(WaitStatus::Exited(PID, 0), false).exit_code(false), 0);
        assert_eq!(died(WaitStatus::Exited(PID, 0), true).exit_code(false), 1);
        assert_eq!(died(WaitStatus::Exited(PID, 3), true).exit_code(false), 3);
        let killed = WaitStatus::Signaled(PID, Signal::SIGKILL, false);
        assert_eq!(died(killed, false).exit_code(false), 137);
        for failure in [
            Failure::SocketTimeout,
            Failure::WatcherFailed(Role::Watcher("ts-serve"), WaitStatus::Exited(PID, 2)),
            Failure::GuardEnded(killed),
            Failure::Pipe(Errno::EMFILE),
        ] {
            assert_eq!(Cause::from(failure).exit_code(false), 1);
        }
    }

    #[test]
    fn a_failure_reads_as_the_line_the_log_gives() {
        let never_ready = Failure::NeverReady(
            Role::Auth,
            Box::new(Failure::Deadline(Duration::from_secs(60), "waiting".into())),
        );
        assert_eq!(
            never_ready.to_string(),
            "ts-auth closed its readiness fd without becoming ready; \
             startup deadline of 60s (TS_BOOT_TIMEOUT) passed while waiting"
        );
        assert_eq!(
            Failure::GuardEnded(WaitStatus::Exited(PID, 1)).to_string(),
            "ts-auth (guard of the Running state) exited (exit status 1); its log above says why"
        );
        assert_eq!(
            Failure::TailscaledNotFound("tailscaled".into()).to_string(),
            "failed to bring up tailscale: starting tailscaled failed: exec: \"tailscaled\": \
             executable file not found in $PATH"
        );
    }
}
