//! Helpers shared by ts-prep's integration tests: a temporary root, running the real binary
//! with a clean environment, and loud skips.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_ts-prep");
pub const V4: &str = "proc/sys/net/ipv4/ip_forward";
pub const V6: &str = "proc/sys/net/ipv6/conf/all/forwarding";
pub const TUN: &str = "dev/net/tun";

/// The tools the privileged tests wrap ts-prep in live here; nothing else is inherited.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A fixed, old mtime: a write by ts-prep would move it to "now".
pub const OLD_MTIME_SECS: u64 = 1_000_000_000;

/// A directory standing in for `/`, removed on drop.
pub struct TempRoot {
    pub path: PathBuf,
}

impl TempRoot {
    pub fn new(name: &str) -> TempRoot {
        TempRoot {
            path: tsboot_tests::harness::temp_dir(&format!("prep-{name}")),
        }
    }

    /// A root with both forwarding sysctls, as the reference's test harness makes them.
    pub fn with_sysctls(name: &str, v4: &str, v6: &str) -> TempRoot {
        let root = TempRoot::new(name);
        root.write(V4, v4);
        root.write(V6, v6);
        root
    }

    /// Puts a plain file at `dev/net/tun`: it "exists", so kernel-mode runs need no mknod and
    /// the sysctl tests also run without root.
    pub fn with_tun_placeholder(self) -> TempRoot {
        self.write(TUN, "");
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn root_str(&self) -> &str {
        self.path.to_str().expect("temp dir is UTF-8")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
        fs::write(&p, content).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    pub fn set_old_mtime(&self, rel: &str) {
        let f = fs::File::options()
            .write(true)
            .open(self.path(rel))
            .expect("open");
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(OLD_MTIME_SECS))
            .expect("set mtime");
    }

    pub fn mtime(&self, rel: &str) -> SystemTime {
        fs::metadata(self.path(rel))
            .and_then(|m| m.modified())
            .expect("mtime")
    }

    /// Every path under the root, for "nothing changed" checks.
    pub fn tree(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                out.push(
                    p.strip_prefix(base)
                        .expect("under base")
                        .display()
                        .to_string(),
                );
                if p.is_dir() {
                    walk(base, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &self.path, &mut out);
        out.sort();
        out
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Whether some stderr line ends with `suffix` (the reference tests match suffixes).
    pub fn logged(&self, suffix: &str) -> bool {
        self.stderr.lines().any(|l| l.ends_with(suffix))
    }

    pub fn assert_logged(&self, suffix: &str) {
        assert!(
            self.logged(suffix),
            "no stderr line ends with {suffix:?}; stderr:\n{}",
            self.stderr
        );
    }

    /// The line containing `needle`, for prefix checks on messages that end in an OS error.
    pub fn line_with(&self, needle: &str) -> &str {
        self.stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "no stderr line contains {needle:?}; stderr:\n{}",
                    self.stderr
                )
            })
    }
}

/// Runs `program args` with exactly `env` (plus a fixed PATH).
pub fn run_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the real ts-prep with exactly `env`.
pub fn ts_prep(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_program(BIN, args, env)
}

/// `true` if the test may go on; otherwise says loudly why it is skipped.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIPPED: {test}: needs root (run the tests as root to exercise it)");
        false
    }
}

/// `true` if `argv` runs and exits 0 here (a tool and the privilege it needs are available).
pub fn works(test: &str, argv: &[&str]) -> bool {
    let ok = Command::new(argv[0])
        .args(&argv[1..])
        .env("PATH", PATH)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: {test}: `{}` does not work here", argv.join(" "));
    }
    ok
}
