//! Real peers: the real `tailscaled`, `tailscale`, `containerboot`, `derper` and `headscale`
//! (built from their Go modules by `tests/real/install.sh`), wired together in network namespaces
//! this harness creates.
//!
//! The network rule is hard: nothing may leave the machine. Every real program runs inside a
//! namespace made here whose only interfaces are its loopback and veths to other namespaces made
//! here, and whose routes cover only the lab's own addresses (198.18.0.0/15, the range set aside
//! for benchmarking interconnects, and the hub's 10.77.0.1, which exists only inside the lab). tailscaled always gets
//! `--no-logs-no-support` and a login server on the hub, and the only DERP map headscale hands out
//! names the lab's own `derper` (in `--dev` mode: plain HTTP on 3340, STUN on 3478; tailscaled
//! speaks HTTP to it because of `TS_DEBUG_USE_DERP_HTTP=1`). A namespace that cannot be set up
//! fails the test; nothing falls back to the host's network.
//!
//! Topology: a hub namespace runs headscale and derper on 10.77.0.1 (its loopback); every node
//! namespace `i` has a veth to the hub (hub side 198.18.i.1, node side 198.18.i.2) and routes to
//! 198.18.0.0/15 and 10.77.0.1/32 only; the hub forwards between nodes, so nodes reach each other directly (the
//! DERP is there because a node wants a home region, not because a path needs it). A backend
//! namespace can hang behind a node on 198.19.i.0/24 for the DNAT and subnet-router tests.
#![allow(
    unsafe_code,
    reason = "real programs get PR_SET_PDEATHSIG in pre_exec so none outlives a failed test"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::harness::{ApiServer, Proc};

/// Real boots are slow next to the doubles (key generation, a control round trip, netcheck).
pub const REAL_PATIENCE: Duration = Duration::from_secs(60);

/// The hub's address: headscale and derper listen here. A private address on purpose: for a
/// plain-HTTP login server on a non-private address, tailscaled falls back to Noise over
/// HTTPS on port 443 after any dropped control connection and never returns to HTTP (see
/// `control/ts2021` and `controlhttp`'s `forceNoise443`), so a lab on 198.18/15 alone could not
/// survive a headscale restart. It exists only on the hub's loopback.
pub const HUB_IP: &str = "10.77.0.1";
pub const HEADSCALE_PORT: u16 = 8080;
pub const DERP_PORT: u16 = 3340;
pub const STUN_PORT: u16 = 3478;

/// Versions `tests/real/install.sh` pins (kept in step with it).
pub const TAILSCALE_VERSION: &str = "v1.102.5";
pub const HEADSCALE_VERSION: &str = "v0.29.3";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Real labs run one at a time: each is a control server, a DERP and one or more daemons, and
/// two cores run one lab well but several badly.
static SERIAL: Mutex<()> = Mutex::new(());

/// Where the real programs are.
#[derive(Clone, Debug)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `TSBOOT_REAL_BIN`, else install.sh's default cache directory.
    pub fn locate() -> Result<Bins, String> {
        let dir = match std::env::var_os("TSBOOT_REAL_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                let cache = std::env::var_os("TSBOOT_REAL_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(home).join(".cache/tsboot-real"));
                cache.join(format!(
                    "bin-tailscale-{TAILSCALE_VERSION}-headscale-{HEADSCALE_VERSION}"
                ))
            }
        };
        for name in [
            "tailscaled",
            "tailscale",
            "containerboot",
            "derper",
            "headscale",
        ] {
            if !dir.join(name).is_file() {
                return Err(format!(
                    "{} missing (run tests/real/install.sh)",
                    dir.join(name).display()
                ));
            }
        }
        Ok(Bins { dir })
    }
}

/// The real programs and the right to run a lab, or `None` after printing `SKIPPED: <why>`.
pub fn require(test: &str) -> Option<(Bins, MutexGuard<'static, ()>)> {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root (network namespaces, veths, tun)".to_string())
    } else if let Some(tool) = ["ip", "nsenter", "iptables"]
        .into_iter()
        .find(|t| which(t).is_none())
    {
        Some(format!("{tool} not installed"))
    } else {
        Bins::locate().err()
    };
    if let Some(why) = why {
        println!("SKIPPED: {test}: {why}");
        return None;
    }
    let bins = Bins::locate().ok()?;
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    Some((bins, guard))
}

/// The ts-init the lab boots: this build's, or `TSBOOT_REAL_TS_INIT` (the bench points it at the
/// shipped static build, whose phases sit beside it).
pub fn ts_init() -> PathBuf {
    std::env::var_os("TSBOOT_REAL_TS_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::bin_path("ts-init"))
}

/// `Some(path)` of a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

/// A network namespace made by the test (`ip netns add`), removed with everything in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        netns_del(&name);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which also gives
    /// it a mount namespace of its own).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Like [`Netns::command`], with a private tmpfs on `/run` first (so `/var/run/tailscale`
    /// and `/var/run/secrets` are the test's own), and `sa_dir` copied to the service-account
    /// path when given.
    pub fn command_private_run(
        &self,
        sa_dir: Option<&Path>,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(
                r#"mount -t tmpfs tsboot-run /run || exit 97
if [ -n "$1" ]; then
  mkdir -p /run/secrets/kubernetes.io || exit 97
  cp -r "$1" /run/secrets/kubernetes.io/serviceaccount || exit 97
fi
shift
exec "$@""#,
            )
            .arg("sh")
            .arg(sa_dir.map(|p| p.as_os_str()).unwrap_or_default())
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens belong here.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let start = Instant::now();
        loop {
            let pids = self.pids();
            if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        netns_del(&self.name);
    }
}

/// `ip netns del`, quietly (the namespace may not exist).
fn netns_del(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Starts `cmd` with stdout and stderr in `log` (`append`: kept from an earlier run).
fn spawn_logged(mut cmd: Command, log: PathBuf, append: bool) -> Proc {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().expect("dup log file");
    // Never let a real program outlive a test that panics before its drop runs.
    // SAFETY: the closure only calls prctl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Proc::from_child(child, log)
}

/// Waits until `check` returns `Some`, or panics after `within` with `what` and `context()`.
pub fn wait_for<T>(
    within: Duration,
    what: &str,
    check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    crate::harness::poll(within, Duration::from_millis(100), check).unwrap_or_else(|| {
        panic!(
            "timed out after {within:?} waiting for {what}\n{}",
            context()
        )
    })
}

/// Hub (headscale + derper), node namespaces, and optional backends behind nodes.
pub struct Lab {
    pub bins: Bins,
    pub dir: PathBuf,
    pub hub: Netns,
    nodes: Vec<(String, Netns)>,
    backends: Vec<(String, Netns)>,
    headscale: Option<Proc>,
    _derper: Proc,
    user_id: String,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// A lab with one namespace per name in `nodes`, headscale (fresh database, one user) and
    /// derper running on the hub. `None` (after `SKIPPED:`) when the real programs are missing.
    pub fn new(test: &str, nodes: &[&str]) -> Option<Lab> {
        let (bins, serial) = require(test)?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let dir = crate::harness::temp_dir(&format!("real-{test}"));
        let hub = Netns::new(format!("tsr{tag}hub"));
        hub.ip(&["addr", "add", &format!("{HUB_IP}/32"), "dev", "lo"]);
        run_ok(hub.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
        let mut lab_nodes = Vec::new();
        for (i, name) in nodes.iter().enumerate() {
            let i = i + 1;
            let ns = Netns::new(format!("tsr{tag}{name}"));
            let names = (format!("h{tag}n{i}"), format!("n{tag}n{i}"));
            let hub_route = format!("{HUB_IP}/32");
            veth(
                &hub,
                &ns,
                names,
                &format!("198.18.{i}"),
                &["198.18.0.0/15", &hub_route],
            );
            lab_nodes.push((name.to_string(), ns));
        }
        let mut derper = hub.command(bins.path("derper"));
        derper.args([
            "--dev",
            "--c",
            &dir.join("derper.key").display().to_string(),
            "--stun-port",
            &STUN_PORT.to_string(),
        ]);
        let derper = spawn_logged(derper, dir.join("derper.log"), false);
        write_headscale_config(&dir);
        let mut lab = Lab {
            bins,
            dir,
            hub,
            nodes: lab_nodes,
            backends: Vec::new(),
            headscale: None,
            _derper: derper,
            user_id: String::new(),
            _serial: serial,
        };
        lab.wait_tcp(DERP_PORT, "derper");
        lab.start_headscale();
        let user = lab.headscale_json(&["users", "create", "tsboot"]);
        lab.user_id = json_id(&user).unwrap_or_else(|| panic!("no user id in {user}"));
        Some(lab)
    }

    pub fn login_server(&self) -> String {
        format!("http://{HUB_IP}:{HEADSCALE_PORT}")
    }

    pub fn node(&self, name: &str) -> &Netns {
        &self
            .nodes
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no node namespace {name}"))
            .1
    }

    /// Starts headscale (again, after [`Lab::stop_headscale`]) and waits until it answers.
    pub fn start_headscale(&mut self) {
        let log = self.dir.join("headscale.log");
        let mut cmd = self.hub.command(self.bins.path("headscale"));
        cmd.args([
            "-c",
            &self.dir.join("headscale.yaml").display().to_string(),
            "serve",
        ]);
        // Append, so a restart keeps the first run's log for a failing test.
        self.headscale = Some(spawn_logged(cmd, log, true));
        self.wait_tcp(HEADSCALE_PORT, "headscale");
        // The CLI's socket comes up with the HTTP listener, but give it its own check.
        wait_for(
            REAL_PATIENCE,
            "headscale's CLI socket",
            || {
                self.headscale_try(&["users", "list", "-o", "json"])
                    .ok()
                    .map(|_| ())
            },
            || self.headscale_log(),
        );
    }

    pub fn stop_headscale(&mut self) {
        if let Some(mut hs) = self.headscale.take() {
            hs.stop();
        }
    }

    pub fn headscale_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("headscale.log")).unwrap_or_default()
    }

    fn wait_tcp(&self, port: u16, what: &str) {
        wait_for(
            REAL_PATIENCE,
            &format!("{what} listening on {HUB_IP}:{port}"),
            || {
                self.hub.within(move || {
                    TcpStream::connect_timeout(
                        &SocketAddr::new(HUB_IP.parse().expect("hub address"), port),
                        Duration::from_millis(500),
                    )
                    .ok()
                    .map(|_| ())
                })
            },
            || {
                format!(
                    "headscale log:\n{}\nderper log:\n{}",
                    self.headscale_log(),
                    std::fs::read_to_string(self.dir.join("derper.log")).unwrap_or_default()
                )
            },
        )
    }

    /// Runs the headscale CLI; its stdout, or an error with the status and its output.
    pub fn headscale_try(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .hub
            .command(self.bins.path("headscale"))
            .args(["-c", &self.dir.join("headscale.yaml").display().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        stdout_or_error(&format!("headscale {args:?}"), out)
    }

    /// Runs the headscale CLI with `-o json` and parses its answer.
    pub fn headscale_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.headscale_try(&all).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("headscale {args:?}: {e}: {text}"))
    }

    /// A fresh pre-auth key of the lab's user.
    pub fn preauth_key(&self, reusable: bool) -> String {
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            self.user_id.as_str(),
            "--expiration",
            "1h",
        ];
        if reusable {
            args.push("--reusable");
        }
        let v = self.headscale_json(&args);
        v.get("key")
            .and_then(|k| k.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no key in {v}"))
    }

    /// headscale's node list.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        match self.headscale_json(&["nodes", "list"]) {
            serde_json::Value::Array(nodes) => nodes,
            serde_json::Value::Null => Vec::new(),
            other => panic!("nodes list: {other}"),
        }
    }

    /// The node headscale knows under `name` (its given name or host name).
    pub fn node_named(&self, name: &str) -> Option<serde_json::Value> {
        self.nodes().into_iter().find(|n| {
            ["given_name", "givenName", "name"]
                .iter()
                .any(|k| n.get(k).and_then(|v| v.as_str()) == Some(name))
        })
    }

    /// Approves `routes` for the node called `name`.
    pub fn approve_routes(&self, name: &str, routes: &str) {
        let node = wait_for(
            REAL_PATIENCE,
            &format!("node {name} in headscale"),
            || self.node_named(name),
            || format!("{:#?}", self.nodes()),
        );
        let id = json_id(&node).unwrap_or_else(|| panic!("no id in {node}"));
        self.headscale_try(&[
            "nodes",
            "approve-routes",
            "--identifier",
            &id,
            "--routes",
            routes,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The environment every real tailscaled (and CLI) of the lab gets: no log upload, HTTP to
    /// the lab's DERP.
    pub fn daemon_env(&self) -> Vec<(String, String)> {
        vec![
            ("TS_NO_LOGS_NO_SUPPORT".into(), "true".into()),
            ("TS_DEBUG_USE_DERP_HTTP".into(), "1".into()),
            (
                "PATH".into(),
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bins.dir.display()),
            ),
            ("HOME".into(), self.dir.display().to_string()),
        ]
    }

    /// A namespace behind node `behind` (link 198.19.i.0/24, backend at 198.19.i.2) serving
    /// HTTP on `port` with `body`. Returns the backend's address.
    pub fn add_backend(&mut self, behind: &str, port: u16, body: &str) -> String {
        let i = self.backends.len() + 1;
        let tag = self.hub.name.trim_end_matches("hub").to_string();
        let ns = Netns::new(format!("{tag}be{i}"));
        let node = self.node(behind);
        let names = (format!("{tag}bn{i}"), format!("{tag}bb{i}"));
        // Replies to tailnet sources go back through the node (no default route: nothing else
        // is reachable from here).
        veth(node, &ns, names, &format!("198.19.{i}"), &["100.64.0.0/10"]);
        let addr = format!("198.19.{i}.2");
        let bind: SocketAddr = format!("{addr}:{port}").parse().expect("backend addr");
        let listener = ns.within(move || TcpListener::bind(bind).expect("backend bind"));
        serve_http(listener, body.to_string());
        self.backends.push((behind.to_string(), ns));
        addr
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_headscale();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lab files kept in {}", self.dir.display());
        }
    }
}

/// Brings a veth up without an IPv6 link-local address: its duplicate-address detection ends a
/// second or two later, which tailscaled's network monitor sees as a major link change and
/// answers by dropping its control connection — churn in the middle of a login.
fn link_up(ns: &Netns, dev: &str) {
    ns.ip(&["link", "set", "dev", dev, "addrgenmode", "none"]);
    ns.ip(&["link", "set", dev, "up"]);
}

/// A veth pair between `near` (`<net>.1/24`) and `far` (`<net>.2/24`), both up, with `routes`
/// in `far` going through `near`.
fn veth(near: &Netns, far: &Netns, (a, b): (String, String), net: &str, routes: &[&str]) {
    // veth names are at most 15 bytes.
    let (a, b) = (trunc15(&a), trunc15(&b));
    ip(&[
        "link", "add", &a, "netns", &near.name, "type", "veth", "peer", "name", &b, "netns",
        &far.name,
    ]);
    near.ip(&["addr", "add", &format!("{net}.1/24"), "dev", &a]);
    link_up(near, &a);
    far.ip(&["addr", "add", &format!("{net}.2/24"), "dev", &b]);
    link_up(far, &b);
    for route in routes {
        far.ip(&["route", "add", route, "via", &format!("{net}.1")]);
    }
}

fn trunc15(s: &str) -> String {
    let skip = s.chars().count().saturating_sub(15);
    s.chars().skip(skip).collect()
}

fn json_id(v: &serde_json::Value) -> Option<String> {
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn write_headscale_config(dir: &Path) {
    let d = dir.display();
    // No DERP from the internet: the map is the file below, naming the lab's derper only.
    let derp = format!(
        "regions:\n  900:\n    regionid: 900\n    regioncode: lab\n    regionname: tsboot lab DERP\n    nodes:\n      - name: 900a\n        regionid: 900\n        hostname: {HUB_IP}\n        ipv4: {HUB_IP}\n        stunport: {STUN_PORT}\n        derpport: {DERP_PORT}\n"
    );
    std::fs::write(dir.join("derp.yaml"), derp).expect("derp map");
    let config = format!(
        r#"server_url: http://{HUB_IP}:{HEADSCALE_PORT}
listen_addr: 0.0.0.0:{HEADSCALE_PORT}
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: false
  urls: []
  paths:
    - {d}/derp.yaml
  auto_update_enabled: false
  update_frequency: 24h
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: ""
dns:
  magic_dns: true
  base_domain: lab.tsboot.test
  override_local_dns: false
  nameservers:
    global: []
unix_socket: {d}/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
"#
    );
    std::fs::write(dir.join("headscale.yaml"), config).expect("headscale config");
}

/// Serves `body` over HTTP/1.0 to every connection on `listener`, on a thread of its own.
pub fn serve_http(listener: TcpListener, body: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

/// One HTTP/1.0 GET from inside `ns`; the body, or an error.
pub fn http_get(ns: &Netns, addr: &str, port: u16, host: &str) -> Result<String, String> {
    let target: SocketAddr = format!("{addr}:{port}")
        .parse()
        .map_err(|e| format!("{addr}:{port}: {e}"))?;
    let host = host.to_string();
    ns.within(move || {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .map_err(|e| format!("connect {target}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(conn, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .map_err(|e| format!("read from {target}: {e}"))?;
        resp.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .ok_or_else(|| format!("no HTTP response from {target}: {resp:?}"))
    })
}

/// A real tailscaled run directly by the test (a peer, or the daemon under containerboot).
pub struct Daemon {
    pub proc: Proc,
    pub socket: PathBuf,
    ns_name: String,
    tailscale: PathBuf,
    env: Vec<(String, String)>,
}

impl Lab {
    /// Starts a plain real tailscaled in node `name` (kernel mode unless `userspace`).
    pub fn start_daemon(&self, name: &str, userspace: bool) -> Daemon {
        let ns = self.node(name);
        let state = self.dir.join(format!("daemon-{name}"));
        std::fs::create_dir_all(&state).expect("daemon state dir");
        let socket = state.join("tailscaled.sock");
        let mut cmd = ns.command_private_run(None, self.bins.path("tailscaled"));
        cmd.arg(format!("--socket={}", socket.display()))
            .arg(format!("--statedir={}", state.display()))
            .arg("--no-logs-no-support")
            .arg(if userspace {
                "--tun=userspace-networking"
            } else {
                "--tun=tailscale0"
            })
            .env_clear()
            .envs(self.daemon_env());
        let log = state.join("tailscaled.log");
        let daemon = Daemon {
            proc: spawn_logged(cmd, log, false),
            socket,
            ns_name: ns.name.clone(),
            tailscale: self.bins.path("tailscale"),
            env: self.daemon_env(),
        };
        wait_for(
            REAL_PATIENCE,
            "the peer's LocalAPI socket",
            || daemon.socket.exists().then_some(()),
            || daemon.proc.log(),
        );
        daemon
    }
}

impl Daemon {
    /// Runs the real CLI against this daemon (inside its namespace).
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name])
            .arg(&self.tailscale)
            .arg(format!("--socket={}", self.socket.display()));
        run_cli(cmd, &self.env, args)
    }

    /// `tailscale up` with the lab's login server and a fresh key.
    pub fn up(&self, lab: &Lab, hostname: &str, extra: &[&str]) {
        let key = lab.preauth_key(false);
        let mut args = vec![
            "up".to_string(),
            format!("--login-server={}", lab.login_server()),
            format!("--authkey={key}"),
            format!("--hostname={hostname}"),
            "--timeout=60s".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)
            .unwrap_or_else(|e| panic!("{e}\ntailscaled log:\n{}", self.proc.log()));
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.cli(&["status", "--json"]).ok()?).ok()
    }

    /// The daemon's first tailnet IPv4 address once it has one.
    pub fn ipv4(&self) -> String {
        wait_for(
            REAL_PATIENCE,
            "a tailnet IPv4 address",
            || self_ipv4(&self.status()?),
            || self.proc.log(),
        )
    }
}

/// Runs a prepared `tailscale` command with `args` and exactly `env`; stdout, or an error
/// with the status and both outputs.
fn run_cli(mut cmd: Command, env: &[(String, String)], args: &[&str]) -> Result<String, String> {
    let out = cmd
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    stdout_or_error(&format!("tailscale {args:?}"), out)
}

/// A finished program's stdout, or an error naming `what` with its status and both outputs.
fn stdout_or_error(what: &str, out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `Self.TailscaleIPs`' first IPv4 address in a `tailscale status --json` answer.
pub fn self_ipv4(status: &serde_json::Value) -> Option<String> {
    status
        .get("Self")?
        .get("TailscaleIPs")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .find(|a| a.contains('.'))
        .map(str::to_string)
}

/// How a tsboot (or containerboot) boot under test is started.
pub struct BootSpec<'a> {
    pub node: &'a str,
    /// `TS_*` and other variables on top of [`Lab::daemon_env`] and the lab's defaults.
    pub env: Vec<(String, String)>,
    /// Service-account files to place at the real path (Kubernetes tests).
    pub service_account: Option<&'a Path>,
    /// `containerboot` instead of ts-init.
    pub containerboot: bool,
}

/// A ts-init (or containerboot) under test, with what the test needs to look at it.
pub struct Boot {
    pub init: Proc,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    tailscale: PathBuf,
    env: Vec<(String, String)>,
    pub started: Instant,
}

impl Lab {
    /// Directory of a node's tsboot state (kept across restarts of the same node).
    pub fn state_dir(&self, node: &str) -> PathBuf {
        let dir = self.dir.join(format!("boot-{node}"));
        std::fs::create_dir_all(&dir).expect("state dir");
        dir
    }

    /// The variables every real boot gets: socket and state under the lab, the login server,
    /// `--no-logs-no-support`, a hostname equal to the node's name.
    pub fn boot_env(&self, node: &str) -> Vec<(String, String)> {
        let state = self.state_dir(node);
        let mut env = self.daemon_env();
        let vars = [
            (
                "TS_SOCKET",
                state.join("tailscaled.sock").display().to_string(),
            ),
            ("TS_STATE_DIR", state.display().to_string()),
            (
                "TS_EXTRA_ARGS",
                format!("--login-server={} --hostname={node}", self.login_server()),
            ),
            ("TS_TAILSCALED_EXTRA_ARGS", "--no-logs-no-support".into()),
            // Kubernetes is detected from this; the real tests say so explicitly when wanted.
            ("KUBERNETES_SERVICE_HOST", String::new()),
        ];
        env.extend(vars.map(|(k, v)| (k.to_string(), v)));
        env
    }

    /// Starts ts-init (or containerboot) in the node's namespace with a private `/run`.
    pub fn boot(&self, spec: BootSpec<'_>) -> Boot {
        self.boot_in(spec, false)
    }

    /// [`Lab::boot`], with `pid_ns`: the wrapper as PID 1 of a PID namespace of its own
    /// (`unshare --pid --fork --mount-proc`), as in a container; `Boot::init` is then
    /// `unshare`, whose one child is the wrapper.
    pub fn boot_in(&self, spec: BootSpec<'_>, pid_ns: bool) -> Boot {
        let ns = self.node(spec.node);
        let mut env = self.boot_env(spec.node);
        for (k, v) in spec.env {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        let socket = PathBuf::from(
            env.iter()
                .find(|(k, _)| k == "TS_SOCKET")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        );
        let program = if spec.containerboot {
            self.bins.path("containerboot")
        } else {
            ts_init()
        };
        let mut cmd = if pid_ns {
            let unshare = which("unshare").expect("util-linux unshare");
            let mut c = ns.command_private_run(spec.service_account, unshare);
            c.args(["--pid", "--fork", "--mount-proc"]).arg(program);
            c
        } else {
            ns.command_private_run(spec.service_account, program)
        };
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        let log = self.state_dir(spec.node).join(if spec.containerboot {
            "containerboot.log"
        } else {
            "ts-init.log"
        });
        let stderr = std::fs::File::create(&log).expect("boot log");
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup"))
            .stderr(stderr)
            .spawn()
            .expect("start the boot");
        Boot {
            init: Proc::from_child(child, log),
            socket,
            state_dir: self.state_dir(spec.node),
            tailscale: self.bins.path("tailscale"),
            env: self.daemon_env(),
            started,
        }
    }
}

impl Boot {
    pub fn log(&self) -> String {
        self.init.log()
    }

    /// The real CLI against the boot's socket, run inside its namespace.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        self.cli_at(Some(&self.socket), args)
    }

    /// The real CLI inside the boot's network *and mount* namespace (so `/var/run/tailscale`
    /// is the boot's own), with `--socket` only when given.
    pub fn cli_at(&self, socket: Option<&Path>, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init.pid().to_string())
            .args(["-m", "-n"])
            .arg(&self.tailscale);
        if let Some(s) = socket {
            cmd.arg(format!("--socket={}", s.display()));
        }
        run_cli(cmd, &self.env, args)
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.cli(&["status", "--json"]).ok()?).ok()
    }

    /// Waits until tailscaled reports Running with a tailnet IPv4 address; returns it.
    pub fn wait_running(&mut self) -> String {
        let start = Instant::now();
        loop {
            if let Some(status) = self.status() {
                if status.get("BackendState").and_then(|s| s.as_str()) == Some("Running") {
                    if let Some(ip) = self_ipv4(&status) {
                        return ip;
                    }
                }
            }
            if let Some(code) = self.init.try_status() {
                panic!(
                    "boot exited ({code:?}) before Running\nlog:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > REAL_PATIENCE {
                panic!("not Running after {REAL_PATIENCE:?}\nlog:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a log line ending in `suffix` (real boots get the real patience).
    pub fn expect_log(&mut self, suffix: &str) {
        self.init.expect_log_within(suffix, REAL_PATIENCE);
    }
}

impl Lab {
    /// Starts the repository's fake kube-apiserver in node `node` (so the boot there reaches it
    /// on 127.0.0.1) with a JSON `FakeConfig`.
    pub fn fake_apiserver(&self, node: &str, config: &str) -> ApiServer {
        let root = self.dir.join(format!("kube-{node}"));
        ApiServer::launch(root, config, REAL_PATIENCE, |args, log| {
            let mut cmd = self.node(node).command(crate::bin_path("fake-apiserver"));
            cmd.args(args);
            spawn_logged(cmd, log, false)
        })
    }
}

/// Raw IPN-bus capture: every line tailscaled sends on one watch, as it sent it.
pub struct BusCapture {
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl BusCapture {
    /// Opens `watch-ipn-bus?mask=<mask>` on `socket` as soon as the socket accepts, on a thread
    /// of its own, keeping each line. HTTP/1.0, so the body comes unchunked, line by line.
    pub fn start(socket: PathBuf, mask: u64) -> BusCapture {
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let connect = || std::os::unix::net::UnixStream::connect(&socket).ok();
            let Some(mut stream) =
                crate::harness::poll(REAL_PATIENCE, Duration::from_millis(5), connect)
            else {
                return;
            };
            if write!(
                stream,
                "GET /localapi/v0/watch-ipn-bus?mask={mask} HTTP/1.0\r\nHost: local-tailscaled.sock\r\n\r\n"
            )
            .is_err()
            {
                return;
            }
            let reader = std::io::BufReader::new(stream);
            let mut in_body = false;
            for line in std::io::BufRead::lines(reader) {
                let Ok(line) = line else { return };
                if !in_body {
                    in_body = line.is_empty();
                    continue;
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        BusCapture { lines }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a line satisfies `pred`.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        wait_for(
            REAL_PATIENCE,
            what,
            || self.lines().iter().any(|l| pred(l)).then_some(()),
            || self.lines().join("\n"),
        )
    }
}
