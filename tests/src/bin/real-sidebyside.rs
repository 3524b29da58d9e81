//! `real-sidebyside`: tsboot against the real containerboot, same real tailscaled, same
//! headscale, same lab (see `tsboot_tests::real`), interleaved runs. A benchmark, never a test:
//! run it through `bench/real-sidebyside.sh`, which builds the release binaries first.
//!
//! ```text
//! real-sidebyside [--runs N] [--mode userspace|kernel|both] [--orphans N]
//! ```
//! For each run and wrapper, a fresh node (fresh state, fresh key) boots in the lab and the
//! driver records: exec → the daemon's bus reports `Running` (a watch opened as soon as the
//! socket accepts), exec → the wrapper logs `Startup complete`, and the resident memory
//! (VmRSS) of every wrapper process once started — containerboot alone for containerboot,
//! every tsboot process (ts-init and whatever phase stays resident) for tsboot; tailscaled
//! and the `tailscale` CLI are not counted for either. Prints a Markdown table of
//! median (min–max).
//!
//! With `--orphans N` (kernel mode), each wrapper then boots once more as PID 1 of a PID
//! namespace of its own, as in a container; a process forked into that namespace forks N
//! children that exit at once and exits itself, so the kernel re-parents N zombies to the
//! wrapper. The table gets how many of them are still zombies 2 s later.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tsboot_tests::real::{BootSpec, BusCapture, Lab};

#[derive(Clone, Copy, PartialEq)]
enum Wrapper {
    Tsboot,
    Containerboot,
}

impl Wrapper {
    fn name(self) -> &'static str {
        match self {
            Wrapper::Tsboot => "tsboot",
            Wrapper::Containerboot => "containerboot",
        }
    }
}

struct Sample {
    running_ms: f64,
    startup_ms: f64,
    rss_kib: u64,
    processes: usize,
}

fn main() {
    let mut runs = 10usize;
    let mut modes = vec![true, false];
    let mut orphans = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--runs needs a number"))
            }
            "--mode" => {
                modes = match args.next().as_deref() {
                    Some("userspace") => vec![true],
                    Some("kernel") => vec![false],
                    Some("both") => vec![true, false],
                    _ => usage("--mode is userspace, kernel or both"),
                }
            }
            "--orphans" => {
                orphans = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage("--orphans needs a number"))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let mut orphan_rows = Vec::new();
    println!("| mode | wrapper | exec → Running (ms) | exec → Startup complete (ms) | wrapper RSS (KiB) | wrapper processes |");
    println!("|---|---|---|---|---|---|");
    for userspace in modes {
        let Some(lab) = Lab::new("sidebyside", &["a"]) else {
            std::process::exit(1);
        };
        let mut samples: Vec<(Wrapper, Sample)> = Vec::new();
        for run in 0..runs {
            // Interleaved, and alternating which goes first.
            let order = if run % 2 == 0 {
                [Wrapper::Tsboot, Wrapper::Containerboot]
            } else {
                [Wrapper::Containerboot, Wrapper::Tsboot]
            };
            for w in order {
                let s = one_boot(&lab, w, userspace, run);
                eprintln!(
                    "{} {} run {run}: running {:.1} ms, startup {:.1} ms, rss {} KiB in {} processes",
                    if userspace { "userspace" } else { "kernel" },
                    w.name(),
                    s.running_ms,
                    s.startup_ms,
                    s.rss_kib,
                    s.processes
                );
                samples.push((w, s));
            }
        }
        for w in [Wrapper::Tsboot, Wrapper::Containerboot] {
            let of = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
                samples
                    .iter()
                    .filter(|(x, _)| *x == w)
                    .map(|(_, s)| f(s))
                    .collect()
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                if userspace { "userspace" } else { "kernel" },
                w.name(),
                summary(of(&|s| s.running_ms)),
                summary(of(&|s| s.startup_ms)),
                summary(of(&|s| s.rss_kib as f64)),
                summary(of(&|s| s.processes as f64)),
            );
        }
        if orphans > 0 && !userspace {
            for w in [Wrapper::Tsboot, Wrapper::Containerboot] {
                let left = orphan_flood(&lab, w, orphans);
                eprintln!("{} orphans: {left} of {orphans} left as zombies", w.name());
                orphan_rows.push(format!(
                    "| PID 1 of a PID namespace | {} | {orphans} orphans re-parented at once | **{left} left as zombies** 2 s later | | |",
                    w.name()
                ));
            }
        }
    }
    for row in orphan_rows {
        println!("{row}");
    }
}

#[allow(
    unsafe_code,
    reason = "fork(2) into the wrapper's PID namespace has no safe wrapper"
)]
/// Boots `wrapper` as PID 1 of its own PID namespace, floods it with `n` orphans, and returns
/// how many of them are still zombies (children of the wrapper in state Z) 2 s later.
fn orphan_flood(lab: &Lab, wrapper: Wrapper, n: usize) -> usize {
    let (state, env) = fresh_node(lab, &format!("{}-orphans", wrapper.name()), true);
    let mut boot = lab.boot_in(
        BootSpec {
            node: "a",
            env,
            service_account: None,
            containerboot: wrapper == Wrapper::Containerboot,
        },
        true,
    );
    let bus = BusCapture::start(state.join("tailscaled.sock"), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bus.lines().iter().any(|l| l.contains(r#""State":6"#)) {
        assert!(
            Instant::now() < deadline,
            "{} did not reach Running:\n{}",
            wrapper.name(),
            boot.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid1 = *tsboot_tests::harness::children_of(boot.init.pid())
        .first()
        .expect("the wrapper under unshare");
    let ns = std::fs::File::open(format!("/proc/{pid1}/ns/pid")).expect("pid namespace");
    // A thread of its own: setns(CLONE_NEWPID) changes where this thread's children go.
    std::thread::spawn(move || {
        use nix::unistd::{fork, ForkResult};
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWPID).expect("setns pid");
        // SAFETY: the child calls only fork and _exit (async-signal-safe) before it ends.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                for _ in 0..n {
                    // SAFETY: as above; each grandchild exits at once, unreaped.
                    if let Ok(ForkResult::Child) = unsafe { fork() } {
                        // SAFETY: _exit is async-signal-safe and ends this process.
                        unsafe { nix::libc::_exit(0) };
                    }
                }
                // Exiting hands every zombie to the namespace's PID 1 at once.
                // SAFETY: _exit is async-signal-safe and ends this process.
                unsafe { nix::libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                let _ = nix::sys::wait::waitpid(child, None);
            }
        }
    })
    .join()
    .expect("orphan thread");
    std::thread::sleep(Duration::from_secs(2));
    let left = tsboot_tests::harness::processes()
        .into_iter()
        .filter(|(_, ppid, state)| *ppid == pid1 && *state == 'Z')
        .count();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGTERM,
    );
    boot.init.wait_code(Duration::from_secs(30));
    left
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "real-sidebyside: {msg}\nusage: real-sidebyside [--runs N] [--mode userspace|kernel|both]"
    );
    std::process::exit(2);
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return "-".into();
    }
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{median:.1} ({:.1}–{:.1})", v[0], v[v.len() - 1])
}

/// A fresh node `a` (nothing of a previous boot's state is reused): its state directory and
/// the boot's variables, with a new key.
fn fresh_node(lab: &Lab, hostname: &str, userspace: bool) -> (PathBuf, Vec<(String, String)>) {
    let _ = std::fs::remove_dir_all(lab.state_dir("a"));
    let env = vec![
        ("TS_AUTHKEY".to_string(), lab.preauth_key(false)),
        (
            "TS_EXTRA_ARGS".into(),
            format!(
                "--login-server={} --hostname={hostname}",
                lab.login_server()
            ),
        ),
        ("TS_USERSPACE".into(), userspace.to_string()),
    ];
    (lab.state_dir("a"), env)
}

fn one_boot(lab: &Lab, wrapper: Wrapper, userspace: bool, run: usize) -> Sample {
    let (state, mut env) = fresh_node(lab, &format!("{}-{run}", wrapper.name()), userspace);
    if !userspace {
        env.push(("TS_DEST_IP".into(), "198.19.1.2".into()));
    }
    let socket = state.join("tailscaled.sock");
    let started = Instant::now();
    let mut boot = lab.boot(BootSpec {
        node: "a",
        env,
        service_account: None,
        containerboot: wrapper == Wrapper::Containerboot,
    });
    let bus = BusCapture::start(socket, 2);
    let deadline = started + Duration::from_secs(60);
    let mut running_at = None;
    let mut startup_at = None;
    while running_at.is_none() || startup_at.is_none() {
        if Instant::now() > deadline {
            panic!("{} did not start:\n{}", wrapper.name(), boot.log());
        }
        if running_at.is_none() && bus.lines().iter().any(|l| l.contains(r#""State":6"#)) {
            running_at = Some(started.elapsed());
        }
        if startup_at.is_none() && boot.log().contains("Startup complete") {
            startup_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the boot settle (watchers reconciled, ts-auth gone when it is not the guard).
    std::thread::sleep(Duration::from_millis(500));
    let (rss_kib, processes) = wrapper_rss(boot.init.pid());
    boot.init.signal(nix::sys::signal::Signal::SIGTERM);
    boot.init.wait_code(Duration::from_secs(30));
    Sample {
        running_ms: running_at.unwrap_or_default().as_secs_f64() * 1000.0,
        startup_ms: startup_at.unwrap_or_default().as_secs_f64() * 1000.0,
        rss_kib,
        processes,
    }
}

/// VmRSS of `root` and its descendants, except tailscaled and the `tailscale` CLI.
fn wrapper_rss(root: i32) -> (u64, usize) {
    let procs = tsboot_tests::harness::processes();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(_, ppid, _)| *ppid == parent)
                .map(|(p, _, _)| *p),
        );
        i += 1;
    }
    let mut total = 0;
    let mut count = 0;
    for pid in tree {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm == "tailscaled" || comm == "tailscale" {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            total += kib;
            count += 1;
        }
    }
    (total, count)
}
