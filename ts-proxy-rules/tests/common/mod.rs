//! Shared scaffolding of the ts-proxy-rules binary tests: a fake tailscaled, a bin directory
//! with the fake iptables, and a running ts-proxy-rules whose readiness fd and stderr are
//! watched as events (no sleeps to "let it settle").
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tsboot_tests::fake_tailscaled_ctl::{require_bin, FakeTailscaled, PATIENCE};

pub const BIN: &str = env!("CARGO_BIN_EXE_ts-proxy-rules");

pub struct Scene {
    pub fake: FakeTailscaled,
    pub bin_dir: PathBuf,
    pub record: PathBuf,
}

impl Scene {
    pub fn new(tag: &str, initial: Option<&Path>) -> Scene {
        let fake = FakeTailscaled::start(tag, initial, &[]);
        let bin_dir = fake.dir.join("usr/bin");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        for name in ["iptables", "ip6tables"] {
            std::os::unix::fs::symlink(require_bin("fake-iptables"), bin_dir.join(name))
                .expect("symlink");
        }
        Scene {
            record: fake.dir.join("proxy-args"),
            bin_dir,
            fake,
        }
    }

    fn root(&self) -> String {
        self.fake.dir.display().to_string()
    }

    fn base(&self, program: &Path, dest: &str, path: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", path)
            .env("TS_TEST_RECORD_ARGS", &self.record)
            .env("TS_SOCKET", &self.fake.socket)
            .env("TS_DEST_IP", dest)
            .env("TS_USERSPACE", "false")
            .stdin(Stdio::null());
        cmd
    }

    fn default_path(&self) -> String {
        format!("{}:/usr/bin:/bin", self.bin_dir.display())
    }

    pub fn start(&self, dest: &str, env: &[(&str, &str)]) -> Proxy {
        self.spawn(Path::new(BIN), &[], dest, env, &self.default_path())
    }

    pub fn start_with_path(&self, dest: &str, env: &[(&str, &str)], path: &str) -> Proxy {
        self.spawn(Path::new(BIN), &[], dest, env, path)
    }

    pub fn start_args(&self, dest: &str, env: &[(&str, &str)], args: &[&str]) -> Proxy {
        self.spawn(Path::new(BIN), args, dest, env, &self.default_path())
    }

    /// Runs `program args` (e.g. `nsenter ... ts-proxy-rules`) with the watcher's environment,
    /// the readiness pipe at fd 3 and `TS_READY_FD=3` (unless `env` overrides it).
    pub fn spawn(
        &self,
        program: &Path,
        args: &[&str],
        dest: &str,
        env: &[(&str, &str)],
        path: &str,
    ) -> Proxy {
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let mut cmd = self.base(program, dest, path);
        cmd.args(args)
            .env("TS_READY_FD", "3")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let wfd = ready_w.as_raw_fd();
        // SAFETY: dup2/fcntl are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc;
                if wfd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start ts-proxy-rules");
        // Only the child may hold the write end, so EOF means "it closed it or exited".
        drop(ready_w);
        Proxy::new(&mut child, ready_r).with_child(child)
    }

    /// One-shot run (for --help, --explain) with captured output.
    pub fn output(&self, args: &[&str], dest: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = self.base(Path::new(BIN), dest, &self.default_path());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run ts-proxy-rules")
    }

    fn lines(&self, p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&self.root(), ""))
            .collect()
    }

    /// Mutating iptables commands the watcher ran, as the fake recorded them.
    pub fn records(&self) -> Vec<String> {
        self.lines(&self.record)
    }

    pub fn readonly_records(&self) -> Vec<String> {
        self.lines(&PathBuf::from(format!(
            "{}.readonly",
            self.record.display()
        )))
    }

    fn state(&self, program: &str) -> PathBuf {
        PathBuf::from(format!("{}.{program}.state", self.record.display()))
    }

    fn fake_iptables(&self, program: &str, args: &[&str]) -> Output {
        let out = Command::new(self.bin_dir.join(program))
            .args(args)
            .env_clear()
            .env("FAKE_IPTABLES_STATE", self.state(program))
            .output()
            .expect("fake iptables");
        assert!(out.status.success(), "{args:?}: {out:?}");
        out
    }

    /// The PREROUTING rules in the fake's state (`-A ...` lines).
    pub fn rules(&self, program: &str) -> Vec<String> {
        let out = self.fake_iptables(program, &["-t", "nat", "-S", "PREROUTING"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    /// Replaces the PREROUTING rules (not recorded), e.g. what a previous container left.
    pub fn set_rules(&self, program: &str, specs: &[&str]) {
        let _ = std::fs::remove_file(self.state(program));
        for spec in specs {
            let mut args = vec!["-t", "nat", "-A", "PREROUTING"];
            args.extend(spec.split(' '));
            self.fake_iptables(program, &args);
        }
    }
}

/// A running watcher.
pub struct Proxy {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: Receiver<()>,
    ready: Receiver<Vec<u8>>,
    ready_seen: Option<Vec<u8>>,
    status: Option<std::process::ExitStatus>,
}

impl Proxy {
    fn new(child: &mut Child, ready_r: OwnedFd) -> Proxy {
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
                let _ = tx.send(());
            }
        });
        let (rtx, ready) = channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let _ = std::fs::File::from(ready_r).read_to_end(&mut got);
            let _ = rtx.send(got);
        });
        Proxy {
            child: None,
            lines,
            new_line,
            ready,
            ready_seen: None,
            status: None,
        }
    }

    fn with_child(mut self, child: Child) -> Proxy {
        self.child = Some(child);
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_log(&mut self, needle: &str) {
        let start = Instant::now();
        loop {
            if self
                .lines
                .lock()
                .expect("log lock")
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            let left = PATIENCE.saturating_sub(start.elapsed());
            match self.new_line.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no log line containing {needle:?}:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if !self
                        .lines
                        .lock()
                        .expect("log lock")
                        .iter()
                        .any(|l| l.contains(needle))
                    {
                        panic!("exited without logging {needle:?}:\n{}", self.log());
                    }
                }
            }
        }
    }

    fn ready_bytes(&mut self) -> Vec<u8> {
        if self.ready_seen.is_none() {
            let got = self.ready.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!("readiness fd neither written nor closed:\n{}", self.log())
            });
            self.ready_seen = Some(got);
        }
        self.ready_seen.clone().unwrap_or_default()
    }

    /// Waits until the watcher wrote its readiness line and closed the fd.
    pub fn wait_ready(&mut self) {
        let got = self.ready_bytes();
        assert_eq!(got, b"\n", "readiness fd carried {got:?}:\n{}", self.log());
    }

    /// After the process ended: did it ever report readiness?
    pub fn ready_reported(&mut self) -> bool {
        self.ready_bytes() == b"\n"
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn try_code(&mut self) -> Option<i32> {
        if self.status.is_none() {
            self.status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
        }
        self.status.map(|s| {
            use std::os::unix::process::ExitStatusExt as _;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        })
    }

    /// Waits for the exit (bounded) and returns the exit code.
    pub fn wait_code(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(code) = self.try_code() {
                // Let the stderr reader drain so log() is complete.
                while self.new_line.recv_timeout(PATIENCE).is_ok() {}
                return code;
            }
            assert!(start.elapsed() < PATIENCE, "still running:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
