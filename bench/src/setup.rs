//! Test roots laid out like `tests/src/harness.rs` (fake `tailscaled`, `tailscale`, `iptables`,
//! `ip6tables` first on PATH, proc/sys files, the record file), the fake apiserver, and the
//! boots the scenarios measure.

use crate::sys::{self, FileCounter, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where the binaries and fixtures are.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Directory holding fake-tailscaled, fake-tailscale, fake-iptables, fake-apiserver.
    pub fakes: PathBuf,
    /// tests/fixtures/ipn-bus.
    pub fixtures: PathBuf,
}

/// One build of tsboot's five binaries (e.g. the static image build, the plain release build).
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    pub dir: PathBuf,
}

impl Variant {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Fixtures of a HEAD-era daemon (the harness's `HEAD` era): initial NeedsLogin, and the login
/// `tailscale up` makes it replay, ending in Running with identity n5Ez6W7CNTRL /
/// test-node.tail1234.ts.net. / 100.101.102.103.
pub const INITIAL: &str = "head-era-01-initial-needslogin-mask14.json";
pub const LOGIN: &str = "head-era-stream-authkey-login-mask14.ndjson";
pub const ADDR0: &str = "100.101.102.103";
pub const DEST_IP: &str = "10.0.0.5";
/// The fake tailscaled's request log (one line per LocalAPI request), under the root.
pub const REQUEST_LOG: &str = "tailscaled-requests.log";
pub const STARTUP: &str = "Startup complete, waiting for shutdown signal";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Root {
    pub dir: PathBuf,
    pub control: PathBuf,
    pub socket: PathBuf,
    pub record: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Root {
    pub fn new(tag: &str, paths: &Paths) -> Root {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: unix socket paths must stay under 108 bytes.
        let dir = PathBuf::from(format!("/tmp/tsb-bench-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "usr/bin",
            "tmp",
            "dev/net",
            "proc/sys/net/ipv4",
            "proc/sys/net/ipv6/conf/all",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("create root dirs");
        }
        std::fs::write(dir.join("dev/net/tun"), "").expect("tun");
        std::fs::write(dir.join("proc/sys/net/ipv4/ip_forward"), "0").expect("sysctl");
        std::fs::write(dir.join("proc/sys/net/ipv6/conf/all/forwarding"), "0").expect("sysctl");
        for (name, fake) in [
            ("tailscaled", "fake-tailscaled"),
            ("tailscale", "fake-tailscale"),
            ("iptables", "fake-iptables"),
            ("ip6tables", "fake-iptables"),
        ] {
            std::os::unix::fs::symlink(paths.fakes.join(fake), dir.join("usr/bin").join(name))
                .expect("symlink fake");
        }
        let record = dir.join("args");
        let control = dir.join("tailscaled-control.sock");
        let socket = dir.join("tmp/tailscaled.sock");
        let env = vec![
            (
                "PATH".to_string(),
                format!(
                    "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                    dir.join("usr/bin").display()
                ),
            ),
            (
                "TS_TEST_RECORD_ARGS".to_string(),
                record.display().to_string(),
            ),
            (
                "TS_TEST_SOCKET".to_string(),
                dir.join("test.sock").display().to_string(),
            ),
            ("TS_SOCKET".to_string(), socket.display().to_string()),
            ("TS_TEST_ONLY_ROOT".to_string(), dir.display().to_string()),
            (
                "FAKE_TAILSCALED_CONTROL".to_string(),
                control.display().to_string(),
            ),
            (
                "FAKE_TAILSCALED_REQUEST_LOG".to_string(),
                dir.join(REQUEST_LOG).display().to_string(),
            ),
            (
                "FAKE_TAILSCALED_INITIAL".to_string(),
                paths.fixtures.join(INITIAL).display().to_string(),
            ),
            (
                "FAKE_TAILSCALE_UP_REPLAY".to_string(),
                paths.fixtures.join(LOGIN).display().to_string(),
            ),
        ];
        Root {
            dir,
            control,
            socket,
            record,
            env,
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if std::env::var_os("TSBOOT_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The fake kube-apiserver as a process (`fake-apiserver`), serving a `tailscale` secret that
/// holds an auth key, with its service account written under the root.
pub struct ApiServer {
    child: Child,
    pub state: PathBuf,
    pub env: Vec<(String, String)>,
}

impl ApiServer {
    pub fn start(root: &Root, paths: &Paths) -> Result<ApiServer, String> {
        let state = root.dir.join("apiserver");
        std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
        let config = state.join("config.json");
        std::fs::write(
            &config,
            r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-bench"}}]}"#,
        )
        .map_err(|e| e.to_string())?;
        let mut child = Command::new(paths.fakes.join("fake-apiserver"))
            .arg("--root")
            .arg(&root.dir)
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting fake-apiserver: {e}"))?;
        let start = Instant::now();
        while !state.join("port").exists() {
            if start.elapsed() > Duration::from_secs(10)
                || child.try_wait().ok().flatten().is_some()
            {
                sys::signal(child.id() as i32, sys::SIGKILL);
                let _ = child.wait();
                return Err("fake-apiserver did not start".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let env = std::fs::read_to_string(state.join("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        Ok(ApiServer { child, state, env })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        sys::signal(self.child.id() as i32, sys::SIGTERM);
        sys::reap(&mut self.child, Duration::from_secs(5));
    }
}

/// Which configuration a boot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Userspace networking, no Kubernetes, no TS_DEST_IP: prep, tailscaled, ts-auth.
    Minimal,
    /// In Kubernetes (fake apiserver, state secret with an auth key), kernel networking,
    /// TS_DEST_IP: prep, preflight, tailscaled, ts-auth, ts-proxy-rules, ts-kubestate.
    Full,
}

impl Config {
    pub fn short(self) -> &'static str {
        match self {
            Config::Minimal => "minimal",
            Config::Full => "full",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Config::Minimal => "minimal",
            Config::Full => "full (kube + TS_DEST_IP)",
        }
    }
}

/// A running ts-init with its stderr (its children's too) read line by line.
pub struct Boot {
    pub root: Root,
    pub api: Option<ApiServer>,
    pub child: Child,
    pub lines: Lines,
    /// When the bench called spawn (just before the exec of ts-init).
    pub t0: Instant,
    /// ts-init's own pid (the child of `unshare` when in a PID namespace).
    pub init_pid: i32,
    /// Lines in the record file (one per fake tailscaled/tailscale/iptables exec), stamped.
    pub records: Option<FileCounter>,
    /// Whether `<root>/tmp/tailscaled.sock` exists (created by the fake's bind), stamped.
    pub socket_created: Option<FileCounter>,
    /// Requests that reached the fake tailscaled (`FAKE_TAILSCALED_REQUEST_LOG`), stamped.
    pub requests: Option<FileCounter>,
}

fn count_lines(p: &Path) -> usize {
    std::fs::read(p)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

fn exists_count(p: &Path) -> usize {
    usize::from(std::fs::symlink_metadata(p).is_ok())
}

impl Boot {
    /// Starts ts-init of `variant` in a fresh root; `pid_ns`: as PID 1 of a new PID namespace.
    pub fn start(
        tag: &str,
        variant: &Variant,
        paths: &Paths,
        config: Config,
        pid_ns: bool,
    ) -> Result<Boot, String> {
        let root = Root::new(tag, paths);
        let mut env = root.env.clone();
        let api = match config {
            Config::Minimal => None,
            Config::Full => {
                let api = ApiServer::start(&root, paths)?;
                env.extend(api.env.iter().cloned());
                env.push(("TS_USERSPACE".into(), "false".into()));
                env.push(("TS_DEST_IP".into(), DEST_IP.into()));
                Some(api)
            }
        };
        // ts-init's own debug lines mark the phases; every other binary logs at info.
        env.push(("RUST_LOG".into(), "ts_init=debug,info".into()));
        // Exec of each fake (its argv record) and the socket's creation, stamped by inotify.
        let records = FileCounter::start(&root.dir, "args", sys::IN_MODIFY, count_lines).ok();
        let requests = FileCounter::start(&root.dir, REQUEST_LOG, sys::IN_MODIFY, count_lines).ok();
        let socket_created = FileCounter::start(
            &root.dir.join("tmp"),
            "tailscaled.sock",
            sys::IN_CREATE,
            exists_count,
        )
        .ok();
        let ts_init = variant.bin("ts-init");
        let mut cmd = if pid_ns {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc"]).arg(&ts_init);
            c
        } else {
            Command::new(&ts_init)
        };
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("starting ts-init: {e}"))?;
        let lines = Lines::spawn(child.stderr.take().expect("stderr"));
        let init_pid = if pid_ns {
            let outer = child.id() as i32;
            let start = Instant::now();
            loop {
                if let Some(p) = sys::children(outer, 4096).first() {
                    break *p;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    sys::signal(outer, sys::SIGKILL);
                    let _ = child.wait();
                    return Err("ts-init did not appear inside the namespace".into());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        } else {
            child.id() as i32
        };
        Ok(Boot {
            root,
            api,
            child,
            lines,
            t0,
            init_pid,
            records,
            socket_created,
            requests,
        })
    }

    pub fn wait_startup(&self) -> Result<Instant, String> {
        self.lines
            .wait(0, STARTUP, Duration::from_secs(20))
            .map(|(_, t)| t)
            .map_err(|e| format!("{e}\nts-init's stderr:\n{}", self.lines.text()))
    }

    /// The resident processes under ts-init by name (tailscaled, ts-auth, watchers).
    pub fn children(&self) -> Vec<(String, i32)> {
        sys::children(self.init_pid, 64 * 1024)
            .into_iter()
            .map(|p| (sys::comm(p), p))
            .collect()
    }

    /// Stops the inotify watchers (measurements done).
    pub fn unwatch(&mut self) {
        self.records = None;
        self.socket_created = None;
        self.requests = None;
    }

    /// SIGTERM, then waits for the exit; returns the status code.
    pub fn stop(mut self) -> Result<(), String> {
        self.unwatch();
        sys::signal(self.init_pid, sys::SIGTERM);
        let code = sys::reap(&mut self.child, Duration::from_secs(30));
        if code != Some(0) {
            return Err(format!(
                "ts-init exited with {code:?} after SIGTERM\n{}",
                self.lines.text()
            ));
        }
        Ok(())
    }
}

/// A reference init (tini, dumb-init) running the fake tailscaled, optionally as PID 1.
pub struct Wrapped {
    pub root: Root,
    pub child: Child,
    /// The init's own pid (the child of `unshare` when in a PID namespace).
    pub init_pid: i32,
}

impl Wrapped {
    pub fn start(tag: &str, init: &[&str], paths: &Paths, pid_ns: bool) -> Result<Wrapped, String> {
        let root = Root::new(tag, paths);
        let mut argv: Vec<String> = Vec::new();
        if pid_ns {
            argv.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
        }
        argv.extend(init.iter().map(|s| s.to_string()));
        argv.push(paths.fakes.join("fake-tailscaled").display().to_string());
        argv.push(format!("--socket={}", root.socket.display()));
        argv.push("--state=mem:".into());
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(root.env.iter().map(|(k, v)| (k, v)))
            .env("FAKE_TAILSCALED_READY_STDOUT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", argv[0]))?;
        let out = Lines::spawn(child.stdout.take().expect("stdout"));
        if let Err(e) = out.wait(0, "ready", Duration::from_secs(10)) {
            sys::signal(child.id() as i32, sys::SIGKILL);
            let _ = child.wait();
            return Err(format!(
                "{}: fake tailscaled not ready: {e}",
                init.join(" ")
            ));
        }
        let init_pid = if pid_ns {
            *sys::children(child.id() as i32, 4096)
                .first()
                .ok_or("no init inside the namespace")?
        } else {
            child.id() as i32
        };
        Ok(Wrapped {
            root,
            child,
            init_pid,
        })
    }

    pub fn stop(mut self) {
        sys::signal(self.init_pid, sys::SIGTERM);
        sys::reap(&mut self.child, Duration::from_secs(10));
    }
}
