//! Reconcile status that tsboot's processes publish for ts-health (`/healthz`, `/metrics`).
//!
//! Each process that reports owns one small JSON file, `<status dir>/<name>.json` (the directory
//! is `tsboot-status` beside tailscaled's socket, set in [`crate::settings::LocalEndpoints`] only
//! when a handler is enabled; otherwise every call here does nothing). The file is replaced
//! atomically (write a temporary file, rename it) whenever something changes, so a reader never
//! sees half a report and never waits for a writer: a watcher stuck in a hung `iptables` or an
//! apiserver that never answers is seen as a reconcile *in progress since* a point in time, and
//! ts-health judges it stuck after [`STUCK_AFTER`] without asking it anything.
//!
//! A long-lived phase adopts it with two lines: [`init`] once at startup, and [`track`] around
//! each reconcile (`status::track(apply(...)).await?`). [`stopped`] marks a clean exit, so a
//! watcher with nothing left to do is not counted. ts-init publishes the phases' states, their
//! exits and whether startup is complete through [`set_phase`], [`record_exit`] and
//! [`set_startup_complete`]. Kubernetes requests are counted by status code
//! ([`count_kube_request`]) and IPN-bus re-watches ([`note_rewatch`]) by the shared clients.
//!
//! Times are `CLOCK_MONOTONIC` milliseconds: every process of the container reads the same
//! clock, and a wall-clock step cannot fake a stuck reconcile.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A reconcile running longer than this is reported as stuck: `/healthz` turns 503 within
/// this plus one scrape, well inside the 2 s the README promises.
pub const STUCK_AFTER_MS: u64 = 1000;
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(STUCK_AFTER_MS);
/// Reasons are cut to this many characters (they may quote an apiserver's or iptables' text).
pub const MAX_REASON: usize = 240;
pub const INIT_NAME: &str = "ts-init";

/// How a finished reconcile ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// One line; empty on success.
    pub reason: String,
    pub at_ms: u64,
}

/// Where a phase is, as ts-init sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    /// Started, not yet ready (or, for a one-shot phase, not yet finished).
    Running,
    /// A long-lived phase reported readiness (its first reconcile is done).
    Ready,
    /// A one-shot phase (or a watcher with nothing to do) exited 0.
    Done,
    /// Exited non-zero or was killed.
    Failed,
    /// Stopped by ts-init's shutdown.
    Stopped,
}

impl PhaseState {
    pub const ALL: [PhaseState; 5] = [
        PhaseState::Running,
        PhaseState::Ready,
        PhaseState::Done,
        PhaseState::Failed,
        PhaseState::Stopped,
    ];

    /// The serde name (in declaration order, as [`PhaseState::ALL`]).
    pub fn name(&self) -> &'static str {
        ["running", "ready", "done", "failed", "stopped"][*self as usize]
    }
}

/// One process's report: the file's content. Both ends use this type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub name: String,
    pub pid: u32,
    /// Inode of the writer's PID namespace: a reader in the same namespace may check the pid.
    pub pid_ns: Option<u64>,
    /// Exited cleanly: not counted by the health verdict any more.
    pub stopped: bool,
    /// A reconcile started at this time and has not finished.
    pub in_progress_since_ms: Option<u64>,
    /// The last finished reconcile.
    pub last: Option<Outcome>,
    pub successes: u64,
    pub failures: u64,
    /// Kubernetes requests by status code (`"200"`, `"500"`, `"timeout"`, `"error"`).
    pub kube_requests: BTreeMap<String, u64>,
    /// IPN-bus watches opened again after a stream ended.
    pub rewatches: u64,
    /// ts-init only: each phase's state.
    pub phases: BTreeMap<String, PhaseState>,
    /// ts-init only: exits per phase and exit code (128+N for signal N).
    pub exits: BTreeMap<String, BTreeMap<i32, u64>>,
    /// ts-init only: `Startup complete` was logged.
    pub startup_complete: bool,
    /// ts-init only: what startup is waiting for.
    pub activity: String,
}

impl Report {
    /// This report's verdict at `now_ms`: `Err(one-line reason)` when it makes the node
    /// unhealthy. A stopped reporter and ts-init itself (judged by [`Report::startup_complete`])
    /// never do here.
    pub fn verdict(&self, now_ms: u64) -> Result<(), String> {
        if self.stopped || self.name == INIT_NAME {
            return Ok(());
        }
        if let Some(since) = self.in_progress_since_ms {
            let running = now_ms.saturating_sub(since);
            if running > STUCK_AFTER_MS {
                return Err(format!(
                    "{}: reconcile running for {:.1}s (stuck?)",
                    self.name,
                    running as f64 / 1000.0
                ));
            }
        }
        match &self.last {
            None => Err(format!("{}: first reconcile not finished yet", self.name)),
            Some(o) if !o.ok => Err(format!(
                "{}: last reconcile failed: {}",
                self.name, o.reason
            )),
            Some(_) => Ok(()),
        }
    }

    /// Whether the writer is known to be gone (only answerable in the same PID namespace).
    pub fn writer_gone(&self) -> bool {
        if self.stopped || self.pid == 0 || self.pid_ns.is_none() || self.pid_ns != pid_ns() {
            return false;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        matches!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
}

/// Milliseconds on `CLOCK_MONOTONIC`.
pub fn now_ms() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

fn pid_ns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// `text` on one line, control characters replaced, at most [`MAX_REASON`] characters.
pub fn one_line(text: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON + 1)
        .collect();
    if out.chars().count() > MAX_REASON {
        out = out.chars().take(MAX_REASON - 1).collect();
        out.push('…');
    }
    out
}

/// The file name for reporter `name` ("ts-kubestate preflight" → `ts-kubestate-preflight.json`).
pub fn file_name(name: &str) -> String {
    // Anything but letters, digits, '-' and '_' becomes '-'.
    let safe = name.replace(|c: char| !(c.is_ascii_alphanumeric() || c == '_'), "-");
    format!("{safe}.json")
}

/// Every report in `dir` (unreadable or foreign files are skipped), sorted by name.
pub fn read_all(dir: &Path) -> Vec<Report> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut reports: Vec<Report> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
        .filter_map(|e| {
            let text = std::fs::read(e.path()).ok()?;
            // A report is a few hundred bytes; anything huge is not ours.
            (text.len() < 1 << 20)
                .then(|| serde_json::from_slice::<Report>(&text).ok())
                .flatten()
        })
        .collect();
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}

/// Removes every report in `dir` (ts-init does this at the start of a boot, so a restarted
/// container's leftovers are never read as this boot's).
pub fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_str().is_some_and(|n| n.contains(".json")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// This process's reporter.
struct Reporter {
    path: PathBuf,
    report: Mutex<Report>,
    /// A write failure is logged once, not on every reconcile.
    warned: std::sync::atomic::AtomicBool,
}

static REPORTER: OnceLock<Reporter> = OnceLock::new();

/// Starts reporting as `name` when `settings` enable the local endpoint; otherwise (and on a
/// second call) does nothing. The directory is created if needed; a failure to write is logged
/// once and never stops the phase (ts-health then sees no report and says so).
pub fn init(settings: &crate::Settings, name: &str) {
    let Some(dir) = &settings.local.status_dir else {
        return;
    };
    if let Err(e) = create_dir(dir) {
        tracing::warn!(
            "cannot create the status directory {} for ts-health: {e}; /healthz will not see {name}",
            dir.display()
        );
    }
    let reporter = Reporter {
        path: dir.join(file_name(name)),
        report: Mutex::new(Report {
            name: name.to_string(),
            pid: std::process::id(),
            pid_ns: pid_ns(),
            ..Report::default()
        }),
        warned: Default::default(),
    };
    if REPORTER.set(reporter).is_ok() {
        update(|_| {});
    }
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// Changes the report and writes it out (nothing without [`init`]).
fn update(change: impl FnOnce(&mut Report)) {
    let Some(r) = REPORTER.get() else { return };
    let mut report = r.report.lock().unwrap_or_else(|p| p.into_inner());
    change(&mut report);
    if let Err(e) = write_atomic(&r.path, &report) {
        if !r.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "cannot write {} for ts-health: {e}; /healthz will report this phase as silent",
                r.path.display()
            );
        }
    }
}

fn write_atomic(path: &Path, report: &Report) -> std::io::Result<()> {
    let body = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

pub fn reconcile_started() {
    update(|r| r.in_progress_since_ms = Some(now_ms()));
}

/// The reconcile in progress succeeded.
pub fn reconcile_succeeded() {
    reconcile_ended(true, String::new());
}

/// The reconcile in progress failed because of `reason` (cut to one line).
pub fn reconcile_failed(reason: &dyn Display) {
    reconcile_ended(false, one_line(&reason.to_string()));
}

fn reconcile_ended(ok: bool, reason: String) {
    update(|r| {
        r.in_progress_since_ms = None;
        r.successes += u64::from(ok);
        r.failures += u64::from(!ok);
        let at_ms = now_ms();
        r.last = Some(Outcome { ok, reason, at_ms });
    });
}

/// Runs one reconcile, reporting its start and its outcome: the hook a watcher puts around
/// the future that applies its state.
pub async fn track<T, E: Display>(reconcile: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    reconcile_started();
    let result = reconcile.await;
    match &result {
        Ok(_) => reconcile_succeeded(),
        Err(e) => reconcile_failed(e),
    }
    result
}

/// The process ends cleanly (SIGTERM, nothing left to do): not counted any more.
pub fn stopped() {
    update(|r| {
        r.stopped = true;
        r.in_progress_since_ms = None;
    });
}

/// One Kubernetes request answered with `code` (`"200"`, `"500"`, `"timeout"`, `"error"`).
pub fn count_kube_request(code: &str) {
    update(|r| *r.kube_requests.entry(code.to_string()).or_default() += 1);
}

/// An IPN-bus watch was opened again after its stream ended.
pub fn note_rewatch() {
    update(|r| r.rewatches += 1);
}

/// ts-init: `phase` is now in `state`.
pub fn set_phase(phase: &str, state: PhaseState) {
    update(|r| {
        r.phases.insert(phase.to_string(), state);
    });
}

/// ts-init: `phase` exited with `code` (128+N for signal N).
pub fn record_exit(phase: &str, code: i32) {
    update(|r| {
        *r.exits
            .entry(phase.to_string())
            .or_default()
            .entry(code)
            .or_default() += 1;
    });
}

/// ts-init: what startup waits for now (shown in `/healthz` until startup is complete).
pub fn set_activity(activity: &str) {
    update(|r| r.activity = activity.to_string());
}

/// ts-init: `Startup complete` was logged.
pub fn set_startup_complete() {
    update(|r| {
        r.startup_complete = true;
        r.activity.clear();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str) -> Report {
        Report {
            name: name.into(),
            ..Report::default()
        }
    }

    #[test]
    fn verdicts() {
        let mut r = report("ts-proxy-rules");
        assert_eq!(
            r.verdict(10_000),
            Err("ts-proxy-rules: first reconcile not finished yet".into())
        );
        r.last = Some(Outcome {
            ok: true,
            reason: String::new(),
            at_ms: 1,
        });
        assert_eq!(r.verdict(10_000), Ok(()));
        // A reconcile in progress keeps the last outcome until it runs too long.
        r.in_progress_since_ms = Some(9_000);
        assert_eq!(r.verdict(10_000), Ok(()));
        assert_eq!(
            r.verdict(10_500),
            Err("ts-proxy-rules: reconcile running for 1.5s (stuck?)".into())
        );
        r.in_progress_since_ms = None;
        r.last = Some(Outcome {
            ok: false,
            reason: "iptables exit status 1".into(),
            at_ms: 2,
        });
        assert_eq!(
            r.verdict(10_000),
            Err("ts-proxy-rules: last reconcile failed: iptables exit status 1".into())
        );
        r.stopped = true;
        assert_eq!(
            r.verdict(10_000),
            Ok(()),
            "a stopped watcher does not count"
        );
        assert_eq!(report(INIT_NAME).verdict(0), Ok(()));
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(one_line(" a\nb\tc\u{1b}[31m "), "a b c [31m");
        let long = one_line(&"x".repeat(1000));
        assert_eq!(long.chars().count(), MAX_REASON);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn files_round_trip_and_clear() {
        let dir = std::env::temp_dir().join(format!("tsboot-status-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_dir(&dir).expect("dir");
        let mut r = report("ts-kubestate preflight");
        r.kube_requests.insert("201".into(), 3);
        r.phases.insert("ts-prep".into(), PhaseState::Done);
        r.exits.entry("ts-prep".into()).or_default().insert(0, 1);
        let path = dir.join(file_name(&r.name));
        assert!(path.ends_with("ts-kubestate-preflight.json"));
        write_atomic(&path, &r).expect("write");
        std::fs::write(dir.join("junk.json"), "not json").expect("junk");
        std::fs::write(dir.join("README"), "x").expect("other file");
        assert_eq!(read_all(&dir), vec![r]);
        clear(&dir);
        assert!(read_all(&dir).is_empty());
        assert!(dir.join("README").exists(), "only reports are removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writer_liveness_is_checked_only_in_the_same_pid_namespace() {
        let mut r = report("w");
        r.pid = std::process::id();
        r.pid_ns = pid_ns();
        assert!(!r.writer_gone(), "this process is alive");
        r.pid_ns = r.pid_ns.map(|n| n + 1);
        assert!(!r.writer_gone(), "another namespace: unknown, not gone");
    }
}
