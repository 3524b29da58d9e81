//! ts-init as PID 1 with real kernel semantics: a real PID namespace (`unshare --pid --fork
//! --mount-proc`, root only), real signals, real zombie floods, the exit-status table.

use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};
use tsboot_tests::harness::{
    children_of, cmdline_contains, processes, Proc, Root, HARNESS, HEAD, PATIENCE,
};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn have(program: &str) -> bool {
    ts_common::process::look_path(program).is_some()
}

/// PID-namespace tests need root and util-linux's unshare; say so loudly when they cannot run.
fn can_unshare() -> bool {
    if !is_root() || !have("unshare") {
        eprintln!("SKIPPED: needs root and unshare (util-linux) for a real PID namespace");
        return false;
    }
    true
}

fn zombies_of(pid: i32) -> usize {
    processes()
        .into_iter()
        .filter(|(_, ppid, state)| *ppid == pid && *state == 'Z')
        .count()
}

/// Processes whose command line mentions the test root: what is left of the tree.
fn leftovers(root: &Path) -> Vec<String> {
    let needle = root.display().to_string();
    processes()
        .into_iter()
        .filter_map(|(pid, _, state)| {
            if state == 'Z' {
                return None;
            }
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < PATIENCE * 3,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts ts-init (through `unshare` when `pid_ns`) and waits for startup to complete.
/// Returns the handle and ts-init's own pid (in our namespace).
fn boot(root: &Root, env: &[(String, String)], pid_ns: bool) -> (Proc, i32) {
    let mut init = if pid_ns {
        let unshare = ts_common::process::look_path("unshare").expect("unshare");
        let ts_init = tsboot_tests::bin_path("ts-init");
        let ts_init = ts_init.display().to_string();
        root.start_program(
            &unshare,
            env,
            &["--pid", "--fork", "--mount-proc", &ts_init],
        )
    } else {
        root.start_init(env, &[])
    };
    init.expect_log(STARTUP);
    let pid = if pid_ns {
        let outer = init.pid();
        let mut kids = Vec::new();
        wait_until("ts-init inside the namespace", || {
            kids = children_of(outer);
            !kids.is_empty()
        });
        kids[0]
    } else {
        init.pid()
    };
    (init, pid)
}

fn reap_test(pid_ns: bool) {
    let root = Root::new(if pid_ns {
        "reap-pid1"
    } else {
        "reap-subreaper"
    });
    let env = root.era_env(&HARNESS);
    let (mut init, init_pid) = boot(&root, &env, pid_ns);
    // 10,000 orphans whose parent died: re-parented to ts-init (PID 1 or subreaper).
    root.control("orphans 10000");
    wait_until("every orphan reaped", || zombies_of(init_pid) == 0);
    assert!(
        init.try_status().is_none(),
        "ts-init died while reaping:\n{}",
        init.log()
    );
    // SIGTERM from outside (for the namespace case: from the parent namespace).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init_pid), Signal::SIGTERM).expect("kill");
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    assert!(
        init.log().contains("Exiting with status 0"),
        "{}",
        init.log()
    );
    assert_eq!(leftovers(&root.dir), Vec::<String>::new());
}

#[test]
fn pid1_reaps_ten_thousand_orphans_and_handles_sigterm() {
    if can_unshare() {
        reap_test(true);
    }
}

#[test]
fn subreaper_reaps_ten_thousand_orphans() {
    reap_test(false);
}

/// Phases at which a SIGTERM can arrive, and how to hold startup there.
fn sigterm_at(phase: &str) {
    let root = Root::new(&format!("sigterm-{phase}"));
    let mut env = root.era_env(&HEAD);
    env.push(("TS_SHUTDOWN_GRACE".into(), "10s".into()));
    let marker = match phase {
        "before-socket" => {
            env.push(("FAKE_TAILSCALED_SOCKET_DELAY_MS".into(), "60000".into()));
            " Waiting for tailscaled socket"
        }
        "during-up" => {
            env.push(("FAKE_TAILSCALE_UP_SLEEP_MS".into(), "60000".into()));
            " Running 'tailscale up'"
        }
        "before-running" => {
            // `up` returns but tailscaled never reaches Running.
            env.retain(|(k, _)| k != "FAKE_TAILSCALE_UP_REPLAY");
            " Running 'tailscale up'"
        }
        _ => STARTUP,
    };
    let mut init = root.start_init(&env, &[]);
    init.expect_log(marker);
    if phase == "before-running" {
        // Let `up` finish so the guard is waiting on the bus.
        wait_until("tailscale up recorded", || root.records().len() == 2);
    }
    init.signal(Signal::SIGTERM);
    let code = init.wait_code(Duration::from_secs(15));
    assert_eq!(code, 0, "SIGTERM {phase}: exit status\n{}", init.log());
    assert!(
        init.log()
            .contains("Received SIGTERM from container runtime, shutting down tailscaled"),
        "{}",
        init.log()
    );
    wait_until("no process of the tree left", || {
        leftovers(&root.dir).is_empty()
    });
}

#[test]
fn sigterm_before_socket() {
    sigterm_at("before-socket");
}

#[test]
fn sigterm_during_up() {
    sigterm_at("during-up");
}

#[test]
fn sigterm_before_running() {
    sigterm_at("before-running");
}

#[test]
fn sigterm_after_startup() {
    sigterm_at("after-startup");
}

#[test]
fn sigint_is_a_shutdown_too() {
    let root = Root::new("sigint");
    let env = root.era_env(&HARNESS);
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    init.signal(Signal::SIGINT);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    assert!(
        init.log()
            .contains("Received SIGINT from container runtime"),
        "{}",
        init.log()
    );
}

#[test]
fn tailscaled_ignoring_sigterm_is_killed_after_grace() {
    let root = Root::new("ignore-sigterm");
    let mut env = root.era_env(&HARNESS);
    env.push(("FAKE_TAILSCALED_IGNORE_SIGTERM".into(), "600".into()));
    env.push(("TS_SHUTDOWN_GRACE".into(), "500ms".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    init.signal(Signal::SIGTERM);
    assert_eq!(
        init.wait_code(Duration::from_secs(15)),
        137,
        "{}",
        init.log()
    );
    assert!(init.log().contains("sending SIGKILL"), "{}", init.log());
    wait_until("no process of the tree left", || {
        leftovers(&root.dir).is_empty()
    });
}

fn tailscaled_death(command: &str, want: i32, after_startup: bool) {
    let root = Root::new("tailscaled-death");
    let mut env = root.era_env(&HARNESS);
    if !after_startup {
        env.push(("FAKE_TAILSCALE_UP_SLEEP_MS".into(), "60000".into()));
    }
    let mut init = root.start_init(&env, &[]);
    init.expect_log(if after_startup {
        STARTUP
    } else {
        " Running 'tailscale up'"
    });
    root.control_nowait(command);
    assert_eq!(
        init.wait_code(Duration::from_secs(15)),
        want,
        "{command}:\n{}",
        init.log()
    );
    assert!(
        init.log().contains(&format!("Exiting with status {want}")),
        "{}",
        init.log()
    );
    wait_until("no process of the tree left", || {
        leftovers(&root.dir).is_empty()
    });
}

#[test]
fn tailscaled_exit_3_gives_3() {
    tailscaled_death("exit 3", 3, true);
}

#[test]
fn tailscaled_segfault_gives_139() {
    tailscaled_death("signal SEGV", 139, true);
}

#[test]
fn tailscaled_death_during_up_is_noticed_at_once() {
    tailscaled_death("exit 3", 3, false);
}

#[test]
fn leaving_running_gives_1() {
    let root = Root::new("left-running");
    let env = root.era_env(&HEAD);
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    root.control("state 2");
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    assert!(
        init.log()
            .contains("tailscaled left running state (now in state \"NeedsLogin\"), exiting"),
        "{}",
        init.log()
    );
    wait_until("no process of the tree left", || {
        leftovers(&root.dir).is_empty()
    });
}

#[test]
fn signal_flood_during_startup_breaks_nothing() {
    let root = Root::new("flood");
    let mut env = root.era_env(&HARNESS);
    env.push(("FAKE_TAILSCALE_UP_SLEEP_MS".into(), "500".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(" Running 'tailscale up'");
    let pid = nix::unistd::Pid::from_raw(init.pid());
    for i in 0..1000 {
        let sig = if i % 2 == 0 {
            Signal::SIGCHLD
        } else {
            Signal::SIGUSR1
        };
        let _ = nix::sys::signal::kill(pid, sig);
    }
    init.expect_log(STARTUP);
    assert!(init.try_status().is_none(), "{}", init.log());
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

#[test]
fn invalid_configuration_exits_2_and_starts_nothing() {
    for (var, value) in [
        ("TS_USERSPACE", "flase"),
        ("TS_ROUTES", "1.2.3.0/24, 10.0.0.0/8"),
        ("TS_DEST_IP", "1.2.3"),
        ("TS_BOOT_TIMEOUT", "soon"),
        ("TS_SHUTDOWN_GRACE", "0"),
        ("TS_ACCEPT_DNS", "maybe"),
    ] {
        let root = Root::new("invalid");
        let mut env = root.era_env(&HARNESS);
        env.push((var.into(), value.into()));
        if var == "TS_DEST_IP" {
            env.push(("TS_USERSPACE".into(), "false".into()));
        }
        let mut init = root.start_init(&env, &[]);
        assert_eq!(
            init.wait_code(Duration::from_secs(10)),
            2,
            "{var}={value}:\n{}",
            init.log()
        );
        assert!(
            init.log().contains(var),
            "{var}: error does not name the variable:\n{}",
            init.log()
        );
        assert!(
            init.log().contains(value.trim()),
            "{var}: error does not show the value:\n{}",
            init.log()
        );
        assert!(
            root.records().is_empty(),
            "{var}: something was started: {:?}",
            root.records()
        );
    }
}

#[test]
fn dest_ip_in_userspace_is_a_usage_error() {
    let root = Root::new("dest-userspace");
    let mut env = root.era_env(&HARNESS);
    env.push(("TS_DEST_IP".into(), "1.2.3.4".into()));
    let mut init = root.start_init(&env, &[]);
    assert_eq!(init.wait_code(Duration::from_secs(10)), 2, "{}", init.log());
    assert!(
        init.log()
            .contains("TS_DEST_IP is not supported with TS_USERSPACE"),
        "{}",
        init.log()
    );
    assert!(root.records().is_empty());
}

#[test]
fn startup_deadline_exits_1_and_stops_tailscaled() {
    let root = Root::new("deadline");
    let mut env = root.era_env(&HARNESS);
    env.push(("FAKE_TAILSCALED_SOCKET_DELAY_MS".into(), "60000".into()));
    env.push(("TS_BOOT_TIMEOUT".into(), "1s".into()));
    let mut init = root.start_init(&env, &[]);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    assert!(
        init.log()
            .contains("Timed out waiting for tailscaled socket"),
        "{}",
        init.log()
    );
    wait_until("no process of the tree left", || {
        leftovers(&root.dir).is_empty()
    });
}

#[test]
fn failed_up_exits_1() {
    let root = Root::new("up-fails");
    let mut env = root.era_env(&HARNESS);
    env.push(("FAKE_TAILSCALE_EXIT".into(), "1".into()));
    let mut init = root.start_init(&env, &[]);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    assert!(
        init.log().contains("failed to auth tailscale: failed to auth tailscale: tailscale up failed: exit status 1"),
        "{}",
        init.log()
    );
    wait_until("no process of the tree left", || {
        leftovers(&root.dir).is_empty()
    });
}

#[test]
fn forwarded_signals_reach_tailscaled() {
    let root = Root::new("forward");
    let signal_log = root.dir.join("signals.log");
    let mut env = root.era_env(&HARNESS);
    env.push((
        "FAKE_TAILSCALED_SIGNAL_LOG".into(),
        signal_log.display().to_string(),
    ));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGQUIT,
    ] {
        init.signal(sig);
        let name = sig.as_str();
        wait_until(name, || {
            std::fs::read_to_string(&signal_log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == name)
        });
    }
    assert!(init.try_status().is_none(), "{}", init.log());
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}

/// (SigBlk, SigIgn) of a process, as bit masks.
fn signal_masks(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX)
    };
    (field("SigBlk:"), field("SigIgn:"))
}

fn descendants_matching(root: &Path, name: &str) -> Vec<i32> {
    let needle = root.display().to_string();
    processes()
        .into_iter()
        .filter(|(pid, _, state)| {
            *state != 'Z'
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c).replace('\0', " ");
                        c.contains(name) && c.contains(&needle)
                    })
                    .unwrap_or(false)
        })
        .map(|(p, _, _)| p)
        .collect()
}

#[test]
fn children_get_a_clean_mask_default_dispositions_and_no_stray_fds() {
    use std::os::fd::AsRawFd;
    let root = Root::new("child-hygiene");
    let env = root.era_env(&HARNESS);
    // An fd ts-init inherits without close-on-exec (as from a shell's job control), and
    // SIGINT/SIGQUIT ignored (as for a shell's background job): neither may reach the children.
    let (stray_r, stray_w) = nix::unistd::pipe().expect("pipe");
    for fd in [&stray_r, &stray_w] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .expect("clear cloexec");
    }
    let stray_inode = std::fs::metadata(format!("/proc/self/fd/{}", stray_w.as_raw_fd()))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("stray inode");
    let sh = ts_common::process::look_path("sh").expect("sh");
    let ts_init = tsboot_tests::bin_path("ts-init").display().to_string();
    let mut init = root.start_program(
        &sh,
        &env,
        &["-c", &format!("trap '' INT QUIT; exec {ts_init}")],
    );
    init.expect_log(STARTUP);
    let tailscaled = descendants_matching(&root.dir, "tailscaled");
    assert_eq!(tailscaled.len(), 1, "one tailscaled: {tailscaled:?}");
    let tsd = tailscaled[0];
    let (blocked, _) = signal_masks(tsd);
    assert_eq!(blocked, 0, "tailscaled starts with an empty signal mask");
    let fd_inodes = |pid: i32| -> Vec<u64> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| std::fs::metadata(e.path()).ok())
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The setup bites: ts-init itself did inherit the stray fd and the ignored SIGINT.
    assert!(
        fd_inodes(init.pid()).contains(&stray_inode),
        "ts-init should hold the stray fd"
    );
    let guard: Vec<i32> = children_of(init.pid())
        .into_iter()
        .filter(|pid| cmdline_contains(*pid, "ts-auth"))
        .collect();
    assert_eq!(guard.len(), 1, "one ts-auth guard under ts-init");
    for pid in guard.into_iter().chain([tsd]) {
        let (_, ignored) = signal_masks(pid);
        let int_bit = 1u64 << (Signal::SIGINT as i32 - 1);
        assert_eq!(
            ignored & int_bit,
            0,
            "pid {pid}: SIGINT still ignored (SigIgn {ignored:x})"
        );
        assert!(
            !fd_inodes(pid).contains(&stray_inode),
            "pid {pid} inherited ts-init's stray fd"
        );
    }
    drop((stray_r, stray_w));
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
}
