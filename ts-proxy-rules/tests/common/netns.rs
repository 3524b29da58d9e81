//! Private network namespaces for the tests that use the real iptables, ip6tables and nft.
//!
//! A holder process (`unshare -n sleep`) owns each namespace; commands run inside it through
//! `nsenter -n`, so the namespace outlives one watcher and restarts can be tested.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use ts_common::process::look_path;
use ts_proxy_rules::firewall::{Runner, SystemRunner};
use ts_proxy_rules::ProxyError;

pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A program on the system path (tests run with a reduced PATH sometimes).
pub fn find(name: &str) -> Option<PathBuf> {
    std::env::split_paths(SYSTEM_PATH)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .or_else(|| look_path(name))
}

/// A network namespace kept alive by `unshare -n sleep`.
pub struct Netns {
    holder: Child,
    pub nsenter: PathBuf,
}

impl Netns {
    /// `None` (after a loud SKIPPED line) when this machine cannot run the test: not root, a
    /// tool of `tools` missing, or a check command of `checks` failing inside the namespace.
    pub fn new(test: &str, tools: &[&str], checks: &[&[&str]]) -> Option<Netns> {
        let skip = |why: String| {
            eprintln!("SKIPPED: {test}: {why}");
            None
        };
        if !nix::unistd::geteuid().is_root() {
            return skip(
                "not running as root (a private netns with real firewall tools needs root)".into(),
            );
        }
        for tool in ["unshare", "nsenter", "sleep"].iter().chain(tools) {
            if find(tool).is_none() {
                return skip(format!(
                    "{tool} not installed (apt-get install -y iptables nftables iproute2 util-linux)"
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
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", ns.pid())).ok();
            if theirs.is_some() && theirs != own {
                break;
            }
            if start.elapsed() > tsboot_tests::harness::PATIENCE {
                return skip(
                    "unshare -n did not create a network namespace (no CAP_SYS_ADMIN?)".into(),
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for check in checks {
            if let Err(e) = ns.try_run(check) {
                return skip(format!("{check:?} does not work in a private netns: {e}"));
            }
        }
        Some(ns)
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn enter_args(&self) -> Vec<String> {
        vec![
            "-t".into(),
            self.pid().to_string(),
            "-n".into(),
            "--".into(),
        ]
    }

    pub fn try_run(&self, cmd: &[&str]) -> Result<String, String> {
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

    pub fn run(&self, cmd: &[&str]) -> String {
        self.try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `-A` lines of one chain, as the real tool prints them.
    pub fn rules(&self, program: &str, table: &str, chain: &str) -> Vec<String> {
        self.run(&[program, "-t", table, "-S", chain])
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    /// A [`Runner`] whose commands run inside this namespace.
    pub fn runner(&self) -> NsRunner {
        NsRunner {
            enter: self.enter_args(),
            nsenter: self.nsenter.display().to_string(),
            inner: SystemRunner::default(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Runs each firewall command as `nsenter -t <holder> -n -- <command>`.
pub struct NsRunner {
    enter: Vec<String>,
    nsenter: String,
    inner: SystemRunner,
}

impl Runner for NsRunner {
    async fn run(&mut self, cmd: &ts_common::argv::Command) -> Result<String, ProxyError> {
        let mut args = self.enter.clone();
        args.push(cmd.program.clone());
        args.extend(cmd.argv());
        let wrapped = ts_common::argv::Command::new(&self.nsenter).args(&args);
        self.inner.run(&wrapped).await
    }
}
