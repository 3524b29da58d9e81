//! End-to-end harness: a temporary root laid out like the reference's `main_test.go` harness
//! (fake `tailscaled`, `tailscale`, `iptables`, `ip6tables` first on PATH, proc/sys files, the
//! record file), and [`Proc`], the one way tests (and the bench) run a binary under test: a
//! clean environment, stderr kept in a file for assertions, an optional readiness pipe (fd 3, as
//! ts-init gives it) and an optional result pipe (the preflight's `--result-fd`).
#![allow(
    unsafe_code,
    reason = "placing a child's pipes at fixed fd numbers needs pre_exec"
)]

use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// How long any single expectation may take before the test fails (a deadline against hangs,
/// not a performance assertion). The one deadline of every helper in this crate.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The fd a child finds its readiness pipe at (ts-init's convention).
pub const READY_FD: RawFd = 3;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty, short temporary directory, unique per process, tag and call (unix socket
/// paths under it must stay below 108 bytes). The one temp-root helper of the tests.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tsb-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Calls `check` every `every` until it gives `Some`; `None` once `within` has passed. The one
/// polling loop of the helpers.
pub fn poll<T>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Polls `cond` until it holds, failing with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let held = poll(PATIENCE, Duration::from_millis(10), || cond().then_some(()));
    assert!(held.is_some(), "timed out waiting for {what}");
}

pub use crate::fake_tailscaled_ctl::fixture;

/// A message stream era: which fixtures drive the fake tailscaled and what identity they carry.
#[derive(Clone, Copy, Debug)]
pub struct Era {
    pub name: &'static str,
    /// Initial state of the fake tailscaled (a Notify JSON file).
    pub initial: &'static str,
    /// What `tailscale up` makes tailscaled send (NDJSON), ending in Running with a netmap.
    pub login: &'static str,
    /// A Running-era change of the node's identity (new StableID and name).
    pub identity_change: &'static str,
    pub stable_id: &'static str,
    pub fqdn: &'static str,
    pub ipv4: &'static str,
    pub new_stable_id: &'static str,
    pub new_fqdn: &'static str,
}

/// The reference harness's own notifies (seed `main_test.go`: myID, test-node.test.ts.net).
pub const HARNESS: Era = Era {
    name: "harness",
    initial: "seed-era-testharness-needslogin.json",
    login: "seed-era-testharness-running.json",
    identity_change: "seed-era-testharness-running-newid.json",
    stable_id: "myID",
    fqdn: "test-node.test.ts.net",
    ipv4: "100.64.0.1",
    new_stable_id: "newID",
    new_fqdn: "new-name.test.ts.net",
};

/// A seed-era (v1.36) daemon: identity in NetMap, top-level Addresses.
pub const SEED: Era = Era {
    name: "seed",
    initial: "seed-era-01-initial-needslogin-mask14.json",
    login: "seed-era-stream-authkey-login-mask14.ndjson",
    identity_change: "seed-era-13-netmap-new-stableid-and-name.json",
    stable_id: "n5Ez6W7CNTRL",
    fqdn: "test-node.tail1234.ts.net.",
    ipv4: "100.101.102.103",
    new_stable_id: "nQ9xR2tCNTRL",
    new_fqdn: "new-name.tail1234.ts.net.",
};

/// A HEAD-era (v1.102) daemon: identity only in SelfChange at runtime.
pub const HEAD: Era = Era {
    name: "head",
    initial: "head-era-01-initial-needslogin-mask14.json",
    login: "head-era-stream-authkey-login-mask14.ndjson",
    identity_change: "head-era-14-selfchange-new-stableid-and-name.json",
    stable_id: "n5Ez6W7CNTRL",
    fqdn: "test-node.tail1234.ts.net.",
    ipv4: "100.101.102.103",
    new_stable_id: "nQ9xR2tCNTRL",
    new_fqdn: "new-name.tail1234.ts.net.",
};

/// A real tailscaled v1.102.5, captured in the real-peer lab (tests/fixtures/ipn-bus/real-v1.102):
/// identity only in `SelfChange`, headscale's numeric StableID; the change is a rename.
pub const REAL: Era = Era {
    name: "real-v1.102",
    initial: "real-v1.102/01-initial-needslogin-mask14.json",
    login: "real-v1.102/stream-authkey-login-mask14.ndjson",
    identity_change: "real-v1.102/02-selfchange-renamed.json",
    stable_id: "1",
    fqdn: "a.lab.tsboot.test.",
    ipv4: "100.64.0.1",
    new_stable_id: "1",
    new_fqdn: "renamed-a.lab.tsboot.test.",
};

pub const ERAS: [Era; 4] = [HARNESS, SEED, HEAD, REAL];

/// A temporary root (`TS_TEST_ONLY_ROOT`) with the fakes installed.
pub struct Root {
    pub dir: PathBuf,
    pub record: PathBuf,
    pub control: PathBuf,
    pub socket: PathBuf,
    pub stderr: PathBuf,
    env: Vec<(String, String)>,
}

impl Root {
    pub fn new(test: &str) -> Root {
        let dir = temp_dir(test);
        for sub in [
            "usr/bin",
            "tmp",
            "dev/net",
            "proc/sys/net/ipv4",
            "proc/sys/net/ipv6/conf/all",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("create root dirs");
        }
        // Like the reference harness: a tun node already exists (a plain file is enough to
        // satisfy "exists"), so the tests need no CAP_MKNOD.
        std::fs::write(dir.join("dev/net/tun"), "").expect("tun");
        std::fs::write(dir.join("proc/sys/net/ipv4/ip_forward"), "0").expect("sysctl");
        std::fs::write(dir.join("proc/sys/net/ipv6/conf/all/forwarding"), "0").expect("sysctl");
        for (name, fake) in [
            ("tailscaled", "fake-tailscaled"),
            ("tailscale", "fake-tailscale"),
            ("iptables", "fake-iptables"),
            ("ip6tables", "fake-iptables"),
        ] {
            std::os::unix::fs::symlink(crate::bin_path(fake), dir.join("usr/bin").join(name))
                .expect("symlink fake");
        }
        let record = dir.join("args");
        let control = dir.join("tailscaled-control.sock");
        let socket = dir.join("tmp/tailscaled.sock");
        let path = format!(
            "{}:{}",
            dir.join("usr/bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let shown = |p: &Path| p.display().to_string();
        let env = [
            ("PATH", path),
            ("TS_TEST_RECORD_ARGS", shown(&record)),
            ("TS_TEST_SOCKET", shown(&dir.join("test.sock"))),
            ("TS_SOCKET", shown(&socket)),
            ("TS_TEST_ONLY_ROOT", shown(&dir)),
            ("FAKE_TAILSCALED_CONTROL", shown(&control)),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        Root {
            stderr: dir.join("stderr.log"),
            dir,
            record,
            control,
            socket,
            env,
        }
    }

    /// The harness environment plus the era's fixtures (initial state, what `up` replays).
    pub fn era_env(&self, era: &Era) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (k, name) in [
            ("FAKE_TAILSCALED_INITIAL", era.initial),
            ("FAKE_TAILSCALE_UP_REPLAY", era.login),
        ] {
            env.push((k.into(), fixture(name).display().to_string()));
        }
        env
    }

    pub fn base_env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// Starts ts-init with exactly `env` (nothing inherited, as the reference harness does).
    pub fn start_init(&self, env: &[(String, String)], args: &[&str]) -> Proc {
        self.start_program(&crate::bin_path("ts-init"), env, args)
    }

    pub fn start_program(&self, program: &Path, env: &[(String, String)], args: &[&str]) -> Proc {
        Proc::spawn(
            program,
            args,
            Spawn {
                env: env.to_vec(),
                stderr: Some(self.stderr.clone()),
                ..Spawn::default()
            },
        )
    }

    /// Recorded command lines with the root stripped, as the reference harness compares them.
    pub fn records(&self) -> Vec<String> {
        read_lines(&self.record)
            .into_iter()
            .map(|l| l.replace(&self.dir.display().to_string(), ""))
            .collect()
    }

    /// Waits until the records equal `want` exactly (fails on a mismatch that persists).
    pub fn expect_records(&self, want: &[String]) {
        let mut got = Vec::new();
        poll(PATIENCE, Duration::from_millis(20), || {
            got = self.records();
            (got == want || got.len() > want.len()).then_some(())
        });
        assert!(
            got == want,
            "recorded commands differ\n got: {got:#?}\nwant: {want:#?}\nstderr:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    /// Sends one control command to the fake tailscaled and returns its answer line (waiting
    /// for the fake to listen first: it is started by ts-init, not by the test).
    pub fn control(&self, command: &str) -> String {
        let mut last = None;
        let answer = poll(PATIENCE, Duration::from_millis(10), || {
            let answer = crate::fake_cli::control_command(&self.control, command);
            answer.map_err(|e| last = Some(e)).ok()
        })
        .unwrap_or_else(|| panic!("fake tailscaled control socket: {last:?}"));
        assert!(
            answer.starts_with("ok"),
            "control {command:?} answered {answer:?}"
        );
        answer
    }

    /// Sends a control command that ends the fake (`exit`, `signal`), so no answer comes.
    pub fn control_nowait(&self, command: &str) {
        let mut stream =
            UnixStream::connect(&self.control).expect("fake tailscaled control socket");
        writeln!(stream, "{command}").expect("control write");
        // Keep the connection until the fake has read the command and gone.
        let mut rest = String::new();
        let _ = stream.set_read_timeout(Some(PATIENCE));
        let _ = BufReader::new(stream).read_line(&mut rest);
    }

    pub fn notify_file(&self, name: &str) {
        self.control(&crate::fake_tailscaled_ctl::fixture_command(name));
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.join(rel)).unwrap_or_default()
    }

    /// Keeps the root on disk after the harness is done (the demo leaves it to look at).
    pub fn keep(self) -> PathBuf {
        let dir = self.dir.clone();
        std::mem::forget(self);
        dir
    }

    /// Runs a fake (or any program) with the harness environment and returns its stdout.
    pub fn run_with_env(&self, program: &Path, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run program");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What to give a child besides its program and arguments.
#[derive(Default)]
pub struct Spawn {
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Give the child a readiness pipe at fd 3 and `TS_READY_FD=3` (unless `env` sets it).
    pub ready: bool,
    /// Give the child a result pipe at this fd.
    pub result_fd: Option<RawFd>,
    /// Where its stderr goes (created afresh); default: a file in a temporary directory of its
    /// own. A file, not a pipe: the log is complete the moment the child has exited, however
    /// many grandchildren still hold it open.
    pub stderr: Option<PathBuf>,
}

/// A running binary under test (ts-init, a phase, a watcher), stopped when dropped.
pub struct Proc {
    child: Option<Child>,
    stderr: PathBuf,
    /// The temporary directory holding `stderr` when the spawner chose none.
    own_dir: Option<PathBuf>,
    status: Option<ExitStatus>,
    ready: Option<Receiver<Vec<u8>>>,
    ready_seen: Option<Vec<u8>>,
    result: Option<Receiver<Vec<u8>>>,
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
    /// Starts `program` with `args`.
    pub fn spawn(program: &Path, args: &[&str], spec: Spawn) -> Proc {
        let (stderr, own_dir) = match spec.stderr {
            Some(p) => (p, None),
            None => {
                let dir = temp_dir("proc");
                (dir.join("stderr.log"), Some(dir))
            }
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let mut moves: Vec<(RawFd, RawFd)> = Vec::new();
        let mut keep = Vec::new();
        let ready = spec.ready.then(|| {
            let (r, w) = cloexec_pipe();
            moves.push((w.as_raw_fd(), READY_FD));
            cmd.env("TS_READY_FD", READY_FD.to_string());
            keep.push(w);
            r
        });
        // After TS_READY_FD, so a test can give the child a different (e.g. bad) value.
        cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
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
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        // The child has its copies; ours must go so EOF arrives when the child is done.
        drop(keep);
        Proc {
            child: Some(child),
            stderr,
            own_dir,
            status: None,
            ready: ready.map(reader_thread),
            ready_seen: None,
            result: result.map(reader_thread),
        }
    }

    /// Wraps a child started elsewhere (the real-peer lab) whose output goes to `stderr`.
    pub fn from_child(child: Child, stderr: PathBuf) -> Proc {
        Proc {
            child: Some(child),
            stderr,
            own_dir: None,
            status: None,
            ready: None,
            ready_seen: None,
            result: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Everything written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until a stderr line ends with `suffix` (the reference harness's matching rule).
    pub fn expect_log(&mut self, suffix: &str) {
        self.expect_log_within(suffix, PATIENCE)
    }

    pub fn expect_log_within(&mut self, suffix: &str, patience: Duration) {
        self.wait_line(&format!("a log line ending in {suffix:?}"), patience, |l| {
            l.ends_with(suffix)
        })
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_log(&mut self, needle: &str) {
        self.wait_line(
            &format!("a log line containing {needle:?}"),
            PATIENCE,
            |l| l.contains(needle),
        )
    }

    fn wait_line(&mut self, what: &str, patience: Duration, hit: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.lines().any(&hit) {
                return;
            }
            if let Some(status) = self.try_status() {
                panic!("exited ({status:?}) without {what}\nstderr:\n{log}");
            }
            if start.elapsed() > patience {
                panic!("no {what}\nstderr:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ready_bytes(&mut self) -> Vec<u8> {
        if self.ready_seen.is_none() {
            let rx = self.ready.take().expect("spawned with ready: true");
            let got = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                panic!(
                    "readiness fd neither written nor closed\nstderr:\n{}",
                    self.log()
                )
            });
            self.ready_seen = Some(got);
        }
        self.ready_seen.clone().unwrap_or_default()
    }

    /// Waits for the readiness pipe: `true` when a newline came, `false` on EOF without one.
    pub fn wait_ready(&mut self) -> bool {
        self.ready_bytes() == b"\n"
    }

    /// Waits until the child wrote its readiness line and closed the fd.
    pub fn expect_ready(&mut self) {
        let got = self.ready_bytes();
        assert_eq!(
            got,
            b"\n",
            "readiness fd carried {got:?}\nstderr:\n{}",
            self.log()
        );
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

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// The shell-style exit code (128+N for signal N) once it has exited.
    pub fn try_code(&mut self) -> Option<i32> {
        self.try_status()
            .map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
    }

    /// True while the child runs.
    pub fn running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for the exit and returns the exit code (128+N for a signal death).
    pub fn wait_code(&mut self, within: Duration) -> i32 {
        poll(within, Duration::from_millis(10), || self.try_code())
            .unwrap_or_else(|| panic!("still running after {within:?}\nstderr:\n{}", self.log()))
    }

    /// [`Proc::wait_code`] within [`PATIENCE`].
    pub fn wait_exit(&mut self) -> i32 {
        self.wait_code(PATIENCE)
    }

    /// SIGTERM (ts-init stops its children), then SIGKILL (which would orphan them) only if
    /// it does not exit within [`PATIENCE`].
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if self.status.is_some() || child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        poll(PATIENCE, Duration::from_millis(10), || {
            child.try_wait().ok().flatten()
        });
        let _ = child.kill();
        self.status = child.wait().ok();
    }
}

impl Drop for Proc {
    /// A test that fails midway still stops the whole tree.
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.own_dir.take() {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The lines of a file (none while it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `/usr/bin/tailscaled <args>` as the fake records it.
pub fn rec(program: &str, args: &str) -> String {
    if args.is_empty() {
        format!("/usr/bin/{program}")
    } else {
        format!("/usr/bin/{program} {args}")
    }
}

/// The fake kube-apiserver as a separate process (`fake-apiserver`), with its service-account
/// files written under `root` and its state mirrored into `state`; stopped when dropped.
pub struct ApiServer {
    proc: Proc,
    pub root: PathBuf,
    pub state: PathBuf,
    pub env: Vec<(String, String)>,
}

impl ApiServer {
    /// Starts it for the test root with a JSON `FakeConfig` (see `fake-apiserver`'s docs).
    pub fn start(root: &Root, config: &str) -> ApiServer {
        ApiServer::launch(root.dir.clone(), config, PATIENCE, |args, log| {
            let spec = Spawn {
                stderr: Some(log),
                ..Spawn::default()
            };
            Proc::spawn(&crate::bin_path("fake-apiserver"), args, spec)
        })
    }

    /// Starts it with `spawn` (given its arguments and a log file) and its files under `root`,
    /// and waits up to `patience` until it listens.
    pub fn launch(
        root: PathBuf,
        config: &str,
        patience: Duration,
        spawn: impl FnOnce(&[&str], PathBuf) -> Proc,
    ) -> ApiServer {
        let state = root.join("apiserver");
        std::fs::create_dir_all(&state).expect("apiserver state dir");
        let config_file = state.join("config.json");
        std::fs::write(&config_file, config).expect("apiserver config");
        let [r, s, c] = [&root, &state, &config_file].map(|p| p.display().to_string());
        let args = ["--root", &r, "--state-dir", &s, "--config", &c];
        let proc = spawn(&args, root.join("fake-apiserver.log"));
        crate::real::wait_for(
            patience,
            "the fake apiserver's port file",
            || state.join("port").exists().then_some(()),
            || proc.log(),
        );
        let env = read_lines(&state.join("env"))
            .into_iter()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        ApiServer {
            proc,
            root,
            state,
            env,
        }
    }

    /// The service-account directory (to place at the real path).
    pub fn service_account(&self) -> PathBuf {
        self.root.join(crate::fake_apiserver::SERVICEACCOUNT_DIR)
    }

    /// The secret's data, decoded (`None` while it does not exist).
    pub fn secret(&self, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let text =
            std::fs::read_to_string(self.state.join(format!("secret-default-{name}.data.json")))
                .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the secret's data is exactly `want`.
    pub fn expect_secret(&self, name: &str, want: &[(&str, &str)]) {
        let want: std::collections::BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut got = Default::default();
        poll(PATIENCE, Duration::from_millis(20), || {
            got = self.secret(name).unwrap_or_default();
            (got == want).then_some(())
        });
        assert!(
            got == want,
            "secret {name}: got {got:?}, want {want:?}\nrequests:\n{}",
            self.requests().join("\n")
        );
    }

    /// One JSON line per request the server saw.
    pub fn requests(&self) -> Vec<String> {
        read_lines(&self.state.join("requests.log"))
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// (pid, ppid, state) of every process, from /proc.
pub fn processes() -> Vec<(i32, i32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, ppid, state))
        })
        .collect()
}

/// Pids whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|(_, ppid, _)| *ppid == pid)
        .map(|(p, _, _)| p)
        .collect()
}

/// Whether `pid`'s command line mentions `needle`.
pub fn cmdline_contains(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}
