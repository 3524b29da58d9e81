//! Child processes: finding programs, spawning them cleanly, readiness through `TS_READY_FD`,
//! and turning a wait status into an exit code.
//!
//! Spawning never waits: in ts-init exactly one loop owns `waitpid` (see ts-init's reaper), so
//! the helpers here return the pid and leave the status to whoever owns the wait.
#![allow(
    unsafe_code,
    reason = "a child's setup between fork and exec and the readiness fd are system calls std does not wrap"
)]

use nix::sys::wait::WaitStatus;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The fd number a long-lived child finds its readiness pipe at.
pub const CHILD_READY_FD: RawFd = 3;

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
    NotFound {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {program} failed: {source}; {}", fd_limit_advice(*limit))]
    FdLimit {
        program: String,
        limit: u64,
        #[source]
        source: std::io::Error,
    },
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
            let core = if *core { " (core dumped)" } else { "" };
            format!("killed by signal {}{core}", sig.as_str())
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
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

/// The one way every tsboot process starts a child: ts-init's phases and tailscaled
/// ([`spawn`]), and the commands the phases run (`tailscale up`, `iptables`, `nft`), which take
/// this `Command` (converted to tokio's where they are async). The child gets:
/// * its own process group, so the whole of it can be signalled and killed together;
/// * stdin from /dev/null;
/// * an empty signal mask and every signal at its default disposition: ts-init blocks every
///   signal (it reads them from a signalfd) and may have been started with some ignored, and
///   an ignored signal stays ignored across exec;
/// * `SIGKILL` when the thread that started it dies (`PR_SET_PDEATHSIG`), so nothing outlives
///   a killed parent even when ts-init is not PID 1 and the kernel would not do it. It is the
///   *thread* that counts: every tsboot process starts children from its main thread (ts-init
///   is single-threaded apart from its log writer, the phases run one current-thread runtime
///   on the main thread), which lives as long as the process;
/// * no descriptor but stdio and the ones in `fds` (`(ours, theirs)` pairs): everything else is
///   made close-on-exec, whatever the parent inherited or opened without that flag.
///
pub fn command(path: &Path, args: &[String], fds: &[(RawFd, RawFd)]) -> Command {
    let mut cmd = Command::new(path);
    // argv[0] stays the resolved path, which is what a script's `$0` shows (the reference's
    // test fakes record it).
    cmd.args(args).process_group(0).stdin(Stdio::null());
    let moves: Vec<(RawFd, RawFd)> = fds.to_vec();
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec. It allocates nothing (the
    // `moves` vector was built before the fork) and only makes async-signal-safe calls
    // (sigprocmask, signal, prctl, getppid, fcntl, dup2, close_range).
    unsafe {
        cmd.pre_exec(move || {
            reset_signals();
            die_with_parent(parent)?;
            move_fds(&moves)?;
            Ok(())
        });
    }
    cmd
}

/// Starts a child for ts-init with [`command`]'s hygiene plus the readiness and result fds of
/// `spec`. Returns its pid; the caller's reaper owns the wait.
pub fn spawn(spec: SpawnSpec<'_>) -> Result<nix::unistd::Pid, SpawnError> {
    let fds: Vec<(RawFd, RawFd)> = [
        (spec.ready_fd, CHILD_READY_FD),
        (spec.result_fd, CHILD_RESULT_FD),
    ]
    .into_iter()
    .filter_map(|(fd, to)| Some((fd?.as_raw_fd(), to)))
    .collect();
    let mut cmd = command(spec.path, &spec.args, &fds);
    for var in spec.env_remove {
        cmd.env_remove(var);
    }
    for (k, v) in &spec.env_set {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| SpawnError::from_io(spec.program, e))?;
    // Dropping a std Child neither waits nor kills: the reaper owns the status.
    Ok(nix::unistd::Pid::from_raw(child.id() as i32))
}

impl SpawnError {
    /// Classifies a failed spawn of `program`: not found, out of descriptors (named with the
    /// open-file limit, the usual cause in a container), or anything else.
    pub fn from_io(program: &str, source: std::io::Error) -> SpawnError {
        let program = program.to_string();
        if source.kind() == std::io::ErrorKind::NotFound {
            return SpawnError::NotFound { program, source };
        }
        let limit = open_file_limit();
        let out_of_fds = match source.raw_os_error() {
            Some(nix::libc::EMFILE | nix::libc::ENFILE) => true,
            Some(nix::libc::EINVAL) => limit.is_some_and(|l| l <= u64::from(FIRST_SPARE_FD as u32)),
            _ => false,
        };
        match limit {
            Some(limit) if out_of_fds => SpawnError::FdLimit {
                program,
                limit,
                source,
            },
            _ => SpawnError::Start { program, source },
        }
    }

    /// The operating system's error underneath, for callers whose own error type carries one.
    pub fn into_io(self) -> std::io::Error {
        match self {
            SpawnError::NotFound { source, .. }
            | SpawnError::FdLimit { source, .. }
            | SpawnError::Start { source, .. } => source,
        }
    }
}

/// The soft open-file limit (`ulimit -n`), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The fewest open files tsboot's processes are allowed to run with: ts-init alone holds a
/// signalfd, a pipe per starting phase, an inotify fd, and each spawn briefly needs a few more;
/// the phases hold a runtime and LocalAPI connections.
pub const MIN_OPEN_FILES: u64 = 64;

/// Makes sure at least [`MIN_OPEN_FILES`] descriptors may be opened: raises the soft limit
/// when the hard one allows; otherwise says which limit is too low and how to raise it.
pub fn ensure_open_file_limit() -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if soft >= MIN_OPEN_FILES {
        return Ok(());
    }
    if hard >= MIN_OPEN_FILES && setrlimit(Resource::RLIMIT_NOFILE, MIN_OPEN_FILES, hard).is_ok() {
        return Ok(());
    }
    Err(fd_limit_advice(soft))
}

/// `what` failed with `errno`; running out of descriptors also names the open-file limit.
pub fn describe_errno(what: &str, errno: nix::errno::Errno) -> String {
    match (errno, open_file_limit()) {
        (nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE, Some(limit)) => {
            format!("{what}: {errno}; {}", fd_limit_advice(limit))
        }
        _ => format!("{what}: {errno}"),
    }
}

fn fd_limit_advice(limit: u64) -> String {
    format!(
        "the open-file limit is too low (ulimit -n = {limit}; tsboot needs at least \
         {MIN_OPEN_FILES}): raise it, e.g. docker run --ulimit nofile=1024:1024, or the \
         container runtime's nofile rlimit"
    )
}

/// A child must not inherit ts-init's blocked mask (every signal is blocked there and read from
/// a signalfd) nor any disposition set to "ignore" by whoever started ts-init, or SIGTERM would
/// never reach it. std empties the mask and resets SIGPIPE before exec, but leaves every other
/// ignored signal ignored (handlers are reset by exec itself); emptying the mask here too keeps
/// the guarantee independent of std's internals.
pub fn reset_signals() {
    // SAFETY: sigemptyset writes the set we own; sigprocmask reads it. Both are
    // async-signal-safe.
    unsafe {
        let mut empty: nix::libc::sigset_t = std::mem::zeroed();
        nix::libc::sigemptyset(&mut empty);
        nix::libc::sigprocmask(nix::libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    reset_dispositions();
}

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

/// In the child: SIGKILL when the parent's spawning thread dies. If the parent is already gone
/// (it died between fork and here, and the child was re-parented), the child must not run.
fn die_with_parent(parent: nix::unistd::Pid) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    if unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    Ok(())
}

/// The lowest fd number [`move_fds`] parks a descriptor at: above both child targets.
const FIRST_SPARE_FD: RawFd = CHILD_RESULT_FD + 1;

/// In the child: puts each `(from, to)` fd at `to` without close-on-exec, even when sources and
/// targets overlap, and marks every other descriptor above stdio close-on-exec.
fn move_fds(moves: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let mut temps = [0 as RawFd; 2];
    for (i, (from, _)) in moves.iter().enumerate().take(temps.len()) {
        // SAFETY: F_DUPFD duplicates an fd the parent handed us; async-signal-safe.
        let tmp = unsafe { nix::libc::fcntl(*from, nix::libc::F_DUPFD, FIRST_SPARE_FD) };
        if tmp < 0 {
            return Err(std::io::Error::last_os_error());
        }
        temps[i] = tmp;
    }
    cloexec_from(3);
    for (i, (_, to)) in moves.iter().enumerate().take(temps.len()) {
        // SAFETY: dup2 onto a target number; the copy it makes has close-on-exec cleared.
        if unsafe { nix::libc::dup2(temps[i], *to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec: whatever the parent inherited or
/// opened without that flag (a shell's job-control pipe, a readiness fd) must not reach the
/// program about to run. Marking instead of closing keeps std's own exec-error pipe working.
fn cloexec_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: close_range(2) is a plain syscall on integer arguments (Linux 5.11+ for the
    // flag); on older kernels it fails and the loop below does the same work.
    let done = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // SAFETY: sysconf and fcntl(F_SETFD) are async-signal-safe; EBADF for an fd that is
        // not open is expected and ignored.
        unsafe {
            let max = nix::libc::sysconf(nix::libc::_SC_OPEN_MAX).clamp(1024, 1 << 16) as RawFd;
            for fd in first..max {
                nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
            }
        }
    }
}

/// Checks the readiness fd a supervisor handed over (`TS_READY_FD` / `--ready-fd`) before
/// anything else is opened, and marks it close-on-exec so no child of this process inherits it
/// (its EOF is how the supervisor learns "never ready"). An fd that is stdio, not open, or not
/// writable is a configuration error: writing to it and closing it would break this process.
pub fn claim_ready_fd(fd: Option<i32>) -> Result<(), crate::SettingsError> {
    let Some(fd) = fd else { return Ok(()) };
    let invalid = |why: &str| crate::SettingsError::invalid("TS_READY_FD", &fd.to_string(), why);
    if (0..=2).contains(&fd) {
        return Err(invalid(
            "0, 1 and 2 are stdin, stdout and stderr; the readiness fd must be another one",
        ));
    }
    // SAFETY: F_GETFL only reads the flags of an fd number; EBADF if it is not open.
    let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFL) };
    if flags < 0 {
        return Err(invalid(
            "not an open file descriptor: whoever sets TS_READY_FD must also hand that fd over",
        ));
    }
    if flags & nix::libc::O_ACCMODE == nix::libc::O_RDONLY {
        return Err(invalid(
            "open for reading only; the readiness fd must be writable",
        ));
    }
    // SAFETY: F_SETFD on an fd just checked to be open.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) } < 0 {
        return Err(invalid("cannot be made close-on-exec"));
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

#[cfg(test)]
mod tests {
    #[test]
    fn daemons_never_get_a_credential_variable() {
        for var in crate::settings::SECRET_VARS
            .iter()
            .chain(super::AUTH_KEY_VARS)
        {
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
    fn running_out_of_descriptors_names_the_open_file_limit() {
        let limit = open_file_limit().expect("RLIMIT_NOFILE");
        for errno in [nix::libc::EMFILE, nix::libc::ENFILE] {
            let err = SpawnError::from_io("ts-auth", std::io::Error::from_raw_os_error(errno));
            let msg = err.to_string();
            assert!(matches!(err, SpawnError::FdLimit { .. }), "{msg}");
            assert!(msg.starts_with("starting ts-auth failed: "), "{msg}");
            assert!(msg.contains(&format!("ulimit -n = {limit}")), "{msg}");
        }
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(
            SpawnError::from_io("x", missing),
            SpawnError::NotFound { .. }
        ));
        let other = std::io::Error::from_raw_os_error(nix::libc::EACCES);
        assert!(matches!(
            SpawnError::from_io("x", other),
            SpawnError::Start { .. }
        ));
    }

    #[test]
    fn only_an_open_writable_fd_above_stdio_is_a_readiness_fd() {
        use std::os::fd::AsRawFd as _;
        assert!(claim_ready_fd(None).is_ok());
        for fd in [0, 1, 2] {
            let err = claim_ready_fd(Some(fd)).unwrap_err().to_string();
            assert!(err.contains("stdin, stdout and stderr"), "{err}");
        }
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let err = claim_ready_fd(Some(r.as_raw_fd())).unwrap_err().to_string();
        assert!(err.contains("reading only"), "{err}");
        claim_ready_fd(Some(w.as_raw_fd())).expect("the write end");
        let flags = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_GETFD).expect("flags");
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "made close-on-exec");
        // An fd that is not open: tests/tests/init_hardening.rs (a closed number here could be
        // reused at once by a test running in parallel).
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
