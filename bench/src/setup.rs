//! The boots the scenarios measure, in the test harness's roots (`tsboot_tests::harness::Root`:
//! fake `tailscaled`, `tailscale`, `iptables`, `ip6tables` first on PATH, proc/sys files, the
//! record file) against its fake apiserver (`harness::ApiServer`). The doubles are the ones
//! built next to this binary (`tsboot_tests::bin_path`); ts-init's stderr is read through a
//! pipe here, not the harness's file, because each line is stamped as it arrives.

use crate::sys::{self, FileCounter, Lines};
use nix::sys::signal::Signal;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tsboot_tests::harness::{self, ApiServer, HEAD};

/// One build of tsboot's binaries (e.g. the static image build, the plain release build).
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

/// The harness's HEAD era: initial NeedsLogin, and the login `tailscale up` makes it replay,
/// ending in Running with identity n5Ez6W7CNTRL / test-node.tail1234.ts.net. / 100.101.102.103.
pub const ADDR0: &str = HEAD.ipv4;
pub const DEST_IP: &str = "10.0.0.5";
/// The fake tailscaled's request log (one line per LocalAPI request), under the root.
pub const REQUEST_LOG: &str = "tailscaled-requests.log";
/// The serve config of the full configuration: one HTTP listener with a text handler.
const SERVE_CONFIG: &str = r#"{"TCP":{"80":{"HTTP":true}},"Web":{"${TS_CERT_DOMAIN}:80":{"Handlers":{"/":{"Text":"bench"}}}}}"#;
pub const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// A harness root with the HEAD era's fixtures and the fake tailscaled's request log in its
/// environment; kept on disk with `TSBOOT_BENCH_KEEP=1`.
pub struct Root {
    root: Option<harness::Root>,
    pub env: Vec<(String, String)>,
}

impl Root {
    pub fn new(tag: &str) -> Root {
        let root = harness::Root::new(&format!("bench-{tag}"));
        let mut env = root.era_env(&HEAD);
        env.push((
            "FAKE_TAILSCALED_REQUEST_LOG".into(),
            root.dir.join(REQUEST_LOG).display().to_string(),
        ));
        Root {
            root: Some(root),
            env,
        }
    }
}

impl Deref for Root {
    type Target = harness::Root;
    fn deref(&self) -> &harness::Root {
        self.root.as_ref().expect("root until dropped")
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Some(root) = self.root.take() {
            if std::env::var_os("TSBOOT_BENCH_KEEP").is_some() {
                root.keep();
            }
        }
    }
}

/// The harness's fake apiserver with a `tailscale` secret holding an auth key.
pub fn apiserver(root: &Root) -> ApiServer {
    ApiServer::start(
        root,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-bench"}}]}"#,
    )
}

/// Which configuration a boot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Userspace networking, no Kubernetes, no TS_DEST_IP: prep, tailscaled, ts-auth.
    Minimal,
    /// The full configuration: in Kubernetes (fake apiserver, state secret with an auth key),
    /// kernel networking, TS_DEST_IP, health + metrics endpoint, a serve config: ts-health,
    /// prep, preflight, tailscaled, ts-auth, ts-proxy-rules, ts-kubestate, ts-serve.
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
            Config::Full => "full (kube + TS_DEST_IP + health/metrics + serve)",
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

pub fn count_lines(p: &Path) -> usize {
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
        config: Config,
        pid_ns: bool,
    ) -> Result<Boot, String> {
        let root = Root::new(tag);
        let mut env = root.env.clone();
        let api = match config {
            Config::Minimal => None,
            Config::Full => {
                let api = apiserver(&root);
                env.extend(api.env.iter().cloned());
                let serve = root.dir.join("serve.json");
                std::fs::write(&serve, SERVE_CONFIG).map_err(|e| format!("serve config: {e}"))?;
                let serve = serve.display().to_string();
                let vars = [
                    ("TS_USERSPACE", "false"),
                    ("TS_DEST_IP", DEST_IP),
                    ("TS_ENABLE_HEALTH_CHECK", "true"),
                    ("TS_ENABLE_METRICS", "true"),
                    ("TS_LOCAL_ADDR_PORT", "127.0.0.1:0"),
                    ("TS_SERVE_CONFIG", &serve),
                ];
                env.extend(vars.map(|(k, v)| (k.to_string(), v.to_string())));
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
                    sys::signal(outer, Signal::SIGKILL);
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
        sys::signal(self.init_pid, Signal::SIGTERM);
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
    pub fn start(tag: &str, init: &[&str], pid_ns: bool) -> Result<Wrapped, String> {
        let root = Root::new(tag);
        let mut argv: Vec<String> = Vec::new();
        if pid_ns {
            argv.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
        }
        argv.extend(init.iter().map(|s| s.to_string()));
        argv.push(
            tsboot_tests::bin_path("fake-tailscaled")
                .display()
                .to_string(),
        );
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
            sys::signal(child.id() as i32, Signal::SIGKILL);
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
        sys::signal(self.init_pid, Signal::SIGTERM);
        sys::reap(&mut self.child, Duration::from_secs(10));
    }
}
