//! The fake `tailscale` and `iptables`/`ip6tables` binaries: recording, rule state, failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tsboot_tests::fake_tailscaled_ctl::{fixture, require_bin, FakeTailscaled};
use tsboot_tests::harness::temp_dir;

struct Bin {
    dir: PathBuf,
    record: PathBuf,
}

impl Bin {
    fn new(tag: &str) -> Bin {
        let dir = temp_dir(tag);
        let bin = dir.join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, fake) in [
            ("iptables", "fake-iptables"),
            ("ip6tables", "fake-iptables"),
            ("tailscale", "fake-tailscale"),
        ] {
            std::os::unix::fs::symlink(require_bin(fake), bin.join(name)).unwrap();
        }
        Bin {
            record: dir.join("args"),
            dir,
        }
    }

    fn prog(&self, name: &str) -> PathBuf {
        self.dir.join("usr/bin").join(name)
    }

    fn run(&self, name: &str, args: &str, env: &[(&str, &str)]) -> Output {
        Command::new(self.prog(name))
            .args(args.split_whitespace())
            .env("TS_TEST_RECORD_ARGS", &self.record)
            .env_remove("FAKE_IPTABLES_STATE")
            .env_remove("FAKE_IPTABLES_FAIL")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn lines(&self, p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&self.dir.display().to_string(), ""))
            .collect()
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const RULE: &str = "-d 100.64.0.1 -j DNAT --to-destination 1.2.3.4";

#[test]
fn iptables_check_list_and_recording() {
    let b = Bin::new("ipt");
    let c = b.run("iptables", &format!("-t nat -C PREROUTING {RULE}"), &[]);
    assert_eq!(c.status.code(), Some(1), "absent rule");
    assert_eq!(
        String::from_utf8_lossy(&c.stderr),
        "iptables: Bad rule (does a matching rule exist in that chain?).\n"
    );
    assert_eq!(
        ok(&b.run("iptables", "-t nat -S PREROUTING", &[])),
        "-P PREROUTING ACCEPT\n"
    );
    ok(&b.run("iptables", &format!("-t nat -I PREROUTING 1 {RULE}"), &[]));
    assert_eq!(
        b.run("iptables", &format!("-t nat -C PREROUTING {RULE}"), &[])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        ok(&b.run("iptables", "-t nat -S PREROUTING", &[])),
        "-P PREROUTING ACCEPT\n-A PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 1.2.3.4\n",
        "iptables-save form: -d with /32"
    );
    // ip6tables keeps its own state.
    assert_eq!(
        ok(&b.run("ip6tables", "-t nat -S PREROUTING", &[])),
        "-P PREROUTING ACCEPT\n"
    );
    ok(&b.run(
        "ip6tables",
        "-t nat -A PREROUTING -d fd7a::1 -j DNAT --to-destination fd00::5",
        &[],
    ));
    assert_eq!(
        ok(&b.run("ip6tables", "-t nat -S PREROUTING", &[])),
        "-P PREROUTING ACCEPT\n-A PREROUTING -d fd7a::1/128 -j DNAT --to-destination fd00::5\n"
    );
    ok(&b.run("iptables", &format!("-t nat -D PREROUTING {RULE}"), &[]));
    let d = b.run("iptables", &format!("-t nat -D PREROUTING {RULE}"), &[]);
    assert_eq!(d.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&d.stderr)
        .contains("Bad rule (does a matching rule exist in that chain?)"));

    // Only mutating commands in the record; read-only ones beside it.
    assert_eq!(
        b.lines(&b.record),
        [
            format!("/usr/bin/iptables -t nat -I PREROUTING 1 {RULE}"),
            "/usr/bin/ip6tables -t nat -A PREROUTING -d fd7a::1 -j DNAT --to-destination fd00::5"
                .to_string(),
            format!("/usr/bin/iptables -t nat -D PREROUTING {RULE}"),
            format!("/usr/bin/iptables -t nat -D PREROUTING {RULE}"),
        ]
    );
    let ro = b.lines(&PathBuf::from(format!("{}.readonly", b.record.display())));
    assert_eq!(ro.len(), 6, "{ro:?}");
    assert!(
        ro.iter().all(|l| l.contains(" -C ") || l.contains(" -S")),
        "{ro:?}"
    );
}

#[test]
fn iptables_fail_and_explicit_state_file() {
    let b = Bin::new("iptfail");
    let state = b.dir.join("custom.state");
    let env = [("FAKE_IPTABLES_STATE", state.to_str().unwrap())];
    ok(&b.run("iptables", &format!("-t nat -I PREROUTING 1 {RULE}"), &env));
    assert!(state.exists());
    let mut failing = env.to_vec();
    failing.push(("FAKE_IPTABLES_FAIL", "1"));
    let f = b.run(
        "iptables",
        &format!("-t nat -D PREROUTING {RULE}"),
        &failing,
    );
    assert_eq!(f.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&f.stderr).contains("FAKE_IPTABLES_FAIL"));
    // Read-only commands still work, and the failed delete changed nothing.
    assert_eq!(
        b.run(
            "iptables",
            &format!("-t nat -C PREROUTING {RULE}"),
            &failing
        )
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        b.lines(&b.record).len(),
        2,
        "the failed attempt is recorded too"
    );
}

#[test]
fn tailscale_up_replays_into_the_fake_daemon() {
    let b = Bin::new("tsup");
    let fake = FakeTailscaled::start("tsup-d", None, &[]);
    // A raw watcher on the fake: count the messages that arrive.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = ts_localapi::localapi::LocalApi::new(&fake.socket);
    let mut watch = rt.block_on(api.watch_ipn_bus(0)).unwrap();
    let replay = fixture("seed-era-stream-authkey-login-mask14.ndjson");
    let ctl = fake.control.to_str().unwrap().to_string();
    let out = b.run(
        "tailscale",
        "--socket=/tmp/tailscaled.sock up --accept-dns=false",
        &[
            ("FAKE_TAILSCALED_CONTROL", &ctl),
            ("FAKE_TAILSCALE_UP_REPLAY", replay.to_str().unwrap()),
            ("FAKE_TAILSCALE_UP_STDERR", "To authenticate, visit: x"),
            ("FAKE_TAILSCALE_UP_SLEEP_MS", "1"),
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "To authenticate, visit: x\n"
    );
    let n = std::fs::read_to_string(&replay).unwrap().lines().count();
    let mut last = None;
    for _ in 0..n {
        last = rt.block_on(watch.next()).unwrap();
    }
    assert!(last.is_some());
    assert_eq!(
        b.lines(&b.record),
        ["/usr/bin/tailscale --socket=/tmp/tailscaled.sock up --accept-dns=false"]
    );
    // Exit code, and other subcommands do nothing.
    let failed = b.run("tailscale", "up", &[("FAKE_TAILSCALE_EXIT", "3")]);
    assert_eq!(failed.status.code(), Some(3));
    assert!(b
        .run("tailscale", "status", &[("FAKE_TAILSCALE_EXIT", "3")])
        .status
        .success());
    // A replay the daemon refuses makes `up` fail.
    let bad = b.run(
        "tailscale",
        "up",
        &[
            ("FAKE_TAILSCALED_CONTROL", &ctl),
            ("FAKE_TAILSCALE_UP_REPLAY", "/nonexistent.ndjson"),
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
}
