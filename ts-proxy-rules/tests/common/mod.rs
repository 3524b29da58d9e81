//! Shared scaffolding of the ts-proxy-rules binary tests: a fake tailscaled, a bin directory
//! with the fake iptables, and the watcher run by the harness's [`Proc`] with its readiness fd
//! (no sleeps to "let it settle").
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tsboot_tests::fake_tailscaled_ctl::{require_bin, FakeTailscaled};
use tsboot_tests::harness::{Proc, Spawn};

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

    /// The watcher's environment: PATH, the record file, the socket, `TS_DEST_IP`, kernel
    /// networking, then `extra` (a later entry wins).
    fn env(&self, dest: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let record = self.record.display().to_string();
        let socket = self.fake.socket.display().to_string();
        [
            ("PATH", path),
            ("TS_TEST_RECORD_ARGS", &record),
            ("TS_SOCKET", &socket),
            ("TS_DEST_IP", dest),
            ("TS_USERSPACE", "false"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn default_path(&self) -> String {
        format!("{}:/usr/bin:/bin", self.bin_dir.display())
    }

    pub fn start(&self, dest: &str, env: &[(&str, &str)]) -> Proc {
        self.spawn(Path::new(BIN), &[], dest, env, &self.default_path())
    }

    pub fn start_with_path(&self, dest: &str, env: &[(&str, &str)], path: &str) -> Proc {
        self.spawn(Path::new(BIN), &[], dest, env, path)
    }

    pub fn start_args(&self, dest: &str, env: &[(&str, &str)], args: &[&str]) -> Proc {
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
    ) -> Proc {
        let spec = Spawn {
            env: self.env(dest, path, env),
            ready: true,
            ..Spawn::default()
        };
        Proc::spawn(program, args, spec)
    }

    /// One-shot run (for --help, --explain) with captured output.
    pub fn output(&self, args: &[&str], dest: &str, env: &[(&str, &str)]) -> Output {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .envs(self.env(dest, &self.default_path(), env))
            .output()
            .expect("run ts-proxy-rules")
    }

    fn lines(&self, p: &Path) -> Vec<String> {
        let lines = tsboot_tests::harness::read_lines(p).into_iter();
        lines.map(|l| l.replace(&self.root(), "")).collect()
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
