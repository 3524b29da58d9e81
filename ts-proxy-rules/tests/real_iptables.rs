//! ts-proxy-rules against the REAL iptables/ip6tables, in a private network namespace.
//!
//! A holder process (`unshare -n sleep`) owns the namespace; ts-proxy-rules and every listing
//! run inside it through `nsenter -n`, so the namespace outlives one watcher and a restart in
//! the same namespace can be tested. The fake tailscaled stays outside: its socket is a path in
//! the filesystem, reachable from any network namespace.
//!
//! Needs root, `unshare`, `nsenter`, `iptables`, `ip6tables`; otherwise each test prints a loud
//! `SKIPPED:` line (CI runs as root with iptables installed).

mod common;

use common::{Scene, BIN};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use ts_common::process::look_path;
use tsboot_tests::fake_tailscaled_ctl::fixture;

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A network namespace kept alive by `unshare -n sleep`.
struct Netns {
    holder: Child,
    nsenter: PathBuf,
}

impl Netns {
    /// `None` (after a loud SKIPPED line) when this machine cannot run the test.
    fn new(test: &str) -> Option<Netns> {
        let skip = |why: String| {
            eprintln!("SKIPPED: {test}: {why}");
            None
        };
        if !nix::unistd::geteuid().is_root() {
            return skip(
                "not running as root (real iptables in a private netns needs root)".into(),
            );
        }
        let find = |name: &str| {
            std::env::split_paths(SYSTEM_PATH)
                .map(|d| d.join(name))
                .find(|p| p.exists())
                .or_else(|| look_path(name))
        };
        for tool in ["unshare", "nsenter", "iptables", "ip6tables", "sleep"] {
            if find(tool).is_none() {
                return skip(format!(
                    "{tool} not installed (apt-get install -y iptables util-linux)"
                ));
            }
        }
        let unshare = find("unshare")?;
        let nsenter = find("nsenter")?;
        let holder = match Command::new(&unshare)
            .args(["-n", "--", "sleep", "600"])
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return skip(format!("unshare -n failed: {e}")),
        };
        let ns = Netns { holder, nsenter };
        // The holder must be inside its namespace before anything joins it.
        let start = std::time::Instant::now();
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        loop {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", ns.holder.id())).ok();
            if theirs.is_some() && theirs != own {
                break;
            }
            if start.elapsed() > tsboot_tests::fake_tailscaled_ctl::PATIENCE {
                return skip(
                    "unshare -n did not create a network namespace (no CAP_SYS_ADMIN?)".into(),
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // iptables must work in there (nf_tables or legacy modules available).
        if let Err(e) = ns.try_run(&["iptables", "-t", "nat", "-S", "PREROUTING"]) {
            return skip(format!("iptables does not work in a private netns: {e}"));
        }
        if let Err(e) = ns.try_run(&["ip6tables", "-t", "nat", "-S", "PREROUTING"]) {
            return skip(format!("ip6tables does not work in a private netns: {e}"));
        }
        Some(ns)
    }

    fn enter_args(&self) -> Vec<String> {
        vec![
            "-t".into(),
            self.holder.id().to_string(),
            "-n".into(),
            "--".into(),
        ]
    }

    fn try_run(&self, cmd: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.nsenter)
            .args(self.enter_args())
            .args(cmd)
            .env("PATH", SYSTEM_PATH)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("{cmd:?}: {out:?}"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, cmd: &[&str]) -> String {
        self.try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `-A PREROUTING` lines of the nat table, as the real tool prints them.
    fn rules(&self, program: &str) -> Vec<String> {
        self.run(&[program, "-t", "nat", "-S", "PREROUTING"])
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn start_in(ns: &Netns, scene: &Scene, dest: &str) -> common::Proxy {
    let mut args: Vec<String> = ns.enter_args();
    args.push(BIN.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    scene.spawn(&ns.nsenter, &args, dest, &[], SYSTEM_PATH)
}

fn real(test: &str, program: &str, dest: &str, a: &str, b: &str, len: u8) {
    let Some(ns) = Netns::new(test) else { return };
    let rule =
        |addr: &str| format!("-A PREROUTING -d {addr}/{len} -j DNAT --to-destination {dest}");
    let scene = Scene::new(
        test,
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
    );

    // Leftovers of an earlier container in this namespace: a stale address (the reference's
    // leak), a duplicate of the current rule, and a rule that is not ours.
    let foreign = format!(
        "-A PREROUTING -d {b}/{len} -p tcp -m tcp --dport 80 -j DNAT --to-destination {dest}"
    );
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        b,
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        a,
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        a,
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);
    ns.run(&[
        program,
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        b,
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        dest,
    ]);

    let mut p = start_in(&ns, &scene, dest);
    p.wait_ready();
    assert_eq!(
        ns.rules(program),
        [rule(a), foreign.clone()],
        "{test}: after the first reconcile\n{}",
        p.log()
    );

    // Address changes: A -> B -> A -> B, exactly one rule of ours each time.
    let steps = [
        ("seed-era-14-netmap-address-change.json", b),
        ("seed-era-12-initial-running-with-netmap-mask10.json", a),
        ("seed-era-14-netmap-address-change.json", b),
    ];
    for (file, now) in steps {
        scene.fake.send_fixture(file);
        p.wait_log(&format!("DNAT rule {now} -> {dest} in place"));
        let mut got = ns.rules(program);
        got.sort();
        let mut want = vec![rule(now), foreign.clone()];
        want.sort();
        assert_eq!(got, want, "{test}: after {file}\n{}", p.log());
        // Re-arm the log wait: the next step's address appears in this step's log too.
        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait_code(), 0, "{}", p.log());
        p = start_in(&ns, &scene, dest);
        p.wait_ready();
        // A restart in the same namespace finds its rule and changes nothing.
        p.wait_log(&format!("DNAT rule {now} -> {dest} already in place"));
    }
    let mut got = ns.rules(program);
    got.sort();
    let mut want = vec![rule(b), foreign];
    want.sort();
    assert_eq!(got, want, "{test}: final");
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_code(), 0);
}

#[test]
fn real_iptables_keeps_one_rule_across_address_changes_and_restarts() {
    real(
        "real-v4",
        "iptables",
        "10.0.0.5",
        "100.101.102.103",
        "100.88.77.66",
        32,
    );
}

#[test]
fn real_ip6tables_keeps_one_rule_across_address_changes_and_restarts() {
    real(
        "real-v6",
        "ip6tables",
        "fd00::5",
        "fd7a:115c:a1e0:ab12:4843:cd96:6265:6667",
        "fd7a:115c:a1e0:ab12:4843:cd96:6258:4d42",
        128,
    );
}
