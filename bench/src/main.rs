//! `tsboot-bench`: what tsboot costs, side by side with tini and dumb-init, in one run on one
//! machine. Run it through `bench/run.sh` (which builds everything first); see BENCHMARKS.md
//! for the method and the figures.
//!
//! ```text
//! tsboot-bench --variant NAME=DIR [--variant NAME=DIR ...]
//!              [--boot-runs N] [--reaction-runs N] [--reap-runs N] [--orphans N]
//!              [--settle-ms N] [--flap-rate N] [--flap-secs N] [--real-runs N]
//!              [--only sizes,boot,reaction,bus,images,flap,reap,real] [--out FILE]
//!              [--bus-peers 1000,10000,100000] [--bus-changes N]
//! ```
//! * `--bus-peers`, `--bus-changes`: the tailnet sizes and self changes of the bus-cost runs
//!   ([`bus_cost`]).
//! * `--variant`: a directory holding the five tsboot binaries (the first is the one the
//!   reaction and reaping runs use); sizes, boot latency and memory are measured for each.
//! * The doubles (fake-tailscaled, fake-tailscale, fake-iptables, fake-apiserver) are the
//!   workspace's own, from the directory this binary was built into; the roots, fixtures and
//!   fake apiserver are the test harness's (`tsboot_tests::harness`).
//!
//! Reaping needs root (a PID namespace); without it that part is skipped and says so.
//! The report (Markdown) goes to stdout and, with `--out`, to FILE; progress goes to stderr.
//! Environment: `TSBOOT_BENCH_KEEP=1` keeps the temporary roots (`$TMPDIR/tsb-bench-*`),
//! `TSBOOT_BENCH_DEBUG=1` prints each boot's processes and log, `TSBOOT_BENCH_SOURCE` is shown
//! as the measured source (bench/run.sh sets it to the commit and a digest of local changes).
//!
//! The fakes are the workspace's test doubles, unmodified; the bench only adds the fake
//! tailscaled's request log (`FAKE_TAILSCALED_REQUEST_LOG`) and stamps, with inotify, the
//! moments files change (records of the fake CLIs, the socket, the fake apiserver's log).

mod bus_cost;
mod flap;
mod goals;
mod images;
mod real;
mod scenarios;
mod setup;
mod stats;
mod sys;

use scenarios::Wrapper;
use setup::Variant;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tsboot_tests::real::which;

struct Args {
    variants: Vec<Variant>,
    boot_runs: usize,
    reaction_runs: usize,
    reap_runs: usize,
    orphans: usize,
    settle: Duration,
    flap_rate: u32,
    flap_secs: u32,
    real_runs: usize,
    only: Vec<String>,
    out: Option<PathBuf>,
    bus_peers: Vec<u32>,
    bus_changes: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("tsboot-bench: {msg}");
    eprintln!(
        "usage: tsboot-bench --variant NAME=DIR [...] [--boot-runs N] \
         [--reaction-runs N] [--reap-runs N] [--orphans N] [--settle-ms N] [--flap-rate N] [--flap-secs N] [--real-runs N] \
         [--only LIST] [--out FILE]"
    );
    std::process::exit(2);
}

fn parse() -> Args {
    let mut a = Args {
        variants: vec![],
        boot_runs: 25,
        reaction_runs: 25,
        reap_runs: 16,
        orphans: 10_000,
        settle: Duration::from_millis(300),
        flap_rate: 1000,
        real_runs: 6,
        flap_secs: 10,
        only: vec![],
        out: None,
        bus_peers: vec![1_000, 10_000, 100_000],
        bus_changes: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .unwrap_or_else(|_| usage(&format!("not a number: {v}")))
        };
        match flag.as_str() {
            "--variant" => {
                let v = val();
                let (name, dir) = v
                    .split_once('=')
                    .unwrap_or_else(|| usage("--variant wants NAME=DIR"));
                a.variants.push(Variant {
                    name: name.into(),
                    dir: dir.into(),
                });
            }
            "--boot-runs" => a.boot_runs = num(val()),
            "--reaction-runs" => a.reaction_runs = num(val()),
            "--reap-runs" => a.reap_runs = num(val()),
            "--orphans" => a.orphans = num(val()),
            "--settle-ms" => a.settle = Duration::from_millis(num(val()) as u64),
            "--real-runs" => a.real_runs = num(val()),
            "--flap-rate" => a.flap_rate = num(val()) as u32,
            "--flap-secs" => a.flap_secs = num(val()) as u32,
            "--only" => a.only = val().split(',').map(str::to_string).collect(),
            "--out" => a.out = Some(val().into()),
            "--bus-peers" => {
                a.bus_peers = val()
                    .split(',')
                    .map(|v| num(v.to_string()) as u32)
                    .collect()
            }
            "--bus-changes" => a.bus_changes = num(val()),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if a.variants.is_empty() {
        usage("at least one --variant is needed");
    }
    for v in &a.variants {
        for b in scenarios::TSBOOT_BINS {
            if !std::path::Path::exists(&v.bin(b)) {
                usage(&format!(
                    "{} is missing (build it first)",
                    v.bin(b).display()
                ));
            }
        }
    }
    for f in [
        "fake-tailscaled",
        "fake-tailscale",
        "fake-iptables",
        "fake-apiserver",
    ] {
        let p = tsboot_tests::bin_path(f);
        if !p.exists() {
            usage(&format!(
                "{} is missing (cargo build --release --workspace)",
                p.display()
            ));
        }
    }
    a
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "- date: {}\n- nproc: {}; CPU: {cpu}; memory: {mem}\n- kernel: {} ({os})\n- load average at start: {}\n- rustc: {}\n- references: tini {}, dumb-init {} (Debian packages)\n",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sh("nproc", &[]),
        sh("uname", &["-r"]),
        loadavg(),
        sh("rustc", &["--version"]),
        sh("dpkg-query", &["-W", "-f", "${Version}", "tini"]),
        sh("dpkg-query", &["-W", "-f", "${Version}", "dumb-init"]),
    )
}

/// The three load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let a = parse();
    let want = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    let is_root = sh("id", &["-u"]) == "0";

    let mut wrappers = Vec::new();
    for (name, bin, args) in [
        ("tini", "tini", &["-s", "--"][..]),
        ("tini-static", "tini-static", &["-s", "--"][..]),
        ("dumb-init", "dumb-init", &[][..]),
    ] {
        match which(bin) {
            Some(p) => {
                let mut argv = vec![p.display().to_string()];
                argv.extend(args.iter().map(|s| s.to_string()));
                wrappers.push(Wrapper {
                    name: name.into(),
                    argv,
                });
            }
            None => eprintln!("bench: {bin} not found: install tini and dumb-init (apt-get install tini dumb-init)"),
        }
    }

    let mut report = String::from("## Results\n\nMachine:\n\n");
    report.push_str(&machine());
    if let Ok(src) = std::env::var("TSBOOT_BENCH_SOURCE") {
        report.push_str(&format!("- source: {src}\n"));
    }
    report.push_str(&format!(
        "- builds: {}; doubles: {}\n\n",
        a.variants
            .iter()
            .map(|v| format!("{} = `{}`", v.name, v.dir.display()))
            .collect::<Vec<_>>()
            .join(", "),
        tsboot_tests::bin_path("").display()
    ));
    let primary = a.variants[0].clone();
    let mut goals = goals::Goals::default();
    // The goals table goes here, before the scenarios' own sections, once they have run.
    let goals_at = report.len();

    if want("sizes") {
        let refs: Vec<(&str, PathBuf)> = ["tini", "tini-static", "dumb-init"]
            .iter()
            .filter_map(|n| which(n).map(|p| (*n, p)))
            .collect();
        report.push_str(&scenarios::sizes(&a.variants, &refs, &mut goals));
    }
    let mut failures = Vec::new();
    if want("boot") {
        let data = scenarios::run_boots(&a.variants, &wrappers, a.boot_runs, a.settle);
        report.push_str(&scenarios::rss_report(
            &data,
            &a.variants,
            a.settle,
            &mut goals,
        ));
        report.push_str(&scenarios::boot_report(&data, &a.variants, &mut goals));
        failures.extend(data.failures);
    }
    if want("reaction") {
        eprintln!("bench: reaction ({} changes)", a.reaction_runs);
        match scenarios::run_reaction(&primary, a.reaction_runs) {
            Ok(d) => report.push_str(&scenarios::reaction_report(&d, &primary)),
            Err(e) => {
                eprintln!("bench: reaction: {e}");
                failures.push(format!("reaction: {}", e.lines().next().unwrap_or("")));
            }
        }
    }
    if want("bus") {
        let (rows, fails) = bus_cost::run(&primary, &a.bus_peers, a.bus_changes);
        report.push_str(&bus_cost::report(&rows, a.bus_changes));
        bus_cost::goals(&rows, &mut goals);
        failures.extend(fails);
    }
    if want("images") {
        report.push_str(&images::run(&mut goals));
    }
    if want("flap") {
        eprintln!("bench: flapping ({}/s for {} s)", a.flap_rate, a.flap_secs);
        match flap::run(&primary, a.flap_rate, a.flap_secs, &mut goals) {
            Ok(r) => report.push_str(&r),
            Err(e) => {
                eprintln!("bench: flapping: {e}");
                failures.push(format!("flapping: {}", e.lines().next().unwrap_or("")));
            }
        }
    }
    if want("real") {
        if is_root {
            eprintln!(
                "bench: against containerboot ({} runs, real daemon)",
                a.real_runs
            );
            report.push_str(&real::run(a.real_runs, a.orphans, &mut goals));
        } else {
            report.push_str(
                "### Against containerboot\n\nSKIPPED: needs root (network namespaces).\n\n",
            );
        }
    }
    if want("reap") {
        if is_root && which("unshare").is_some() {
            let pid1: Vec<Wrapper> = wrappers
                .into_iter()
                .filter(|w| w.name != "tini-static")
                .collect();
            let d = scenarios::run_reap(&primary, &pid1, a.reap_runs, a.orphans);
            report.push_str(&scenarios::reap_report(&d, &primary, a.orphans));
        } else {
            report.push_str("### Reaping\n\nSKIPPED: needs root and util-linux `unshare` for a PID namespace.\n\n");
        }
    }
    report.push_str(&format!("Load average at the end: {}\n", loadavg()));
    if !failures.is_empty() {
        report.push_str(&format!(
            "\nFailed runs (left out of the figures): {failures:#?}\n"
        ));
    }
    report.insert_str(goals_at, &goals.render());
    print!("{report}");
    if let Some(out) = &a.out {
        if let Err(e) = std::fs::write(out, &report) {
            eprintln!("bench: writing {}: {e}", out.display());
        }
    }
}
