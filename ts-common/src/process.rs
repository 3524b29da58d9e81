//! Child processes: finding programs, spawning them cleanly, readiness through `TS_READY_FD`,
//! and turning a wait status into an exit code.
//!
//! Spawning never waits: in ts-init exactly one loop owns `waitpid` (see ts-init's reaper), so
//! the helpers here return the pid and leave the status to whoever owns the wait.

use nix::sys::wait::WaitStatus;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The fd number a long-lived child finds its readiness pipe at.
pub const CHILD_READY_FD: RawFd = 3;

/// Variables that carry a credential (D15).
pub use crate::settings::SECRET_VARS;

/// What tailscaled and the watchers never inherit: the credentials (D15), and `TS_EXTRA_ARGS`,
/// which only `tailscale up` needs and which may hold one (`--authkey=…`).
pub const DAEMON_ENV_REMOVE: &[&str] = &[
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_CLIENT_SECRET",
    "TS_ID_TOKEN",
    "TS_EXTRA_ARGS",
];

/// The auth key variables alone: replaced for ts-auth when the preflight found a key.
pub const AUTH_KEY_VARS: &[&str] = &["TS_AUTHKEY", "TS_AUTH_KEY"];

/// Set by ts-init on its children so they do not repeat ts-init's one-time startup warnings.
pub const UNDER_INIT_VAR: &str = "TSBOOT_UNDER_INIT";

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "{program}: executable file not found in $PATH (install it or put its directory on PATH)"
    )]
    NotFound { program: String },
    #[error("starting {program} failed: {source}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Exit code a shell would report: the code itself, or 128+N for a death by signal N.
pub fn exit_code(status: &WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(*code),
        WaitStatus::Signaled(_, sig, _) => Some(crate::exit::signal_status(*sig as i32)),
        _ => None,
    }
}

/// Human description of a final wait status: "exit status 3", "killed by signal SIGSEGV".
pub fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by signal {}{}",
                sig.as_str(),
                if *core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// Finds `name` like Go's `exec.LookPath`: a name with a slash is used as is, else each `PATH`
/// entry is tried in order.
pub fn look_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Finds one of tsboot's own binaries: next to the running executable first, then `PATH`.
pub fn find_sibling(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|p| is_executable(p));
    beside.or_else(|| look_path(name))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How ts-init starts a child.
pub struct SpawnSpec<'a> {
    /// Name shown in errors.
    pub program: &'a str,
    /// Resolved executable.
    pub path: &'a Path,
    pub args: Vec<String>,
    /// Variables removed from the inherited environment.
    pub env_remove: &'a [&'a str],
    /// Variables added (or replaced).
    pub env_set: Vec<(String, String)>,
    /// Write end of a readiness pipe, given to the child as fd [`CHILD_READY_FD`].
    pub ready_fd: Option<&'a OwnedFd>,
    /// Extra pipe for a one-shot result (the preflight's), given to the child as fd 4.
    pub result_fd: Option<&'a OwnedFd>,
}

/// The fd number of [`SpawnSpec::result_fd`] inside the child.
pub const CHILD_RESULT_FD: RawFd = 4;

/// Starts a child in its own process group, with default signal dispositions, an empty signal
/// mask (both done by std before exec), no inherited fds but stdio and the ones in `spec`.
/// Returns its pid; the caller's reaper owns the wait.
pub fn spawn(spec: SpawnSpec<'_>) -> Result<nix::unistd::Pid, SpawnError> {
    let mut cmd = std::process::Command::new(spec.path);
    // argv[0] stays the resolved path, which is what a script's `$0` shows (the reference's
    // test fakes record it).
    cmd.args(&spec.args).process_group(0).stdin(Stdio::null());
    for var in spec.env_remove {
        cmd.env_remove(var);
    }
    for (k, v) in &spec.env_set {
        cmd.env(k, v);
    }
    let mut moves: Vec<(RawFd, RawFd)> = Vec::new();
    if let Some(fd) = spec.ready_fd {
        moves.push((fd.as_raw_fd(), CHILD_READY_FD));
    }
    if let Some(fd) = spec.result_fd {
        moves.push((fd.as_raw_fd(), CHILD_RESULT_FD));
    }
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (sigprocmask, signal, fcntl, dup2).
    unsafe {
        cmd.pre_exec(move || {
            reset_signals();
            move_fds(&moves)?;
            close_inherited_fds(&moves);
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // Dropping a std Child neither waits nor kills: the reaper owns the status.
            drop(child);
            Ok(pid)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SpawnError::NotFound {
            program: spec.program.to_string(),
        }),
        Err(source) => Err(SpawnError::Start {
            program: spec.program.to_string(),
            source,
        }),
    }
}

/// Closes every fd above stdio except the ones just moved into place: whatever ts-init itself
/// inherited without close-on-exec (a shell's job-control pipe, say) must not reach its
/// children.
fn close_inherited_fds(moves: &[(RawFd, RawFd)]) {
    let keep = |fd: RawFd| moves.iter().any(|(_, to)| *to == fd);
    for fd in [CHILD_READY_FD, CHILD_RESULT_FD] {
        if !keep(fd) {
            // SAFETY: close(2) is async-signal-safe; EBADF for an fd that is not open is fine.
            unsafe { nix::libc::close(fd) };
        }
    }
    let first = CHILD_RESULT_FD as nix::libc::c_uint + 1;
    // SAFETY: close_range(2) (Linux 5.9+) is a plain syscall; on older kernels it fails with
    // ENOSYS and the loop below does the same work.
    let done = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            nix::libc::c_uint::MAX,
            0 as nix::libc::c_uint,
        )
    } == 0;
    if !done {
        // SAFETY: sysconf and close are async-signal-safe.
        let max =
            unsafe { nix::libc::sysconf(nix::libc::_SC_OPEN_MAX) }.clamp(1024, 1 << 16) as RawFd;
        for fd in first as RawFd..max {
            unsafe { nix::libc::close(fd) };
        }
    }
}

/// A child must not inherit ts-init's blocked mask (every signal is blocked there and read from
/// a signalfd) nor any disposition set to "ignore" by whoever started ts-init, or SIGTERM would
/// never reach it. std does not reset these, so every child gets an empty mask and defaults.
pub fn reset_signals() {
    // SAFETY: plain libc calls on valid arguments.
    unsafe {
        let mut empty: nix::libc::sigset_t = std::mem::zeroed();
        nix::libc::sigemptyset(&mut empty);
        nix::libc::sigprocmask(nix::libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    reset_dispositions();
}

/// Sets every signal's disposition back to the default.
pub fn reset_dispositions() {
    // SAFETY: signal(2) with SIG_DFL is async-signal-safe; failures (for the numbers glibc
    // reserves, SIGKILL and SIGSTOP) are harmless and ignored.
    unsafe {
        for signo in 1..=nix::libc::SIGRTMAX() {
            if signo != nix::libc::SIGKILL && signo != nix::libc::SIGSTOP {
                nix::libc::signal(signo, nix::libc::SIG_DFL);
            }
        }
    }
}

/// Puts each `(from, to)` fd at `to` without close-on-exec, even when sources and targets
/// overlap (first every source is duplicated above the targets).
fn move_fds(moves: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let mut temps = [0 as RawFd; 4];
    for (i, (from, _)) in moves.iter().enumerate() {
        // F_DUPFD to >= 10 keeps the temporaries clear of the targets (3 and 4).
        let tmp = unsafe { nix::libc::fcntl(*from, nix::libc::F_DUPFD, 10) };
        if tmp < 0 {
            return Err(std::io::Error::last_os_error());
        }
        temps[i] = tmp;
    }
    for (i, (_, to)) in moves.iter().enumerate() {
        if unsafe { nix::libc::dup2(temps[i], *to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A long-lived phase's side of the readiness protocol: writes one newline to `fd` and closes
/// it. `None` (no `TS_READY_FD`) means nobody is waiting: nothing happens.
pub fn notify_ready(fd: Option<i32>) -> std::io::Result<()> {
    let Some(fd) = fd else { return Ok(()) };
    // SAFETY: the fd was handed to us for this purpose (TS_READY_FD / --ready-fd) and nothing
    // else in the process uses it; it is closed when `file` drops.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(b"\n")?;
    Ok(())
}

/// The environment ts-init's children see when ts-init was given flags: the flags become the
/// variables they stand for, so every phase reads one configuration.
pub fn override_env(overrides: &[crate::settings::Override]) -> Vec<(String, String)> {
    overrides
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn daemons_never_get_a_credential_variable() {
        for var in super::SECRET_VARS.iter().chain(super::AUTH_KEY_VARS) {
            assert!(super::DAEMON_ENV_REMOVE.contains(var), "{var}");
        }
    }

    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn exit_codes() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(&WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(&WaitStatus::Signaled(pid, Signal::SIGSEGV, true)),
            Some(139)
        );
        assert_eq!(
            exit_code(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            describe(&WaitStatus::Signaled(pid, Signal::SIGSEGV, false)),
            "killed by signal SIGSEGV"
        );
    }

    #[test]
    fn look_path_finds_sh_and_not_nonsense() {
        assert!(look_path("sh").is_some());
        assert!(look_path("definitely-not-a-program-tsboot").is_none());
        assert_eq!(look_path("/x/y"), Some(PathBuf::from("/x/y")));
    }

    #[test]
    fn ready_pipe_carries_one_newline() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        use std::os::fd::IntoRawFd;
        notify_ready(Some(w.into_raw_fd())).expect("notify");
        let mut buf = String::new();
        use std::io::Read;
        std::fs::File::from(r).read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "\n");
        notify_ready(None).expect("no fd is fine");
    }
}
