//! Test-side handle of a standalone fake tailscaled: starts the `fake-tailscaled` binary in a
//! private temporary directory, waits until it listens (it prints `ready`, no polling), talks to
//! its control socket, and kills it when dropped.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::harness::{poll, temp_dir, wait_until, PATIENCE};

/// [`crate::bin_path`], failing with what to do when the binary was not built.
pub fn require_bin(name: &str) -> PathBuf {
    let p = crate::bin_path(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// The ipn-bus fixtures of this crate.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/ipn-bus")
        .join(name)
}

/// The control command that sends a fixture: `notify` with the contents of a file of one
/// message, `replay` for `.ndjson`.
pub fn fixture_command(name: &str) -> String {
    let path = fixture(name);
    if name.ends_with(".ndjson") {
        format!("replay {}", path.display())
    } else {
        let json = std::fs::read_to_string(&path).expect("fixture");
        format!("notify {}", json.trim())
    }
}

pub struct FakeTailscaled {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub request_log: PathBuf,
    pub record: PathBuf,
}

impl FakeTailscaled {
    /// Starts the fake with `initial` as its state (default: the harness NeedsLogin notify)
    /// plus `env`, and returns once both sockets listen.
    pub fn start(tag: &str, initial: Option<&Path>, env: &[(&str, &str)]) -> FakeTailscaled {
        let dir = temp_dir(tag);
        Self::start_in(dir, initial, env)
    }

    /// Like [`FakeTailscaled::start`] in an existing directory (e.g. a restart).
    pub fn start_in(dir: PathBuf, initial: Option<&Path>, env: &[(&str, &str)]) -> FakeTailscaled {
        let socket = dir.join("tailscaled.sock");
        let control = dir.join("ctl.sock");
        let request_log = dir.join("requests.log");
        let record = dir.join("args");
        let mut cmd = Command::new(require_bin("fake-tailscaled"));
        cmd.arg(format!("--socket={}", socket.display()))
            .arg("--state=mem:")
            .env("FAKE_TAILSCALED_CONTROL", &control)
            .env("FAKE_TAILSCALED_REQUEST_LOG", &request_log)
            .env("FAKE_TAILSCALED_READY_STDOUT", "1")
            .env("TS_TEST_RECORD_ARGS", &record)
            .env_remove("TS_TEST_SOCKET")
            .env_remove("FAKE_TAILSCALED_INITIAL")
            .env_remove("FAKE_TAILSCALED_ERA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(p) = initial {
            cmd.env("FAKE_TAILSCALED_INITIAL", p);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start fake-tailscaled");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        let mut fake = FakeTailscaled {
            child: Some(child),
            dir,
            socket,
            control,
            request_log,
            record,
        };
        if line.trim() != "ready" {
            let status = fake
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!("fake-tailscaled did not get ready (said {line:?}, status {status:?})");
        }
        fake
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends a control command; the answer (which must start with `ok`).
    pub fn control(&self, command: &str) -> String {
        let answer = self
            .try_control(command)
            .unwrap_or_else(|e| panic!("control {command:?}: {e}"));
        assert!(
            answer.starts_with("ok"),
            "control {command:?} answered {answer:?}"
        );
        answer
    }

    pub fn try_control(&self, command: &str) -> std::io::Result<String> {
        crate::fake_cli::control_command(&self.control, command)
    }

    /// Sends the fixture's messages (see [`fixture_command`]).
    pub fn send_fixture(&self, name: &str) {
        self.control(&fixture_command(name));
    }

    /// Lines of the request log.
    pub fn requests(&self) -> Vec<String> {
        crate::harness::read_lines(&self.request_log)
    }

    pub fn watchers(&self) -> usize {
        self.control("watchers")
            .trim_start_matches("ok")
            .trim()
            .parse()
            .expect("watchers count")
    }

    /// Waits (bounded by [`PATIENCE`]) until `n` watch streams are open.
    pub fn wait_watchers(&self, n: usize) {
        wait_until(&format!("{n} open watch streams"), || self.watchers() == n);
    }

    /// Waits for the fake to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("fake running");
        poll(PATIENCE, Duration::from_millis(10), || {
            child.try_wait().expect("try_wait")
        })
        .expect("fake-tailscaled did not exit")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Stops the fake (SIGKILL) without removing its directory; returns the directory.
    pub fn kill_keep_dir(mut self) -> PathBuf {
        self.kill();
        let dir = self.dir.clone();
        self.dir = PathBuf::new();
        dir
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for FakeTailscaled {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() && !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A raw stand-in for tailscaled's bus endpoint: accepts one connection on `listener`, reads the
/// request head and answers `200` with a chunked JSON body, whose chunks the caller writes.
/// Returns the connection and the request head.
pub async fn accept_chunked(
    listener: &tokio::net::UnixListener,
) -> (tokio::net::UnixStream, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut s, _) = listener.accept().await.expect("accept");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.expect("read") == 0 {
            break;
        }
        head.push(b[0]);
    }
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("write");
    (s, String::from_utf8_lossy(&head).into_owned())
}
