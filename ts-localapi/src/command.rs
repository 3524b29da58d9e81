//! Running a command from an async phase (`tailscale up`/`set` in ts-auth, `iptables`/`nft` in
//! ts-proxy-rules): the child comes from ts-common's one spawn path
//! ([`ts_common::process::command`]: own process group, clean signals, dies with its parent,
//! no inherited descriptors), and every run has a deadline after which the whole group is
//! killed. Spawning happens on the calling thread, which for every phase is the main thread
//! running the one current-thread runtime; that is what keeps `PR_SET_PDEATHSIG` meaningful.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;
use ts_common::argv::Command;
use ts_common::process::SpawnError;

/// Where the child's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Kept for the caller ([`Finished::stdout`], [`Finished::stderr`]).
    Capture,
    /// The caller's own (a login URL `tailscale up` prints must reach the container log).
    Inherit,
}

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Empty with [`Output::Inherit`].
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed; the command's process group was killed.
    #[error("{program} did not finish within {after:?} and was killed")]
    Timeout { program: String, after: Duration },
}

/// Runs `cmd` until it ends or `timeout` passes (then its whole process group gets SIGKILL).
pub async fn run(cmd: &Command, timeout: Duration, output: Output) -> Result<Finished, RunError> {
    run_until(cmd, Instant::now() + timeout, output).await
}

/// [`run`] with an absolute deadline.
pub async fn run_until(
    cmd: &Command,
    deadline: Instant,
    output: Output,
) -> Result<Finished, RunError> {
    let started = Instant::now();
    let mut std_cmd = ts_common::process::command(Path::new(&cmd.program), &cmd.argv(), &[]);
    if output == Output::Capture {
        std_cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = tokio::process::Command::from(std_cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SpawnError::from_io(&cmd.program, e))?;
    let pid = child.id();
    let waited = tokio::time::timeout_at(deadline, async {
        // Read both pipes (if captured) while waiting, so a chatty command cannot fill one and
        // hang.
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let (stdout, stderr, status) =
            tokio::join!(read_all(out.as_mut()), read_all(err.as_mut()), child.wait());
        status.map(|status| Finished {
            status,
            stdout,
            stderr,
        })
    })
    .await;
    match waited {
        Ok(Ok(finished)) => Ok(finished),
        Ok(Err(source)) => Err(RunError::Wait {
            program: cmd.program.clone(),
            source,
        }),
        Err(_) => {
            // The command leads its own group: whatever it started goes with it.
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            Err(RunError::Timeout {
                program: cmd.program.clone(),
                after: deadline.saturating_duration_since(started),
            })
        }
    }
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(reader: Option<&mut R>) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    if let Some(r) = reader {
        let _ = r.read_to_end(&mut buf).await;
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::runtime().expect("a runtime").block_on(f)
    }

    #[test]
    fn captures_output_and_status() {
        let done = block_on(run(
            &Command::new("sh")
                .arg("-c")
                .arg("echo out; echo err >&2; exit 3"),
            Duration::from_secs(20),
            Output::Capture,
        ))
        .expect("ran");
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, b"out\n");
        assert_eq!(done.stderr, b"err\n");
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let err = block_on(run(
            &Command::new("/nonexistent/tsboot-test"),
            Duration::from_secs(20),
            Output::Capture,
        ))
        .unwrap_err();
        assert!(
            matches!(err, RunError::Spawn(SpawnError::NotFound { .. })),
            "{err}"
        );
    }

    #[test]
    fn the_deadline_kills_the_whole_group() {
        // The shell's own child (sleep) must go too: it holds the output pipe open.
        let err = block_on(run(
            &Command::new("sh").arg("-c").arg("sleep 30; echo late"),
            Duration::from_millis(200),
            Output::Capture,
        ))
        .unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("did not finish within"), "{err}");
    }

    #[test]
    fn children_start_with_no_descriptor_but_stdio() {
        // An fd without close-on-exec, as a supervisor's readiness fd is when it arrives.
        let (_r, w) = nix::unistd::pipe().expect("pipe");
        use std::os::fd::AsRawFd as _;
        let fd = w.as_raw_fd();
        let done = block_on(run(
            &Command::new("sh").arg("-c").arg(format!(
                "[ -e /proc/self/fd/{fd} ] && echo leaked || echo clean"
            )),
            Duration::from_secs(20),
            Output::Capture,
        ))
        .expect("ran");
        assert_eq!(String::from_utf8_lossy(&done.stdout), "clean\n");
    }
}
