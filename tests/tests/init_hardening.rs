//! ts-init under hostile conditions (issue 12): a readiness fd that is not one, values that
//! would break a URL, a path or a command line, descriptors leaking into grandchildren, a
//! stalled log reader, a SIGKILLed ts-init or guard, a tiny open-file limit.

use nix::sys::signal::Signal;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tsboot_tests::harness::{
    children_of, cmdline_contains, processes, wait_until, Proc, Root, Spawn, HARNESS, PATIENCE,
};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";

/// Processes (not zombies) whose command line mentions the test root: what is left of the tree.
fn leftovers(root: &Path) -> Vec<i32> {
    let needle = root.display().to_string();
    processes()
        .into_iter()
        .filter(|(pid, _, state)| *state != 'Z' && cmdline_contains(*pid, &needle))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Kills whatever a failed test left behind, so one failure does not leak processes.
struct KillLeftovers(std::path::PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in leftovers(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Runs ts-init with `extra` added to the harness environment and expects exit status 2, a log
/// naming `var` and `shown`, and nothing started or changed.
fn expect_refused(name: &str, extra: &[(&str, &str)], var: &str, shown: &str) {
    let root = Root::new(name);
    let _cleanup = KillLeftovers(root.dir.clone());
    let mut env = root.era_env(&HARNESS);
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    let mut init = root.start_init(&env, &[]);
    let code = init.wait_code(PATIENCE);
    let log = init.log();
    assert_eq!(code, 2, "{extra:?}: exit status\n{log}");
    assert!(
        log.contains(var),
        "{extra:?}: the error does not name {var}:\n{log}"
    );
    assert!(
        log.contains(shown),
        "{extra:?}: the error does not show {shown:?}:\n{log}"
    );
    assert!(
        root.records().is_empty(),
        "{extra:?}: something was started: {:?}",
        root.records()
    );
    assert_eq!(
        root.read("proc/sys/net/ipv4/ip_forward"),
        "0",
        "{extra:?}: a sysctl was written"
    );
}

/// ts-init booted against the harness's fake tailscaled, startup complete.
fn booted(name: &str) -> (Root, KillLeftovers, Proc) {
    let root = Root::new(name);
    let cleanup = KillLeftovers(root.dir.clone());
    let mut init = root.start_init(&root.era_env(&HARNESS), &[]);
    init.expect_log(STARTUP);
    (root, cleanup, init)
}

// ---- 12.2: TS_READY_FD is validated before anything is opened ----

#[test]
fn ready_fd_that_is_stdio_or_not_open_is_refused() {
    // ts-init is started with stdio only: 3 is what its own signalfd would be, 9 nothing.
    for fd in ["0", "1", "2", "3", "9"] {
        expect_refused(
            "ready-fd",
            &[("TS_READY_FD", fd)],
            "TS_READY_FD",
            &format!("{fd:?}"),
        );
    }
}

#[test]
fn ready_fd_that_is_a_pipe_gets_the_newline() {
    let root = Root::new("ready-fd-ok");
    let _cleanup = KillLeftovers(root.dir.clone());
    let mut init = Proc::spawn(
        &tsboot_tests::bin_path("ts-init"),
        &[],
        Spawn {
            env: root.era_env(&HARNESS),
            ready: true,
            stderr: Some(root.stderr.clone()),
            ..Spawn::default()
        },
    );
    init.expect_log(STARTUP);
    init.expect_ready();
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_code(PATIENCE), 0, "{}", init.log());
}

// ---- 12.3: no descriptor but stdio reaches a grandchild ----

#[test]
fn readiness_fd_never_reaches_tailscale_up_or_iptables() {
    let root = Root::new("fd-leak");
    let _cleanup = KillLeftovers(root.dir.clone());
    let fd_log = root.dir.join("fds.log");
    let mut env = root.era_env(&HARNESS);
    env.push(("TS_USERSPACE".into(), "false".into()));
    env.push(("TS_DEST_IP".into(), "10.0.0.5".into()));
    env.push(("FAKE_FD_LOG".into(), fd_log.display().to_string()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    let lines: Vec<String> = std::fs::read_to_string(&fd_log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.replace(&root.dir.display().to_string(), ""))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tailscale") && l.contains(" up ")),
        "tailscale up was not seen: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("iptables")),
        "no iptables run was seen: {lines:#?}"
    );
    let leaked: Vec<&String> = lines.iter().filter(|l| !l.ends_with(" fds=")).collect();
    assert!(
        leaked.is_empty(),
        "descriptors beyond stdio leaked: {leaked:#?}"
    );
    init.signal(Signal::SIGTERM);
    assert_eq!(init.wait_code(PATIENCE), 0, "{}", init.log());
}

// ---- 12.5: everything validated before the first side effect ----

#[test]
fn bad_kubernetes_port_is_refused_before_any_sysctl() {
    expect_refused(
        "kube-port",
        &[
            ("TS_USERSPACE", "false"),
            ("TS_ROUTES", "10.0.0.0/24"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "https"),
        ],
        "KUBERNETES_SERVICE_PORT_HTTPS",
        "\"https\"",
    );
}

#[test]
fn values_that_do_not_fit_their_place_are_refused() {
    let long_socket = format!("/tmp/{}.sock", "s".repeat(110));
    // (extra variables, the variable the error must name, what of the value it must show)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("TS_SOCKET", "")], "TS_SOCKET", "empty"),
        (vec![("TS_SOCKET", &long_socket)], "TS_SOCKET", "107"),
        (
            vec![
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
                ("TS_KUBE_SECRET", "Not_A/Name"),
            ],
            "TS_KUBE_SECRET",
            "\"Not_A/Name\"",
        ),
        (
            vec![
                ("KUBERNETES_SERVICE_HOST", "kube api/x"),
                ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ],
            "KUBERNETES_SERVICE_HOST",
            "\"kube api/x\"",
        ),
        (
            vec![("TS_HOSTNAME", "my host")],
            "TS_HOSTNAME",
            "\"my host\"",
        ),
        (
            vec![("TS_SOCKS5_SERVER", "localhost")],
            "TS_SOCKS5_SERVER",
            "\"localhost\"",
        ),
        (
            vec![("TS_OUTBOUND_HTTP_PROXY_LISTEN", "[::1]8080")],
            "TS_OUTBOUND_HTTP_PROXY_LISTEN",
            "\"[::1]8080\"",
        ),
    ];
    for (extra, var, shown) in cases {
        let mut extra = extra;
        // Before the fix a bad socket waits out the whole boot: keep that wait short.
        extra.push(("TS_BOOT_TIMEOUT", "3s"));
        expect_refused("fit", &extra, var, shown);
    }
}

// ---- 12.7: PID 1 never blocks on its own stderr ----

/// ts-init with its stderr on a pipe of one page that the test reads only when it chooses.
struct Stalled {
    init: Proc,
    log: OwnedFd,
    text: String,
    signal_log: std::path::PathBuf,
}

impl Stalled {
    fn start(root: &Root) -> Stalled {
        let signal_log = root.dir.join("signals.log");
        let mut env = root.era_env(&HARNESS);
        env.push(("TS_SHUTDOWN_GRACE".into(), "3s".into()));
        env.push((
            "FAKE_TAILSCALED_SIGNAL_LOG".into(),
            signal_log.display().to_string(),
        ));
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        nix::fcntl::fcntl(&read_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).expect("pipe size");
        nix::fcntl::fcntl(
            &read_end,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblocking read end");
        let child = Command::new(tsboot_tests::bin_path("ts-init"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(write_end))
            .spawn()
            .expect("start ts-init");
        Stalled {
            init: Proc::from_child(child, root.dir.join("no-such-log")),
            log: read_end,
            text: String::new(),
            signal_log,
        }
    }

    /// Reads what is in the pipe now.
    fn drain(&mut self) {
        let mut buf = [0u8; 65536];
        while let Ok(n) = nix::unistd::read(&self.log, &mut buf) {
            if n == 0 {
                break;
            }
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    fn drain_until(&mut self, needle: &str) {
        let start = Instant::now();
        loop {
            self.drain();
            if self.text.contains(needle) {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no {needle:?} in:\n{}",
                self.text
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Bytes waiting in the pipe.
    #[allow(unsafe_code, reason = "FIONREAD has no safe wrapper")]
    fn queued(&self) -> usize {
        let mut n: nix::libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points to `n`.
        let rc = unsafe { nix::libc::ioctl(self.log.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD");
        n as usize
    }

    fn forwarded(&self) -> usize {
        std::fs::read_to_string(&self.signal_log)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Sends SIGUSR1 (ts-init logs each forward) one at a time, each after the last one reached
    /// tailscaled, `n` times.
    fn forward_signals(&mut self, n: usize) {
        for _ in 0..n {
            let before = self.forwarded();
            self.init.signal(Signal::SIGUSR1);
            wait_until("the signal forwarded to tailscaled", || {
                self.forwarded() > before
            });
        }
    }

    /// Forwards signals until the pipe is full (nobody reads it), then `extra` more.
    fn stall(&mut self, extra: usize) {
        let start = Instant::now();
        while self.queued() < 4096 - 200 {
            assert!(start.elapsed() < PATIENCE, "the log pipe does not fill up");
            self.forward_signals(1);
        }
        self.forward_signals(extra);
    }
}

#[test]
fn stalled_stderr_does_not_stop_pid1_from_reaping_and_exiting() {
    let root = Root::new("stalled-stderr");
    let _cleanup = KillLeftovers(root.dir.clone());
    let mut s = Stalled::start(&root);
    s.drain_until(STARTUP);
    s.stall(50);
    // The log is never read again: SIGTERM must still stop everything and end ts-init.
    s.init.signal(Signal::SIGTERM);
    let code = s.init.wait_code(PATIENCE);
    assert_eq!(code, 0, "exit status with a stalled stderr");
    assert_eq!(
        leftovers(&root.dir),
        Vec::<i32>::new(),
        "children left behind"
    );
}

#[test]
fn lines_dropped_on_a_stalled_stderr_are_counted_and_reported() {
    let root = Root::new("dropped-lines");
    let _cleanup = KillLeftovers(root.dir.clone());
    let mut s = Stalled::start(&root);
    s.drain_until(STARTUP);
    // More lines than the pipe and ts-init's queue hold together.
    s.stall(ts_common::logging::QUEUE_LINES + 20);
    s.drain();
    s.forward_signals(1);
    s.drain_until(" log lines dropped (stderr was not being read)");
    s.init.signal(Signal::SIGTERM);
    s.drain_until("Exiting with status 0");
    assert_eq!(s.init.wait_code(PATIENCE), 0, "{}", s.text);
}

// ---- 12.8: children die with a SIGKILLed ts-init (not PID 1) ----

#[test]
fn children_die_with_a_sigkilled_subreaper_ts_init() {
    let (root, _cleanup, mut init) = booted("init-killed");
    let children = children_of(init.pid());
    assert!(
        children.len() >= 2,
        "tailscaled and the guard run: {children:?}"
    );
    init.signal(Signal::SIGKILL);
    init.wait_code(PATIENCE);
    let start = Instant::now();
    while !leftovers(&root.dir).is_empty() {
        assert!(
            start.elapsed() < PATIENCE,
            "children outlived ts-init: {:?}",
            leftovers(&root.dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- 12.10c: a SIGKILLed guard is reported as killed ----

#[test]
fn sigkilled_guard_is_reported_as_killed_not_as_leaving_running() {
    let (_root, _cleanup, mut init) = booted("guard-killed");
    let guard: Vec<i32> = children_of(init.pid())
        .into_iter()
        .filter(|pid| cmdline_contains(*pid, "ts-auth"))
        .collect();
    assert_eq!(guard.len(), 1, "one ts-auth guard");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard[0]), Signal::SIGKILL).expect("kill");
    assert_eq!(init.wait_code(PATIENCE), 1, "{}", init.log());
    let log = init.log();
    assert!(log.contains("killed by signal SIGKILL"), "{log}");
    assert!(!log.contains("tailscaled left Running"), "{log}");
}

// ---- 12.10d: a tiny open-file limit is named as such ----

#[test]
fn a_tiny_open_file_limit_is_named() {
    let root = Root::new("fd-limit");
    let _cleanup = KillLeftovers(root.dir.clone());
    let env = root.era_env(&HARNESS);
    let sh = ts_common::process::look_path("sh").expect("sh");
    let ts_init = tsboot_tests::bin_path("ts-init").display().to_string();
    for limit in [5, 8, 10, 32] {
        let mut init = root.start_program(
            &sh,
            &env,
            &["-c", &format!("ulimit -n {limit} && exec {ts_init}")],
        );
        let code = init.wait_code(PATIENCE);
        let log = init.log();
        assert_ne!(code, 0, "ulimit -n {limit}:\n{log}");
        assert!(
            log.contains("open-file limit") && log.contains(&format!("ulimit -n = {limit}")),
            "ulimit -n {limit}: the error does not name the limit:\n{log}"
        );
        assert!(
            !log.contains("Invalid argument"),
            "ulimit -n {limit}:\n{log}"
        );
    }
}
