//! The PID-1 core: signal intake, the one owner of `wait`, and child bookkeeping.
//!
//! Every signal is blocked and read from a signalfd, so nothing runs in a handler and nothing is
//! lost between two polls. SIGCHLD drains `waitpid(-1, WNOHANG)` until it is empty (signals
//! coalesce): statuses of the children ts-init started are queued for whoever waits for them,
//! everything else (orphans re-parented to us) is simply collected. No other code in ts-init
//! calls `wait`, so no status can be stolen.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;
use ts_common::process::{self, SpawnError, SpawnSpec};
use ts_common::status::{self, PhaseState};

/// What a child is to ts-init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Prep,
    Preflight,
    Tailscaled,
    Auth,
    Watcher(&'static str),
    /// The shutdown wait for a consistent state secret.
    Settle,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Prep => "ts-prep",
            Role::Preflight => "ts-kubestate preflight",
            Role::Tailscaled => "tailscaled",
            Role::Auth => "ts-auth",
            Role::Watcher(name) => name,
            Role::Settle => "ts-kubestate settle",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub pid: Pid,
    pub role: Role,
    pub status: WaitStatus,
}

#[derive(Debug)]
pub enum Event {
    /// SIGTERM or SIGINT: the runtime wants us gone.
    Shutdown(Signal),
    /// A child ts-init started has ended.
    Exited(Exit),
    /// One of the caller's fds is readable (or hung up).
    Readable(i32),
    /// The caller's deadline passed.
    Timeout,
}

/// How a wait for children to stop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// What was waited for happened.
    Done,
    /// The deadline passed first.
    DeadlinePassed,
    /// The event loop itself failed (the signalfd or poll): nothing more can be waited for.
    LoopFailed(Errno),
}

/// Signals forwarded to tailscaled rather than acted on (D5).
const FORWARDED: [Signal; 4] = [
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Signals left unblocked: faults must still kill us, and job-control stops keep their meaning.
const UNBLOCKED: [Signal; 9] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

pub struct Supervisor {
    sigfd: SignalFd,
    /// Live children by pid. Each leads its own process group (pgid = pid), so its helpers can
    /// be stopped with it.
    children: HashMap<Pid, Role>,
    /// Every process group we created, including those whose leader is gone.
    groups: Vec<Pid>,
    exits: VecDeque<Exit>,
    pending_shutdown: Option<Signal>,
    tailscaled: Option<Pid>,
    orphans_reaped: u64,
    subreaper: bool,
    /// Exits from now on are the shutdown's doing (reported as stopped).
    stopping: bool,
}

impl Supervisor {
    /// Blocks signals and opens the signalfd. Must run before any thread or child exists, so
    /// that every thread and every child's window inherits the blocked mask.
    pub fn new() -> Result<Self, Errno> {
        let mut mask = SigSet::all();
        for sig in UNBLOCKED {
            mask.remove(sig);
        }
        mask.thread_block()?;
        // Whoever started us may have set some signals to "ignore" (a shell's background job
        // ignores SIGINT and SIGQUIT); an ignored SIGCHLD would even make the kernel reap our
        // children behind our back. Back to defaults: they are blocked, so nothing is lost.
        ts_common::process::reset_dispositions();
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // Not PID 1 (docker --init, shareProcessNamespace): orphans of our tree must still come
        // to us, not to whatever the real PID 1 is.
        let subreaper = std::process::id() != 1;
        if subreaper {
            nix::sys::prctl::set_child_subreaper(true)?;
        }
        Ok(Supervisor {
            sigfd,
            children: HashMap::new(),
            groups: Vec::new(),
            exits: VecDeque::new(),
            pending_shutdown: None,
            tailscaled: None,
            orphans_reaped: 0,
            subreaper,
            stopping: false,
        })
    }

    pub fn spawn(&mut self, role: Role, spec: SpawnSpec<'_>) -> Result<Pid, SpawnError> {
        let pid = process::spawn(spec)?;
        self.children.insert(pid, role);
        self.groups.push(pid);
        if role == Role::Tailscaled {
            self.tailscaled = Some(pid);
        }
        tracing::debug!("started {} as pid {pid}", role.name());
        status::set_phase(role.name(), PhaseState::Running);
        Ok(pid)
    }

    pub fn tailscaled_alive(&self) -> bool {
        self.tailscaled
            .is_some_and(|pid| self.children.contains_key(&pid))
    }

    pub fn live_children(&self) -> usize {
        self.children.len()
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped
    }

    /// Waits for the next event. Exits already collected come first, tailscaled's before any
    /// other, because when several things end together the first cause must be tailscaled's.
    pub fn next_event(
        &mut self,
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<Event, Errno> {
        loop {
            if let Some(exit) = self.take_exit() {
                return Ok(Event::Exited(exit));
            }
            if let Some(sig) = self.pending_shutdown.take() {
                return Ok(Event::Shutdown(sig));
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Event::Timeout);
                    }
                    // Round up so we never wake a hair early and spin.
                    let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128);
                    PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut pollfds: Vec<PollFd> = std::iter::once(self.sigfd.as_fd())
                .chain(fds.iter().copied())
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            match poll(&mut pollfds, timeout) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(Event::Timeout);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let ready: Vec<bool> = pollfds
                .iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            if ready[0] {
                self.drain_signals()?;
            }
            if let Some(i) = ready.iter().skip(1).position(|r| *r) {
                // Exits and shutdown requests found in the same wake take precedence.
                if self.exits.is_empty() && self.pending_shutdown.is_none() {
                    return Ok(Event::Readable(fds[i].as_raw_fd()));
                }
            }
        }
    }

    /// During shutdown: handles events until `done` holds or `until` passes. Exits are logged
    /// as stopped; a second SIGTERM is only noted. A failing event loop is reported as such,
    /// never as the deadline passing.
    pub fn wait_stopped(&mut self, until: Instant, done: impl Fn(&Supervisor) -> bool) -> Stopped {
        while !done(self) {
            match self.next_event(&[], Some(until)) {
                Ok(Event::Timeout) => return Stopped::DeadlinePassed,
                Err(e) => return Stopped::LoopFailed(e),
                Ok(Event::Exited(e)) => {
                    tracing::debug!(
                        "{} stopped ({})",
                        e.role.name(),
                        process::describe(&e.status)
                    )
                }
                Ok(Event::Shutdown(sig)) => {
                    tracing::info!("{} received while already shutting down", sig.as_str())
                }
                Ok(Event::Readable(_)) => {}
            }
        }
        Stopped::Done
    }

    fn take_exit(&mut self) -> Option<Exit> {
        let idx = self
            .exits
            .iter()
            .position(|e| e.role == Role::Tailscaled)
            .unwrap_or(0);
        self.exits.remove(idx)
    }

    fn drain_signals(&mut self) -> Result<(), Errno> {
        while let Some(info) = self.sigfd.read_signal()? {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGTERM | Signal::SIGINT => {
                    self.pending_shutdown.get_or_insert(sig);
                }
                s if FORWARDED.contains(&s) => self.forward(s),
                other => tracing::debug!("ignoring {}", other.as_str()),
            }
        }
        // A SIGCHLD may have been merged with one we already consumed; draining again is cheap
        // and makes sure no zombie waits for the next signal.
        self.reap();
        Ok(())
    }

    /// Collects every child that has ended.
    pub fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                        continue;
                    }
                    match self.children.remove(&pid) {
                        Some(role) => {
                            self.report_exit(role, &status);
                            self.exits.push_back(Exit { pid, role, status })
                        }
                        None => self.orphans_reaped += 1,
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid failed: {e}");
                    return;
                }
            }
        }
    }

    /// From now on exits are the shutdown's doing.
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
    }

    /// Publishes a child's exit for ts-health's metrics.
    fn report_exit(&self, role: Role, wait: &WaitStatus) {
        let code = process::exit_code(wait).unwrap_or(-1);
        status::record_exit(role.name(), code);
        let state = match (self.stopping, code) {
            (true, _) => PhaseState::Stopped,
            (false, 0) => PhaseState::Done,
            (false, _) => PhaseState::Failed,
        };
        status::set_phase(role.name(), state);
    }

    fn forward(&self, sig: Signal) {
        match self
            .tailscaled
            .filter(|pid| self.children.contains_key(pid))
        {
            Some(pid) => match kill(pid, sig) {
                Ok(()) => tracing::info!("Forwarded {} to tailscaled", sig.as_str()),
                Err(Errno::ESRCH) => tracing::warn!(
                    "could not forward {}: tailscaled is already gone",
                    sig.as_str()
                ),
                Err(e) => tracing::warn!("could not forward {}: {e}", sig.as_str()),
            },
            None => tracing::info!(
                "{} received before tailscaled started; ignored",
                sig.as_str()
            ),
        }
    }

    /// Sends `sig` to every live child: tailscaled itself (it manages its own helpers), every
    /// other child with its whole process group (ts-auth's `tailscale up`, iptables runs).
    pub fn signal_children(&self, sig: Signal) {
        self.signal_where(sig, |_| true);
    }

    /// Like [`Supervisor::signal_children`], for every child but tailscaled.
    pub fn signal_children_except_tailscaled(&self, sig: Signal) {
        self.signal_where(sig, |role| role != Role::Tailscaled);
    }

    fn signal_where(&self, sig: Signal, wanted: impl Fn(Role) -> bool) {
        for (&pid, &role) in self.children.iter().filter(|(_, &role)| wanted(role)) {
            let result = if role == Role::Tailscaled {
                kill(pid, sig)
            } else {
                killpg(pid, sig)
            };
            match result {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!("sending {} to {}: {e}", sig.as_str(), role.name()),
            }
        }
    }

    /// SIGKILLs everything that may be left of our tree: every process group we created and,
    /// as a subreaper, every process that was re-parented to us.
    pub fn kill_leftovers(&mut self) {
        for pgid in &self.groups {
            let _ = killpg(*pgid, Signal::SIGKILL);
        }
        if self.subreaper {
            for pid in adopted_children() {
                let _ = kill(pid, Signal::SIGKILL);
            }
        } else {
            // As PID 1 of a namespace everything left is ours, and the kernel would kill it
            // when we exit anyway; doing it first lets us reap it and exit cleanly.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        }
        self.reap();
    }

    /// Reaps until no child of ours is left or `deadline` passes.
    pub fn reap_until_empty(&mut self, deadline: Instant) {
        loop {
            self.reap();
            let any_left = !self.children.is_empty() || has_children();
            if !any_left || Instant::now() >= deadline {
                return;
            }
            let mut fds = [PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = (left.as_millis() as i32).clamp(1, 50);
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::ZERO),
            );
            let _ = self.drain_signals();
        }
    }
}

/// True while we have any child at all (known or adopted).
fn has_children() -> bool {
    // A probe that reaps nothing (WNOWAIT) and does not block (WNOHANG): it succeeds while any
    // child exists, exited or not, and fails with ECHILD once there is none.
    nix::sys::wait::waitid(
        nix::sys::wait::Id::All,
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    )
    .is_ok()
}

/// Processes whose parent is us: orphans adopted as a subreaper.
fn adopted_children() -> Vec<Pid> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name may contain spaces and ')' — fields restart after the last ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1).map(|ppid| ppid == me)
                })
                .unwrap_or(false)
        })
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A child that lives until killed, in its own group.
    fn sleeper(sup: &mut Supervisor) -> Pid {
        let sleep = process::look_path("sleep").expect("sleep");
        sup.spawn(
            Role::Prep,
            SpawnSpec {
                program: "sleep",
                path: &sleep,
                args: vec!["30".into()],
                env_remove: &[],
                env_set: Vec::new(),
                ready_fd: None,
                result_fd: None,
            },
        )
        .expect("spawn sleep")
    }

    fn stop(pid: Pid) {
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }

    #[test]
    fn a_failing_event_loop_is_not_the_deadline_passing() {
        let mut sup = Supervisor::new().expect("supervisor");
        let pid = sleeper(&mut sup);
        let until = Instant::now() + Duration::from_millis(300);
        assert_eq!(
            sup.wait_stopped(until, |s| s.live_children() == 0),
            Stopped::DeadlinePassed
        );
        // Break the loop the way a closed signalfd would: its number now reads as a directory.
        let dir = std::fs::File::open("/").expect("open /");
        #[allow(
            unsafe_code,
            reason = "replacing an fd number in place needs the raw call"
        )]
        // SAFETY: dup2 onto the signalfd's number, which `sup` keeps owning (it closes the
        // duplicate on drop).
        let rc = unsafe { nix::libc::dup2(dir.as_raw_fd(), sup.sigfd.as_raw_fd()) };
        assert!(rc >= 0, "dup2");
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            sup.wait_stopped(until, |s| s.live_children() == 0),
            Stopped::LoopFailed(Errno::EISDIR)
        );
        stop(pid);
    }
}
