//! Running a tsboot binary (ts-kubestate) as a child process in tests against the fake API
//! server: a clean environment, its stderr collected, an optional readiness pipe (fd 3, as
//! ts-init gives it) and an optional result pipe (the preflight's `--result-fd`).
//!
//! Every wait has a deadline ([`PATIENCE`]) so a hang fails the test instead of stalling it;
//! nothing asserts on how long something took.

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline of any single wait.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The fd a child finds its readiness pipe at (ts-init's convention).
pub const READY_FD: RawFd = 3;

/// A running child.
pub struct Proc {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    stderr_done: Receiver<()>,
    ready: Option<Receiver<Vec<u8>>>,
    result: Option<Receiver<Vec<u8>>>,
    status: Option<i32>,
}

/// What to give the child besides its arguments.
#[derive(Default)]
pub struct Spawn {
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Give the child a readiness pipe at fd 3 and `TS_READY_FD=3`.
    pub ready: bool,
    /// Give the child a result pipe at this fd.
    pub result_fd: Option<RawFd>,
}

fn cloexec_pipe() -> (OwnedFd, OwnedFd) {
    // Close-on-exec, so children of other tests running in parallel do not inherit it (which
    // would hold the pipe open); the one child that should have it gets a dup2'ed copy.
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

fn reader_thread(fd: OwnedFd) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::fs::File::from(fd).read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

impl Proc {
    /// Starts `bin` with `args`.
    pub fn spawn(bin: &Path, args: &[&str], spec: Spawn) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut moves: Vec<(RawFd, RawFd)> = Vec::new();
        let mut keep = Vec::new();
        let ready = spec.ready.then(|| {
            let (r, w) = cloexec_pipe();
            moves.push((w.as_raw_fd(), READY_FD));
            cmd.env("TS_READY_FD", READY_FD.to_string());
            keep.push(w);
            r
        });
        let result = spec.result_fd.map(|fd| {
            let (r, w) = cloexec_pipe();
            moves.push((w.as_raw_fd(), fd));
            keep.push(w);
            r
        });
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Duplicate every source above the targets first, so sources and targets may
                // overlap; dup2 leaves the target without close-on-exec.
                // No allocation here: after fork only async-signal-safe calls are allowed.
                let mut temps = [0 as RawFd; 2];
                for (i, (from, _)) in moves.iter().enumerate() {
                    let tmp = nix::libc::fcntl(*from, nix::libc::F_DUPFD_CLOEXEC, 20);
                    if tmp < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    temps[i] = tmp;
                }
                for (tmp, (_, to)) in temps.iter().zip(&moves) {
                    if nix::libc::dup2(*tmp, *to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawning the binary under test");
        // The child has its copies; ours must go so EOF arrives when the child is done.
        drop(keep);
        let stderr = Arc::new(Mutex::new(String::new()));
        let (done_tx, stderr_done) = channel();
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                // Echoed so a failing test shows what the binary said.
                eprint!("    | {line}");
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&line);
                line.clear();
            }
            let _ = done_tx.send(());
        });
        Proc {
            child: Some(child),
            stderr,
            stderr_done,
            ready: ready.map(reader_thread),
            result: result.map(reader_thread),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.stderr().contains(needle) {
            assert!(
                start.elapsed() < PATIENCE,
                "never logged {needle:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the readiness pipe: `true` when a newline came, `false` on EOF without one.
    pub fn wait_ready(&mut self) -> bool {
        let rx = self.ready.take().expect("spawned with ready: true");
        let data = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no readiness and no EOF; stderr:\n{}", self.stderr()));
        data == b"\n"
    }

    /// Waits for the exit and returns the shell-style status (128+N for signal N).
    pub fn wait_exit(&mut self) -> i32 {
        if let Some(code) = self.status {
            return code;
        }
        let start = Instant::now();
        let child = self.child.as_mut().expect("child");
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the binary did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // All of stderr, now that the writer is gone.
        let _ = self.stderr_done.recv_timeout(PATIENCE);
        let code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        self.status = Some(code);
        code
    }

    /// What came through the result pipe (after the child closed it).
    pub fn result(&mut self) -> String {
        let rx = self.result.take().expect("spawned with a result fd");
        let data = rx.recv_timeout(PATIENCE).expect("result pipe never closed");
        String::from_utf8(data).expect("UTF-8 result")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// True while the child runs.
    pub fn running(&mut self) -> bool {
        self.status.is_none()
            && self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Polls `cond` until it holds, failing with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
