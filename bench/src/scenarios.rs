//! The measurements: binary sizes, boot latency with its phases and the resident set of every
//! process after startup, reaction latency to a netmap change, and reaping as PID 1.

use crate::goals::Goals;
use crate::setup::{self, count_lines, Boot, Config, Root, Variant, Wrapped, ADDR0, DEST_IP};
use crate::stats::{fmt, median, summary, Table};
use crate::sys::{self, FileCounter, Mem};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use ts_common::argv::{dnat_rule, list_prerouting, RuleOp};

/// Every binary of tsboot (what `docker/build-static.sh --list` builds).
pub const TSBOOT_BINS: [&str; 7] = [
    "ts-init",
    "ts-prep",
    "ts-auth",
    "ts-proxy-rules",
    "ts-kubestate",
    "ts-serve",
    "ts-health",
];
/// The processes that may stay resident after startup (ts-init, ts-health, the guard, the
/// watchers).
pub const RESIDENT: [&str; 6] = [
    "ts-init",
    "ts-health",
    "ts-auth",
    "ts-proxy-rules",
    "ts-kubestate",
    "ts-serve",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn between(a: Instant, b: Instant) -> f64 {
    ms(b.saturating_duration_since(a))
}

fn mb(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

fn verdict(ok: bool, how: String) -> String {
    if ok {
        format!("**met** ({how})")
    } else {
        format!("**missed** ({how})")
    }
}

/// A "≤ N MB" verdict for `bytes`, read both ways: SI (N × 10⁶ bytes) and binary (N MiB),
/// saying so when only the binary reading is met.
fn verdict_mb(bytes: f64, n: f64) -> String {
    let si = n * 1e6;
    let mib = n * 1048576.0;
    if bytes <= si {
        verdict(true, format!("{:.0}% of {n} MB", bytes / si * 100.0))
    } else if bytes <= mib {
        format!(
            "**met as {n} MiB** ({:.0}% of {} bytes), **missed as {n} MB** (SI: over by {:.0} kB)",
            bytes / mib * 100.0,
            mib,
            (bytes - si) / 1e3
        )
    } else {
        verdict(
            false,
            format!(
                "over {n} MiB by {:.0} KiB, {:.0}% of {n} MB",
                (bytes - mib) / 1024.0,
                bytes / si * 100.0
            ),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes

pub fn sizes(variants: &[Variant], refs: &[(&str, PathBuf)], goals: &mut Goals) -> String {
    let mut out = String::from("### Binary sizes (stripped, bytes on disk)\n\n");
    let mut head = vec!["binary"];
    for v in variants {
        head.push(&v.name);
    }
    let mut t = Table::new(&head);
    let mut totals = vec![0u64; variants.len()];
    let mut init_sizes = vec![0u64; variants.len()];
    for bin in TSBOOT_BINS {
        let mut row = vec![format!("`{bin}`")];
        for (i, v) in variants.iter().enumerate() {
            let p = v.bin(bin);
            match std::fs::metadata(&p) {
                Ok(m) => {
                    totals[i] += m.len();
                    if bin == "ts-init" {
                        init_sizes[i] = m.len();
                    }
                    row.push(format!("{} ({})", m.len(), describe_elf(&p)));
                }
                Err(_) => row.push("missing".into()),
            }
        }
        t.row(row);
    }
    let mut row = vec![format!("**all {}**", TSBOOT_BINS.len())];
    for total in &totals {
        row.push(format!(
            "**{total}** ({:.2} MiB)",
            *total as f64 / 1048576.0
        ));
    }
    t.row(row);
    out.push_str(&t.render());
    out.push_str("\nReferences (Debian packages, as shipped): ");
    let refs: Vec<String> = refs
        .iter()
        .filter_map(|(n, p)| {
            std::fs::metadata(p)
                .ok()
                .map(|m| format!("`{n}` {} ({})", m.len(), describe_elf(p)))
        })
        .collect();
    out.push_str(&refs.join(", "));
    out.push_str("\n\nTargets (#18 goal 1): ts-init ≤ 1 MB; all binaries ≤ 12 MB.\n\n");
    for (i, v) in variants.iter().enumerate() {
        out.push_str(&format!(
            "- {}: ts-init {} bytes: {}; all {} {} bytes: {}\n",
            v.name,
            init_sizes[i],
            verdict_mb(init_sizes[i] as f64, 1.0),
            TSBOOT_BINS.len(),
            totals[i],
            verdict_mb(totals[i] as f64, 12.0),
        ));
    }
    if let (Some(v), Some(init), Some(total)) =
        (variants.first(), init_sizes.first(), totals.first())
    {
        goals.add(
            "1e",
            format!("ts-init binary ({})", v.name),
            format!("{init} B"),
            *init as f64 <= 1e6,
        );
        goals.add(
            "1d",
            format!("all {} binaries ({})", TSBOOT_BINS.len(), v.name),
            format!("{total} B"),
            *total as f64 <= 12e6,
        );
    }
    out.push('\n');
    out
}

/// "static, stripped, text 700 KB" from `file` and `size`.
fn describe_elf(p: &Path) -> String {
    let file = Command::new("file").arg("-bL").arg(p).output().ok();
    let file = file
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let linkage = if file.contains("statically linked") || file.contains("static-pie") {
        "static"
    } else if file.contains("dynamically linked") {
        "dynamic"
    } else {
        "?"
    };
    let stripped = if file.contains("not stripped") {
        "not stripped"
    } else if file.contains("stripped") {
        "stripped"
    } else {
        "?"
    };
    let text = Command::new("size")
        .arg(p)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| {
                    l.split_whitespace()
                        .next()
                        .and_then(|t| t.parse::<u64>().ok())
                })
        })
        .map(|t| format!(", text {t}"))
        .unwrap_or_default();
    format!("{linkage}, {stripped}{text}")
}

// ---------------------------------------------------------------------------------------------
// Boot latency and RSS

const HEALTH_START: &str = "started ts-health as pid";
const HEALTH_READY: &str = "ts-health is ready";
const PREP_START: &str = "started ts-prep as pid";
const PREFLIGHT_START: &str = "started ts-kubestate preflight as pid";
const TSD: &str = "Starting tailscaled";
const AUTH_START: &str = "started ts-auth as pid";
const UP: &str = "Running 'tailscale up'";
const AUTH_READY: &str = "ts-auth is ready";
const PR_START: &str = "started ts-proxy-rules as pid";
const KS_START: &str = "started ts-kubestate as pid";
const PR_READY: &str = "ts-proxy-rules is ready";
const KS_READY: &str = "ts-kubestate is ready";
const SERVE_START: &str = "started ts-serve as pid";
const SERVE_READY: &str = "ts-serve is ready";

/// The phases of a boot, in order: (label, from marker, to marker). Markers are a substring of
/// a log line, or `@t0` (the bench's spawn of ts-init), `@recN` (the record file reached N
/// lines: the Nth fake exec'd), `@sock` (the fake tailscaled created its socket), `@after-prep`
/// (preflight spawned, else tailscaled starting), `@first` (the first child spawned),
/// `@watchers` (the last watcher ready).
const PHASES: [(&str, &str, &str); 14] = [
    (
        "ts-init start: exec, settings, plan → first child spawned",
        "@t0",
        "@first",
    ),
    (
        "health: ts-health spawned → listening (ready)",
        HEALTH_START,
        HEALTH_READY,
    ),
    ("prep: ts-prep runs", PREP_START, "@after-prep"),
    (
        "preflight: ts-kubestate preflight (TLS, SSARs, secret GET)",
        PREFLIGHT_START,
        TSD,
    ),
    (
        "tailscaled socket: spawn tailscaled … ts-init's connect succeeds",
        TSD,
        AUTH_START,
    ),
    (
        "  · spawn → fake tailscaled exec'd (its argv recorded)",
        TSD,
        "@rec1",
    ),
    (
        "  · fake tailscaled start-up → socket created (bind)",
        "@rec1",
        "@sock",
    ),
    (
        "  · socket created → ts-init's connect succeeds",
        "@sock",
        AUTH_START,
    ),
    (
        "ts-auth start: exec → its first bus watch reaches tailscaled",
        AUTH_START,
        "@req1",
    ),
    (
        "up: `tailscale up` (spawn, login replayed, exit) → ts-auth re-watches",
        "@req1",
        "@req2",
    ),
    ("  · `up` spawned → fake tailscale exec'd", UP, "@rec2"),
    (
        "Running: re-watch → Running seen, readiness read by ts-init",
        "@req2",
        AUTH_READY,
    ),
    (
        "watcher readiness: spawn all, first reconcile (DNAT rule, secret PATCH, serve config)",
        AUTH_READY,
        "@watchers",
    ),
    ("→ `Startup complete` logged", "@watchers", setup::STARTUP),
];

#[derive(Default)]
pub struct BootData {
    /// (variant, config) → total ms.
    total: BTreeMap<(String, &'static str), Vec<f64>>,
    /// (variant, config, phase index) → ms.
    phases: BTreeMap<(String, &'static str, usize), Vec<f64>>,
    /// (variant, watcher) → spawn → ready ms.
    watchers: BTreeMap<(String, &'static str), Vec<f64>>,
    /// (variant, config, process) → memory after startup.
    mem: BTreeMap<(String, &'static str, String), Vec<Mem>>,
    /// (variant, config) → sum of the resident tsboot processes' VmRSS, kB.
    sum_rss: BTreeMap<(String, &'static str), Vec<f64>>,
    /// reference init → memory while running the fake tailscaled.
    wrappers: BTreeMap<String, Vec<Mem>>,
    pub failures: Vec<String>,
}

pub struct Wrapper {
    pub name: String,
    pub argv: Vec<String>,
}

/// One boot: time it, take its processes' memory after `settle`, stop it.
fn one_boot(
    data: &mut BootData,
    variant: &Variant,
    config: Config,
    settle: Duration,
) -> Result<(), String> {
    let mut boot = Boot::start("boot", variant, config, false)?;
    let done = boot.wait_startup();
    let done = match done {
        Ok(t) => t,
        Err(e) => {
            let _ = boot.stop();
            return Err(e);
        }
    };
    let key = (variant.name.clone(), config.name());
    data.total
        .entry(key.clone())
        .or_default()
        .push(between(boot.t0, done));
    let at = |needle: &str| -> Option<Instant> {
        match needle {
            "@t0" => Some(boot.t0),
            "@sock" => boot.socket_created.as_ref()?.at_least(1, boot.t0),
            n if n.starts_with("@rec") => boot
                .records
                .as_ref()?
                .at_least(n[4..].parse().ok()?, boot.t0),
            n if n.starts_with("@req") => boot
                .requests
                .as_ref()?
                .at_least(n[4..].parse().ok()?, boot.t0),
            "@after-prep" => boot
                .lines
                .find(0, PREFLIGHT_START)
                .or_else(|| boot.lines.find(0, TSD))
                .map(|(_, t)| t),
            "@first" => boot.lines.find(0, "started ts-").map(|(_, t)| t),
            "@watchers" => [PR_READY, KS_READY, SERVE_READY]
                .iter()
                .filter_map(|n| boot.lines.find(0, n).map(|(_, t)| t))
                .max(),
            n => boot.lines.find(0, n).map(|(_, t)| t),
        }
    };
    for (i, (_, from, to)) in PHASES.iter().enumerate() {
        let (from, to) = (at(from), at(to));
        if let (Some(a), Some(b)) = (from, to) {
            data.phases
                .entry((variant.name.clone(), config.name(), i))
                .or_default()
                .push(between(a, b));
        }
    }
    for (name, start, ready) in [
        ("ts-proxy-rules", PR_START, PR_READY),
        ("ts-kubestate", KS_START, KS_READY),
        ("ts-serve", SERVE_START, SERVE_READY),
    ] {
        if let (Some((_, a)), Some((_, b))) = (boot.lines.find(0, start), boot.lines.find(0, ready))
        {
            data.watchers
                .entry((variant.name.clone(), name))
                .or_default()
                .push(between(a, b));
        }
    }

    boot.unwatch();
    std::thread::sleep(settle);
    let mut sum = 0.0;
    let mut procs = vec![("ts-init".to_string(), boot.init_pid)];
    procs.extend(boot.children());
    if std::env::var_os("TSBOOT_BENCH_DEBUG").is_some() {
        eprintln!(
            "bench: {} {}: processes {procs:?}\n{}",
            variant.name,
            config.name(),
            boot.lines.text()
        );
    }
    for (name, pid) in procs {
        if let Some(m) = Mem::of(pid) {
            if RESIDENT.contains(&name.as_str()) {
                sum += m.rss as f64;
            }
            data.mem
                .entry((variant.name.clone(), config.name(), name))
                .or_default()
                .push(m);
        }
    }
    data.sum_rss.entry(key).or_default().push(sum);
    boot.stop()
}

fn one_wrapper(data: &mut BootData, w: &Wrapper, settle: Duration) -> Result<(), String> {
    let argv: Vec<&str> = w.argv.iter().map(String::as_str).collect();
    let run = Wrapped::start("wrap", &argv, false)?;
    std::thread::sleep(settle);
    if let Some(m) = Mem::of(run.init_pid) {
        data.wrappers.entry(w.name.clone()).or_default().push(m);
    }
    run.stop();
    Ok(())
}

pub fn run_boots(
    variants: &[Variant],
    wrappers: &[Wrapper],
    runs: usize,
    settle: Duration,
) -> BootData {
    let mut data = BootData::default();
    for i in 0..runs {
        eprintln!("bench: boot round {}/{runs}", i + 1);
        for v in variants {
            for config in [Config::Full, Config::Minimal] {
                if let Err(e) = one_boot(&mut data, v, config, settle) {
                    eprintln!("bench: boot {} {}: {e}", v.name, config.name());
                    data.failures.push(format!(
                        "boot {} {}: {}",
                        v.name,
                        config.name(),
                        first_line(&e)
                    ));
                }
            }
        }
        for w in wrappers {
            if let Err(e) = one_wrapper(&mut data, w, settle) {
                eprintln!("bench: {}: {e}", w.name);
                data.failures
                    .push(format!("{}: {}", w.name, first_line(&e)));
            }
        }
    }
    data
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub fn boot_report(data: &BootData, variants: &[Variant], goals: &mut Goals) -> String {
    let mut out = String::from("### Boot latency: exec of ts-init → `Startup complete`\n\n");
    let mut t = Table::new(&["build", "configuration", "runs", "median", "min", "max"]);
    for v in variants {
        for config in [Config::Full, Config::Minimal] {
            if let Some(s) = data
                .total
                .get(&(v.name.clone(), config.name()))
                .and_then(|x| summary(x))
            {
                t.row(vec![
                    v.name.clone(),
                    config.name().into(),
                    s.n.to_string(),
                    format!("**{:.1} ms**", s.median),
                    format!("{:.1} ms", s.min),
                    format!("{:.1} ms", s.max),
                ]);
            }
        }
    }
    out.push_str(&t.render());
    if let Some(v) = variants.first() {
        if let Some(x) = data.total.get(&(v.name.clone(), Config::Full.name())) {
            let m = median(x);
            goals.add(
                "3",
                format!(
                    "boot: exec → `Startup complete`, median ({}, full configuration, doubles)",
                    v.name
                ),
                format!("{m:.1} ms ({})", fmt(x, 1, "ms")),
                m <= 15.0,
            );
        }
    }
    out.push_str("\nTarget (#18 goal 3) ≤ 15 ms median: ");
    let verdicts: Vec<String> = variants
        .iter()
        .flat_map(|v| [Config::Full, Config::Minimal].map(|c| (v, c)))
        .filter_map(|(v, c)| {
            let m = median(data.total.get(&(v.name.clone(), c.name()))?);
            Some(format!(
                "{} {}: {}",
                v.name,
                c.name(),
                verdict(
                    m <= 15.0,
                    if m <= 15.0 {
                        format!("{m:.1} ms")
                    } else {
                        format!("{m:.1} ms, {:.1} ms over", m - 15.0)
                    }
                )
            ))
        })
        .collect();
    out.push_str(&verdicts.join("; "));
    out.push_str("\n\n");

    for v in variants {
        for config in [Config::Full, Config::Minimal] {
            if !data.total.contains_key(&(v.name.clone(), config.name())) {
                continue;
            }
            out.push_str(&format!(
                "Phases, {} build, {} configuration (ms: median (min–max)):\n\n",
                v.name,
                config.name()
            ));
            let mut t = Table::new(&["phase", "ms"]);
            for (i, (label, _, _)) in PHASES.iter().enumerate() {
                if let Some(x) = data.phases.get(&(v.name.clone(), config.name(), i)) {
                    t.row(vec![label.to_string(), fmt(x, 2, "")]);
                }
            }
            if let Some(x) = data.total.get(&(v.name.clone(), config.name())) {
                t.row(vec!["**total**".into(), fmt(x, 2, "")]);
            }
            out.push_str(&t.render());
            out.push('\n');
            if config == Config::Full {
                for w in ["ts-proxy-rules", "ts-kubestate", "ts-serve"] {
                    if let Some(x) = data.watchers.get(&(v.name.clone(), w)) {
                        out.push_str(&format!("- {w}: spawn → ready {} ms\n", fmt(x, 2, "")));
                    }
                }
                out.push('\n');
            }
        }
    }
    out
}

pub fn rss_report(
    data: &BootData,
    variants: &[Variant],
    settle: Duration,
    goals: &mut Goals,
) -> String {
    let mut out = format!(
        "### Resident memory after startup ({} ms after `Startup complete`; kB as /proc reports them (KiB), median (min–max))\n\n",
        settle.as_millis()
    );
    let mut t = Table::new(&[
        "process",
        "build / config",
        "VmRSS",
        "VmHWM",
        "Pss",
        "private (clean+dirty)",
        "anonymous",
    ]);
    let row = |t: &mut Table, name: &str, label: String, ms: &[Mem]| {
        let col =
            |f: &dyn Fn(&Mem) -> u64| -> Vec<f64> { ms.iter().map(|m| f(m) as f64).collect() };
        t.row(vec![
            name.to_string(),
            label,
            fmt(&col(&|m| m.rss), 0, ""),
            fmt(&col(&|m| m.hwm), 0, ""),
            fmt(&col(&|m| m.get("Pss")), 0, ""),
            fmt(
                &col(&|m| m.get("Private_Clean") + m.get("Private_Dirty")),
                0,
                "",
            ),
            fmt(&col(&|m| m.get("Anonymous")), 0, ""),
        ]);
    };
    for v in variants {
        for config in [Config::Full, Config::Minimal] {
            let label = format!("{} / {}", v.name, config.short());
            let mut names = Vec::new();
            for name in RESIDENT.iter().chain(["tailscaled"].iter()) {
                if let Some(ms) = data
                    .mem
                    .get(&(v.name.clone(), config.name(), name.to_string()))
                {
                    let shown = if *name == "tailscaled" {
                        "(fake-tailscaled, for scale)"
                    } else {
                        names.push(*name);
                        name
                    };
                    row(&mut t, shown, label.clone(), ms);
                }
            }
            if let Some(x) = data.sum_rss.get(&(v.name.clone(), config.name())) {
                t.row(vec![
                    format!(
                        "**sum of the resident tsboot processes** ({})",
                        names.join(", ")
                    ),
                    label.clone(),
                    format!("**{}**", fmt(x, 0, "")),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
    }
    for (name, ms) in &data.wrappers {
        row(
            &mut t,
            name,
            "Debian package, running fake-tailscaled".into(),
            ms,
        );
    }
    out.push_str(&t.render());
    out.push('\n');

    let wrapper_rss = |name: &str| {
        data.wrappers
            .get(name)
            .map(|m| median(&m.iter().map(|m| m.rss as f64).collect::<Vec<_>>()))
    };
    let (tini, tini_static) = (wrapper_rss("tini"), wrapper_rss("tini-static"));
    for (i, v) in variants.iter().enumerate() {
        let init = data
            .mem
            .get(&(v.name.clone(), Config::Full.name(), "ts-init".to_string()))
            .map(|m| median(&m.iter().map(|m| m.rss as f64).collect::<Vec<_>>()));
        for (reference, rss, limit, id) in [
            ("tini", tini, 1.0, "1a"),
            ("tini-static", tini_static, 1.2, "1b"),
        ] {
            if let (Some(init), Some(r)) = (init, rss) {
                let ratio = init / r;
                out.push_str(&format!(
                    "- {}: ts-init VmRSS (full configuration) / {reference} VmRSS = {init:.0} / {r:.0} kB = {ratio:.2}× — target ≤ {limit:.1}×: {}\n",
                    v.name,
                    verdict(ratio <= limit, if ratio <= limit { format!("{ratio:.2}×") } else { format!("{:.0} kB over {limit:.1}× {reference}", init - limit * r) })
                ));
                if i == 0 {
                    goals.add(
                        id,
                        format!(
                            "ts-init VmRSS / {reference} VmRSS, same run ({}, full configuration)",
                            v.name
                        ),
                        format!("{init:.0} / {r:.0} kB = {ratio:.2}×"),
                        ratio <= limit,
                    );
                }
            }
        }
        for config in [Config::Full, Config::Minimal] {
            if let Some(x) = data.sum_rss.get(&(v.name.clone(), config.name())) {
                let m = median(x);
                out.push_str(&format!(
                    "- {} / {}: sum of resident tsboot VmRSS {m:.0} KiB ({}) — target ≤ 6 MiB: {}\n",
                    v.name,
                    config.short(),
                    mb(m),
                    verdict(m <= 6.0 * 1024.0, if m <= 6.0 * 1024.0 { format!("{:.0}% of 6 MiB", m / 61.44) } else { format!("{:.0} KiB over", m - 6144.0) })
                ));
                if i == 0 && config == Config::Full {
                    goals.add(
                        "1c",
                        format!(
                            "all resident tsboot processes, VmRSS summed ({}, full configuration)",
                            v.name
                        ),
                        format!("{m:.0} KiB ({})", mb(m)),
                        m <= 6.0 * 1024.0,
                    );
                }
            }
        }
    }
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------------------
// Reaction latency

fn count_patches(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"PATCH\"") && l.contains("/secrets/"))
        .count()
}

/// The HEAD-era `SelfChange` notifies the reaction toggles between: each changes the node's
/// StableID and name (→ a secret PATCH) and its IPv4 address (→ the DNAT rule is replaced).
pub fn variants_json() -> Result<[(String, &'static str, &'static str); 2], String> {
    let read = |n: &str| {
        std::fs::read_to_string(tsboot_tests::harness::fixture(n))
            .map_err(|e| format!("fixture {n}: {e}"))
    };
    let newid = read("head-era-14-selfchange-new-stableid-and-name.json")?;
    let oldid_newaddr = read("head-era-15-selfchange-address-change.json")?;
    // B: new identity and the new address; A: the original identity and address.
    let b = newid
        .trim()
        .replace("100.101.102.103", "100.88.77.66")
        .replace("6265:6667", "6258:4d42");
    let a = oldid_newaddr
        .trim()
        .replace("100.88.77.66", "100.101.102.103")
        .replace("6258:4d42", "6265:6667");
    Ok([
        (b, "nQ9xR2tCNTRL", "100.88.77.66"),
        (a, "n5Ez6W7CNTRL", ADDR0),
    ])
}

#[derive(Default)]
pub struct ReactionData {
    ack: Vec<f64>,
    patch: Vec<f64>,
    stored_log: Vec<f64>,
    rule_log: Vec<f64>,
    rule_rec: Vec<f64>,
    exec3: Vec<f64>,
    overhead: Vec<f64>,
    after_mem: Vec<(String, Mem)>,
    pub failures: Vec<String>,
}

pub fn run_reaction(variant: &Variant, runs: usize) -> Result<ReactionData, String> {
    let toggles = variants_json()?;
    let boot = Boot::start("react", variant, Config::Full, false)?;
    let result = (|| -> Result<ReactionData, String> {
        boot.wait_startup()?;
        let api = boot.api.as_ref().unwrap();
        let patches = FileCounter::start(
            &api.state,
            "requests.log",
            sys::IN_MOVED_TO | sys::IN_CLOSE_WRITE,
            count_patches,
        )?;
        let records = FileCounter::start(&boot.root.dir, "args", sys::IN_MODIFY, count_lines)?;
        std::thread::sleep(Duration::from_millis(200));
        let mut d = ReactionData::default();
        let mut prev_addr = ADDR0;
        for i in 0..runs {
            let (json, id, addr) = &toggles[i % 2];
            let base_patch = count_patches(&api.state.join("requests.log"));
            let base_rec = count_lines(&boot.root.record);
            let base_line = boot.lines.len();
            let t0 = Instant::now();
            sys::control(&boot.root.control, &format!("notify {json}"))?;
            let t_ack = Instant::now();
            let patch = patches.wait_at_least(base_patch + 1, t0, Duration::from_secs(5));
            let stored = boot
                .lines
                .wait(
                    base_line,
                    &format!("device_id={id} "),
                    Duration::from_secs(5),
                )
                .ok();
            let rule = boot
                .lines
                .wait(
                    base_line,
                    &format!("DNAT rule {addr} -> {DEST_IP} in place"),
                    Duration::from_secs(5),
                )
                .ok();
            // Two mutating commands: -I for the new address, -D for the old one.
            let rec = records.wait_at_least(base_rec + 2, t0, Duration::from_secs(5));
            match (patch, rule) {
                (Some(p), Some((_, r))) => {
                    d.ack.push(between(t0, t_ack));
                    d.patch.push(between(t0, p));
                    if let Some((_, s)) = stored {
                        d.stored_log.push(between(t0, s));
                    }
                    d.rule_log.push(between(t0, r));
                    if let Some(r) = rec {
                        d.rule_rec.push(between(t0, r));
                    }
                }
                _ => d.failures.push(format!(
                    "reaction {i}: patch {:?}, rule {:?}",
                    patch.is_some(),
                    rule.is_some()
                )),
            }
            let lines = std::fs::read_to_string(&boot.root.record).unwrap_or_default();
            let tail: Vec<&str> = lines.lines().rev().take(2).collect();
            if !(tail.iter().any(|l| l.contains(" -I ") && l.contains(addr))
                && tail
                    .iter()
                    .any(|l| l.contains(" -D ") && l.contains(prev_addr)))
            {
                d.failures.push(format!(
                    "reaction {i}: unexpected iptables records {tail:?}"
                ));
            }
            prev_addr = addr;
            std::thread::sleep(Duration::from_millis(50));
        }
        // The same three iptables executions ts-proxy-rules makes (-S, -I new, -D old), timed
        // back to back by the bench: the cost of the execs themselves.
        let scratch = Root::new("exec");
        let ipt = scratch.dir.join("usr/bin/iptables");
        let mut cur = ADDR0.to_string();
        let run = |cmd: ts_common::argv::Command| {
            let argv = cmd.argv();
            scratch.run_with_env(&ipt, &argv.iter().map(String::as_str).collect::<Vec<_>>());
        };
        run(dnat_rule(RuleOp::Insert, "iptables", &cur, DEST_IP));
        for i in 0..runs {
            let new = if i % 2 == 0 { "100.88.77.66" } else { ADDR0 };
            let t = Instant::now();
            run(list_prerouting("iptables"));
            run(dnat_rule(RuleOp::Insert, "iptables", new, DEST_IP));
            run(dnat_rule(RuleOp::Delete, "iptables", &cur, DEST_IP));
            d.exec3.push(ms(t.elapsed()));
            cur = new.to_string();
        }
        let exec = median(&d.exec3);
        d.overhead = d.rule_log.iter().map(|r| r - exec).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut procs = vec![("ts-init".to_string(), boot.init_pid)];
        procs.extend(boot.children());
        for (name, pid) in procs {
            if let Some(m) = Mem::of(pid) {
                d.after_mem.push((name, m));
            }
        }
        Ok(d)
    })();
    let stopped = boot.stop();
    let d = result?;
    stopped?;
    Ok(d)
}

pub fn reaction_report(d: &ReactionData, variant: &Variant) -> String {
    let mut out = format!(
        "### Reaction latency: a netmap change pushed by the fake tailscaled → secret patched, DNAT rule replaced ({} build, ms from the `notify` command)\n\n",
        variant.name
    );
    let mut t = Table::new(&["event", "runs", "median", "min", "max"]);
    let mut row = |label: &str, v: &[f64]| {
        if let Some(s) = summary(v) {
            t.row(vec![
                label.into(),
                s.n.to_string(),
                format!("{:.2}", s.median),
                format!("{:.2}", s.min),
                format!("{:.2}", s.max),
            ]);
        }
    };
    row("control command answered (the bus has the message)", &d.ack);
    row(
        "**secret PATCH recorded by the fake apiserver** (requests.log renamed into place)",
        &d.patch,
    );
    row(
        "ts-kubestate logs `stored device info` (PATCH answered)",
        &d.stored_log,
    );
    row(
        "`-D` of the old rule recorded by fake iptables (its exec started)",
        &d.rule_rec,
    );
    row(
        "**ts-proxy-rules logs `DNAT rule … in place`** (all three execs done)",
        &d.rule_log,
    );
    row(
        "the three iptables execs alone (`-S`, `-I`, `-D`, back to back, by the bench)",
        &d.exec3,
    );
    row(
        "**DNAT reaction minus the three execs** (median exec time subtracted)",
        &d.overhead,
    );
    out.push_str(&t.render());
    let p = median(&d.patch);
    let o = median(&d.overhead);
    out.push_str(&format!(
        "\nTargets: secret patched ≤ 5 ms median: {}; DNAT rule ≤ the iptables execs + 5 ms: {}\n",
        verdict(p <= 5.0, format!("{p:.2} ms")),
        verdict(o <= 5.0, format!("execs + {o:.2} ms"))
    ));
    if !d.after_mem.is_empty() {
        out.push_str("\nMemory after the reaction runs (kB VmRSS / VmHWM): ");
        let v: Vec<String> = d
            .after_mem
            .iter()
            .filter(|(n, _)| RESIDENT.contains(&n.as_str()))
            .map(|(n, m)| format!("{n} {} / {}", m.rss, m.hwm))
            .collect();
        out.push_str(&v.join(", "));
        let sum: u64 = d
            .after_mem
            .iter()
            .filter(|(n, _)| RESIDENT.contains(&n.as_str()))
            .map(|(_, m)| m.rss)
            .sum();
        out.push_str(&format!("; sum {sum} kB\n"));
    }
    if !d.failures.is_empty() {
        out.push_str(&format!("\nFailures: {:?}\n", d.failures));
    }
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------------------
// Reaping as PID 1

#[derive(Default)]
pub struct ReapData {
    /// init name → ms from the orphans' re-parenting (first seen) until none is left.
    pub reap: BTreeMap<String, Vec<f64>>,
    /// init name → ms from the `orphans` command until none is left (forking included).
    pub total: BTreeMap<String, Vec<f64>>,
    /// init name → PID 1's CPU time during the flood, ms.
    pub cpu: BTreeMap<String, Vec<f64>>,
    /// init name → PID 1's wait for a CPU during the flood, ms.
    pub waited: BTreeMap<String, Vec<f64>>,
    /// init name → (VmRSS before, VmHWM after) of PID 1.
    pub mem: BTreeMap<String, Vec<(u64, u64)>>,
    /// ts-init / tini per round: wall time, CPU time.
    pub ratios: Vec<f64>,
    pub cpu_ratios: Vec<f64>,
    pub failures: Vec<String>,
}

/// Starts one PID 1 (ts-init or a reference init) in a new PID namespace.
type Starter<'a> = Box<dyn Fn() -> Result<Pid1, String> + 'a>;

enum Pid1 {
    TsInit(Box<Boot>),
    Other(Wrapped),
}

impl Pid1 {
    fn pid(&self) -> i32 {
        match self {
            Pid1::TsInit(b) => b.init_pid,
            Pid1::Other(w) => w.init_pid,
        }
    }
    fn control(&self) -> PathBuf {
        match self {
            Pid1::TsInit(b) => b.root.control.clone(),
            Pid1::Other(w) => w.root.control.clone(),
        }
    }
    fn stop(self) -> Result<(), String> {
        match self {
            Pid1::TsInit(b) => b.stop(),
            Pid1::Other(w) => {
                w.stop();
                Ok(())
            }
        }
    }
}

/// What one flood cost PID 1.
struct Flood {
    /// Re-parented (first seen) → none left, ms.
    reap: f64,
    /// `orphans` command → none left, ms.
    total: f64,
    /// PID 1's time on a CPU meanwhile, ms.
    cpu: f64,
    /// PID 1's time runnable but waiting for a CPU meanwhile, ms (contention).
    waited: f64,
}

fn flood(p: &Pid1, orphans: usize) -> Result<Flood, String> {
    let pid = p.pid();
    let baseline = sys::children(pid, 64 * 1024);
    let sched0 = sys::schedstat(pid).unwrap_or_default();
    let control = p.control();
    let t_send = Instant::now();
    let cmd = std::thread::spawn(move || sys::control(&control, &format!("orphans {orphans}")));
    let limit = Duration::from_secs(120);
    // Poll the head of PID 1's child list (zombies stay listed until reaped; the re-parented
    // orphans are appended after the long-lived children): seen = an orphan appears, done = the
    // head holds only the long-lived children again. A short sleep keeps the poller from
    // competing for tasklist_lock with the reaper.
    let mut seen = None;
    let done = loop {
        let now = Instant::now();
        let head = sys::children(pid, 4096);
        let extra = head.iter().any(|c| !baseline.contains(c));
        if seen.is_none() && extra {
            seen = Some(now);
        }
        if seen.is_some() && !extra {
            break now;
        }
        if seen.is_none() && cmd.is_finished() {
            // The command came back and nothing was ever seen: the reaping was faster than one
            // poll (or it failed).
            let r = sys::children(pid, 4096);
            if r.iter().all(|c| baseline.contains(c)) {
                break now;
            }
        }
        if t_send.elapsed() > limit {
            return Err("orphans not reaped within 120 s".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    cmd.join()
        .map_err(|_| "control thread panicked".to_string())??;
    let sched1 = sys::schedstat(pid).unwrap_or_default();
    let seen = seen.ok_or("the orphans were never seen (reaped within one poll?)")?;
    Ok(Flood {
        reap: between(seen, done),
        total: between(t_send, done),
        cpu: sched1.0.saturating_sub(sched0.0) as f64 / 1e6,
        waited: sched1.1.saturating_sub(sched0.1) as f64 / 1e6,
    })
}

pub fn run_reap(variant: &Variant, wrappers: &[Wrapper], runs: usize, orphans: usize) -> ReapData {
    let mut d = ReapData::default();
    for i in 0..runs {
        eprintln!("bench: reaping round {}/{runs}", i + 1);
        let mut this_round: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let mut inits: Vec<(String, Starter)> = vec![(
            "ts-init".to_string(),
            Box::new(|| {
                let b = Boot::start("reap", variant, Config::Minimal, true)?;
                if let Err(e) = b.wait_startup() {
                    let _ = b.stop();
                    return Err(e);
                }
                Ok(Pid1::TsInit(Box::new(b)))
            }),
        )];
        for w in wrappers {
            let argv: Vec<String> = w.argv.iter().filter(|a| *a != "-s").cloned().collect();
            inits.push((
                w.name.clone(),
                Box::new(move || {
                    let a: Vec<&str> = argv.iter().map(String::as_str).collect();
                    Wrapped::start("reap", &a, true).map(Pid1::Other)
                }),
            ));
        }
        // Alternate who goes first, so neither always runs on a warmer machine.
        if i % 2 == 1 {
            inits.reverse();
        }
        for (name, start) in inits {
            let p = match start() {
                Ok(p) => p,
                Err(e) => {
                    d.failures.push(format!("{name}: {}", first_line(&e)));
                    continue;
                }
            };
            std::thread::sleep(Duration::from_millis(100));
            let before = Mem::of(p.pid()).map(|m| m.rss).unwrap_or(0);
            match flood(&p, orphans) {
                Ok(f) => {
                    d.reap.entry(name.clone()).or_default().push(f.reap);
                    d.total.entry(name.clone()).or_default().push(f.total);
                    d.cpu.entry(name.clone()).or_default().push(f.cpu);
                    d.waited.entry(name.clone()).or_default().push(f.waited);
                    this_round.insert(name.clone(), (f.reap, f.cpu));
                }
                Err(e) => d.failures.push(format!("{name}: {e}")),
            }
            let hwm = Mem::of(p.pid()).map(|m| m.hwm).unwrap_or(0);
            d.mem.entry(name.clone()).or_default().push((before, hwm));
            if let Err(e) = p.stop() {
                d.failures.push(format!("{name} stop: {}", first_line(&e)));
            }
        }
        if let (Some(a), Some(b)) = (this_round.get("ts-init"), this_round.get("tini")) {
            d.ratios.push(a.0 / b.0);
            if b.1 > 0.0 {
                d.cpu_ratios.push(a.1 / b.1);
            }
        }
    }
    d
}

pub fn reap_report(d: &ReapData, variant: &Variant, orphans: usize) -> String {
    let mut out = format!(
        "### Reaping: {orphans} orphans re-parented at once to PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`), {} build of ts-init\n\n",
        variant.name
    );
    let mut t = Table::new(&[
        "PID 1",
        "runs",
        "re-parented → none left (ms, wall)",
        "PID 1 on a CPU meanwhile (ms)",
        "PID 1 waiting for a CPU (ms)",
        "`orphans` command → none left (ms, forking included)",
        "PID 1 VmRSS before (kB)",
        "PID 1 VmHWM after (kB)",
    ]);
    let get = |m: &BTreeMap<String, Vec<f64>>, name: &str| m.get(name).cloned().unwrap_or_default();
    for (name, v) in &d.reap {
        let mem = d.mem.get(name).cloned().unwrap_or_default();
        let before: Vec<f64> = mem.iter().map(|m| m.0 as f64).collect();
        let after: Vec<f64> = mem.iter().map(|m| m.1 as f64).collect();
        t.row(vec![
            name.clone(),
            v.len().to_string(),
            fmt(v, 2, ""),
            fmt(&get(&d.cpu, name), 2, ""),
            fmt(&get(&d.waited, name), 2, ""),
            fmt(&get(&d.total, name), 1, ""),
            fmt(&before, 0, ""),
            fmt(&after, 0, ""),
        ]);
    }
    out.push_str(&t.render());
    for (what, ratios) in [("wall time", &d.ratios), ("CPU time", &d.cpu_ratios)] {
        if let Some(s) = summary(ratios) {
            out.push_str(&format!(
                "\nts-init / tini, {what}, per interleaved round: median {:.2}× (min {:.2}×, max {:.2}×, {} rounds) — target ≤ 1.1×: {}\n",
                s.median,
                s.min,
                s.max,
                s.n,
                verdict(s.median <= 1.1, format!("{:.2}×", s.median))
            ));
        }
    }
    if !d.failures.is_empty() {
        out.push_str(&format!("\nFailures: {:?}\n", d.failures));
    }
    out.push('\n');
    out
}
