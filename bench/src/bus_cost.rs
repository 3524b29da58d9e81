//! Bus cost (issue 18, goal 2): what tsboot's watchers receive from tailscaled and spend on it,
//! at 1k/10k/100k peers, on a daemon that sends no netmap to a lean watch (HEAD era: v1.98+)
//! and on an old one that sends the whole netmap on every change (seed era).
//!
//! Per watcher process (ts-kubestate watch, ts-proxy-rules with `TS_DEST_IP`, ts-health), run
//! alone against the fake tailscaled holding a Running node with N peers:
//! * bytes received per boot: what the fake tailscaled wrote to the process over the LocalAPI
//!   socket (watches and status, HTTP headers included) until it reported readiness;
//! * bytes and CPU per self change: the deltas of those bytes and of the run time in
//!   `/proc/<pid>/schedstat` over `changes` self changes (identity and address alternating),
//!   each given 700 ms (more than the 500 ms reconcile spacing) to be handled;
//! * peak RSS: `VmHWM` at the end.
//!
//! The peers are generated like a real netmap's (about 700 bytes each; a real one is 1–2 KiB).

use crate::setup::Variant;
use crate::stats::Table;
use crate::sys::{schedstat, Mem};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tsboot_tests::fake_tailscaled::synthetic_peer;
use tsboot_tests::harness::{self, ApiServer};

const SELF_A: (&str, &str, &str) = ("nSelfACNTRL", "node-a.tail1234.ts.net.", "100.64.0.1");
const SELF_B: (&str, &str, &str) = ("nSelfBCNTRL", "node-b.tail1234.ts.net.", "100.64.0.2");

fn self_node(me: (&str, &str, &str)) -> String {
    format!(
        r#"{{"ID":1,"StableID":"{}","Name":"{}","Addresses":["{}/32"],"MachineAuthorized":true,"Hostinfo":{{"OS":"linux","Hostname":"node"}}}}"#,
        me.0, me.1, me.2
    )
}

/// A netmap with this node and `peers` peers, written straight to `out`.
fn write_netmap(out: &mut impl std::io::Write, me: (&str, &str, &str), peers: u32) {
    let _ = write!(
        out,
        r#"{{"SelfNode":{},"Addresses":["{}/32"],"DNS":{{"CertDomains":["{}"]}},"Peers":["#,
        self_node(me),
        me.2,
        me.1.trim_end_matches('.')
    );
    for n in 1..=peers {
        if n > 1 {
            let _ = out.write_all(b",");
        }
        let _ = out.write_all(synthetic_peer(n + 1).as_bytes());
    }
    let _ = out.write_all(b"]}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// v1.98+: a lean watch gets no netmap; runtime self changes are `SelfChange`.
    New,
    /// seed..v1.96: the whole netmap on every change, to every watcher.
    Old,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::New => "new (v1.98+: SelfChange, no netmap)",
            Daemon::Old => "old (whole netmap on every change)",
        }
    }
}

/// The initial state file and a writer of one self-change line.
fn write_initial(dir: &Path, daemon: Daemon, peers: u32) -> PathBuf {
    let path = dir.join("initial.json");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("initial"));
    match daemon {
        Daemon::New => {
            let _ = write!(
                f,
                r#"{{"Version":"1.102.3-fake","SessionID":"0","State":6,"SelfChange":{},"NetMap":"#,
                self_node(SELF_A)
            );
            write_netmap(&mut f, SELF_A, peers);
            let _ = write!(f, r#","DriveShares":null}}"#);
        }
        Daemon::Old => {
            let _ = write!(f, r#"{{"Version":"1.36.0-fake","State":6,"NetMap":"#);
            write_netmap(&mut f, SELF_A, peers);
            let _ = write!(f, "}}");
        }
    }
    let _ = f.flush();
    path
}

fn write_change(dir: &Path, daemon: Daemon, peers: u32, me: (&str, &str, &str)) -> PathBuf {
    let path = dir.join("change.ndjson");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("change"));
    match daemon {
        Daemon::New => {
            let _ = writeln!(
                f,
                r#"{{"Version":"1.102.3-fake","SelfChange":{},"DriveShares":null}}"#,
                self_node(me)
            );
        }
        Daemon::Old => {
            let _ = write!(f, r#"{{"Version":"1.36.0-fake","NetMap":"#);
            write_netmap(&mut f, me, peers);
            let _ = writeln!(f, "}}");
        }
    }
    let _ = f.flush();
    path
}

/// What the fake tailscaled has sent to process `pid` so far (its `sent` control command).
fn received(root: &harness::Root, pid: i32) -> u64 {
    let answer = root.control("sent");
    answer
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(p, _)| p.parse::<i32>().ok() == Some(pid))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

pub struct Row {
    pub daemon: Daemon,
    pub peers: u32,
    pub process: &'static str,
    pub boot_bytes: u64,
    pub change_bytes: f64,
    pub change_cpu_ms: f64,
    pub hwm_kib: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19002)
}

/// One daemon shape at one tailnet size: the three watchers side by side.
fn run_one(
    variant: &Variant,
    daemon: Daemon,
    peers: u32,
    changes: usize,
) -> Result<Vec<Row>, String> {
    let root = harness::Root::new(&format!("buscost-{peers}"));
    let initial = write_initial(&root.dir, daemon, peers);
    let mut env = root.base_env();
    env.push((
        "FAKE_TAILSCALED_INITIAL".into(),
        initial.display().to_string(),
    ));
    let mut fake: Child = Command::new(tsboot_tests::bin_path("fake-tailscaled"))
        .arg(format!("--socket={}", root.socket.display()))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("fake tailscaled: {e}"))?;
    let listening = || root.socket.exists().then_some(());
    if harness::poll(
        Duration::from_secs(120),
        Duration::from_millis(20),
        listening,
    )
    .is_none()
    {
        let _ = fake.kill();
        return Err("the fake tailscaled did not listen".into());
    }
    let api = ApiServer::start(&root, r#"{"secrets":[{"name":"tailscale","data":{}}]}"#);
    let mut kube_env = env.clone();
    kube_env.extend(api.env.iter().cloned());
    let mut proxy_env = env.clone();
    proxy_env.push(("TS_USERSPACE".into(), "false".into()));
    proxy_env.push(("TS_DEST_IP".into(), "10.0.0.5".into()));
    let mut health_env = env.clone();
    health_env.push(("TS_ENABLE_HEALTH_CHECK".into(), "true".into()));
    health_env.push((
        "TS_LOCAL_ADDR_PORT".into(),
        format!("127.0.0.1:{}", free_port()),
    ));
    let spawn = |bin: &str, args: &[&str], env: Vec<(String, String)>| {
        harness::Proc::spawn(
            &variant.bin(bin),
            args,
            harness::Spawn {
                env,
                ready: true,
                ..harness::Spawn::default()
            },
        )
    };
    let mut procs = [
        (
            "ts-kubestate watch",
            spawn("ts-kubestate", &["watch", "--can-patch", "true"], kube_env),
        ),
        ("ts-proxy-rules", spawn("ts-proxy-rules", &[], proxy_env)),
        ("ts-health", spawn("ts-health", &[], health_env)),
    ];
    // Bytes received so far and ns spent on a CPU.
    let sample = |p: &harness::Proc| {
        let cpu = schedstat(p.pid()).map_or(0, |s| s.0);
        (received(&root, p.pid()), cpu)
    };
    let mut boot = Vec::new();
    for (name, p) in procs.iter_mut() {
        if !p.wait_ready() {
            let _ = fake.kill();
            return Err(format!("{name} never became ready:\n{}", p.log()));
        }
        boot.push(sample(p));
    }
    // What arrived after readiness settles before the changes are counted.
    std::thread::sleep(Duration::from_millis(700));
    let before: Vec<(u64, u64)> = procs.iter().map(|(_, p)| sample(p)).collect();
    for i in 0..changes {
        let me = if i % 2 == 0 { SELF_B } else { SELF_A };
        let file = write_change(&root.dir, daemon, peers, me);
        root.control(&format!("replay {}", file.display()));
        std::thread::sleep(Duration::from_millis(700));
    }
    // Large messages may still be on their way: wait until nothing more arrives.
    let total =
        |root: &harness::Root| -> u64 { procs.iter().map(|(_, p)| received(root, p.pid())).sum() };
    let mut last = total(&root);
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let now = total(&root);
        if now == last {
            break;
        }
        last = now;
    }
    let mut rows = Vec::new();
    for (i, (name, p)) in procs.iter().enumerate() {
        let (r, c) = sample(p);
        rows.push(Row {
            daemon,
            peers,
            process: name,
            boot_bytes: boot[i].0,
            change_bytes: (r - before[i].0) as f64 / changes as f64,
            change_cpu_ms: (c - before[i].1) as f64 / changes as f64 / 1e6,
            hwm_kib: Mem::of(p.pid()).map_or(0, |m| m.hwm),
        });
    }
    for (_, p) in procs.iter_mut() {
        p.stop();
    }
    let _ = fake.kill();
    let _ = fake.wait();
    drop(api);
    Ok(rows)
}

/// Every size, both daemon shapes.
pub fn run(variant: &Variant, sizes: &[u32], changes: usize) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for daemon in [Daemon::New, Daemon::Old] {
        for &peers in sizes {
            eprintln!("bench: bus cost, {} daemon, {peers} peers", daemon.name());
            match run_one(variant, daemon, peers, changes) {
                Ok(r) => rows.extend(r),
                Err(e) => failures.push(format!("bus cost {peers}: {e}")),
            }
        }
    }
    (rows, failures)
}

pub fn report(rows: &[Row], changes: usize) -> String {
    let mut t = Table::new(&[
        "daemon",
        "peers",
        "process",
        "bytes received, boot",
        "bytes per self change",
        "CPU per self change",
        "peak RSS (VmHWM)",
    ]);
    for r in rows {
        t.row(vec![
            r.daemon.name().to_string(),
            r.peers.to_string(),
            r.process.to_string(),
            format!("{:.1} KiB", r.boot_bytes as f64 / 1024.0),
            format!("{:.1} KiB", r.change_bytes / 1024.0),
            format!("{:.2} ms", r.change_cpu_ms),
            format!("{} KiB", r.hwm_kib),
        ]);
    }
    format!(
        "### Bus cost: what each watcher receives and spends ({changes} self changes each)\n\nGoals (issue 18): ≤ 64 KiB per boot and per change on new daemons, ≤ 1 ms CPU per change, ≤ 8 MiB peak RSS per watcher on old daemons.\n\n{}\n",
        t.render()
    )
}

/// The goal-2 rows of the goals table, at the largest tailnet measured: bytes per boot and per
/// self change on the new daemon, CPU per change, and peak RSS on the old daemon (worst watcher).
pub fn goals(rows: &[Row], goals: &mut crate::goals::Goals) {
    let Some(peers) = rows.iter().map(|r| r.peers).max() else {
        return;
    };
    let at = |d: Daemon| {
        rows.iter()
            .filter(move |r| r.peers == peers && r.daemon == d)
    };
    // The first of the largest.
    let worst =
        |it: &mut dyn Iterator<Item = (&'static str, f64)>| it.min_by(|a, b| b.1.total_cmp(&a.1));
    if let Some((p, kib)) = worst(&mut at(Daemon::New).map(|r| {
        (
            r.process,
            (r.boot_bytes as f64).max(r.change_bytes) / 1024.0,
        )
    })) {
        goals.add(
            "2a",
            format!(
                "bus bytes per boot and per self change, new daemon, {peers} peers (worst watcher)"
            ),
            format!("{kib:.1} KiB ({p})"),
            kib <= 64.0,
        );
    }
    if let Some((p, ms)) = worst(
        &mut rows
            .iter()
            .filter(|r| r.peers == peers)
            .map(|r| (r.process, r.change_cpu_ms)),
    ) {
        goals.add(
            "2b",
            format!("CPU per self change, {peers} peers, either daemon (worst watcher)"),
            format!("{ms:.2} ms ({p})"),
            ms <= 1.0,
        );
    }
    if let Some((p, kib)) = worst(&mut at(Daemon::Old).map(|r| (r.process, r.hwm_kib as f64))) {
        goals.add(
            "2c",
            format!(
                "watcher peak RSS, old daemon sending full netmaps, {peers} peers (worst watcher)"
            ),
            format!("{kib:.0} KiB ({p})"),
            kib <= 8192.0,
        );
    }
}
