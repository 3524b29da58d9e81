//! Logging for every tsboot binary: one line per event on stderr.
//!
//! Text (default) keeps the reference's shape so operators' greps keep working:
//! `boot: 2023/01/03 15:17:44 ts-init: Startup complete, waiting for shutdown signal`
//! (the message always ends the line; fields, if any, come before it in `[k=v]` form).
//! `TS_LOG_FORMAT=json` gives one JSON object per line. The level comes from `RUST_LOG`
//! (`info` by default; `warn`, `debug`, `ts_init=trace,info`, ...). Times are UTC.

use crate::settings::LogFormat;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global logger for binary `bin`, writing each line to stderr as it comes. Safe
/// to call more than once (later calls are ignored), so a `main` may log a settings error
/// before the real format is known.
pub fn init(bin: &'static str, format: LogFormat) {
    install(bin, format, Sink::Direct);
}

/// How many lines [`init_nonblocking`] holds while stderr is not being read; beyond them lines
/// are dropped and counted.
pub const QUEUE_LINES: usize = 256;

/// Like [`init`], but the caller never waits for stderr: lines go to a bounded queue that one
/// writer thread empties. When whoever reads the container's log stalls, the writer blocks,
/// not the caller; once the queue is full further lines are dropped and counted, and the
/// writer says `N log lines dropped` as soon as it can write again. For ts-init, PID 1, whose
/// event loop must keep reaping and handling signals whatever happens to its log. Call it after
/// the signal mask is set: the writer thread inherits it. Falls back to [`init`] if no thread
/// can be started.
pub fn init_nonblocking(bin: &'static str, format: LogFormat) {
    match Queue::start(bin, format) {
        Ok(queue) => install(bin, format, Sink::Queue(queue)),
        Err(_) => init(bin, format),
    }
}

/// Waits until the lines queued by [`init_nonblocking`] are written, at most `limit` (a
/// stalled stderr must not keep a process from exiting). Without a queue there is nothing to
/// wait for.
pub fn flush(limit: std::time::Duration) {
    if let Some(shared) = QUEUE.get() {
        shared.wait_idle(limit);
    }
}

fn install(bin: &'static str, format: LogFormat, sink: Sink) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(LineLayer { bin, format, sink }.with_filter(filter))
        .try_init();
}

/// Where finished lines go.
enum Sink {
    /// Written at once, one `write` per line.
    Direct,
    /// Handed to the writer thread; see [`init_nonblocking`].
    Queue(Queue),
}

/// The state the writer thread and the loggers share.
struct Shared {
    /// Lines dropped since the last report.
    dropped: AtomicU64,
    /// Lines queued or being written.
    pending: Mutex<usize>,
    idle: Condvar,
}

impl Shared {
    fn done_one(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self, limit: std::time::Duration) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .idle
            .wait_timeout_while(pending, limit, |n| *n > 0)
            .map_err(|e| e.into_inner());
    }
}

/// The one queue of a process ([`flush`] finds it here).
static QUEUE: OnceLock<Arc<Shared>> = OnceLock::new();

struct Queue {
    tx: SyncSender<String>,
    shared: Arc<Shared>,
}

impl Queue {
    fn start(bin: &'static str, format: LogFormat) -> std::io::Result<Queue> {
        let (tx, rx) = sync_channel::<String>(QUEUE_LINES);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            pending: Mutex::new(0),
            idle: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-writer".into())
            // It formats one short line at a time: a small stack is plenty.
            .stack_size(64 * 1024)
            .spawn(move || {
                for line in rx {
                    write_line(line.as_bytes());
                    let dropped = writer.dropped.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let report = Fields {
                            message: format!(
                                "{dropped} log lines dropped (stderr was not being read)"
                            ),
                            extra: Vec::new(),
                        };
                        write_line(format_line(bin, format, Level::WARN, &report).as_bytes());
                    }
                    writer.done_one();
                }
            })?;
        let _ = QUEUE.set(Arc::clone(&shared));
        Ok(Queue { tx, shared })
    }

    fn push(&self, line: String) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match self.tx.try_send(line) {
            Ok(()) => *pending += 1,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One `write` per line so lines from several processes sharing stderr do not interleave.
fn write_line(line: &[u8]) {
    let _ = std::io::stderr().lock().write_all(line);
}

struct LineLayer {
    bin: &'static str,
    format: LogFormat,
    sink: Sink,
}

#[derive(Default)]
struct Fields {
    message: String,
    extra: Vec<(&'static str, String)>,
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => self.extra.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let line = format_line(self.bin, self.format, level, &fields);
        match &self.sink {
            Sink::Direct => write_line(line.as_bytes()),
            Sink::Queue(queue) => queue.push(line),
        }
    }
}

fn format_line(bin: &str, format: LogFormat, level: Level, fields: &Fields) -> String {
    match format {
        LogFormat::Text => text_line(bin, level, fields),
        LogFormat::Json => json_line(bin, level, fields),
    }
}

fn text_line(bin: &str, level: Level, fields: &Fields) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil_time(now.as_secs());
    let mut line = format!("boot: {y:04}/{mo:02}/{d:02} {h:02}:{mi:02}:{s:02} {bin}: ");
    match level {
        Level::ERROR => line.push_str("error: "),
        Level::WARN => line.push_str("warning: "),
        Level::DEBUG => line.push_str("debug: "),
        Level::TRACE => line.push_str("trace: "),
        Level::INFO => {}
    }
    for (k, v) in &fields.extra {
        let _ = write!(line, "[{k}={v}] ");
    }
    line.push_str(&fields.message);
    line.push('\n');
    line
}

fn json_line(bin: &str, level: Level, fields: &Fields) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, s) = civil_time(now.as_secs());
    let ms = now.subsec_millis();
    let mut obj = serde_json::json!({
        "time": format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z"),
        "level": level.as_str().to_ascii_lowercase(),
        "bin": bin,
        "msg": fields.message,
    });
    for (k, v) in &fields.extra {
        obj[*k] = v.as_str().into();
    }
    let mut line = obj.to_string();
    line.push('\n');
    line
}

/// Most characters of one piece of outside text a log line carries.
pub const OUTSIDE_MAX: usize = 300;

/// Text from outside tsboot (an API server's message, tailscaled's `ErrMessage` or error
/// answers, a command's stderr) made fit for one log line: trimmed, control characters
/// (newlines included) escaped so the text can neither end the line nor forge the next one,
/// and cut after [`OUTSIDE_MAX`] characters, saying how much was left out.
pub fn outside(text: &str) -> String {
    outside_max(text, OUTSIDE_MAX)
}

/// [`outside`] with another bound, for a shorter excerpt.
pub fn outside_max(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut out = String::new();
    let end = text
        .char_indices()
        .nth(max)
        .map_or(text.len(), |(at, _)| at);
    for c in text[..end].chars() {
        // U+2028/U+2029 end a line for some log viewers although they are not controls.
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if end < text.len() {
        let _ = write!(out, "… ({} more bytes)", text.len() - end);
    }
    out
}

/// UTC calendar time of a Unix timestamp (Howard Hinnant's days-from-civil inverse).
pub fn civil_time(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_known_dates() {
        assert_eq!(civil_time(0), (1970, 1, 1, 0, 0, 0));
        // 2023-01-03 15:17:44 UTC, the reference's example line.
        assert_eq!(civil_time(1_672_759_064), (2023, 1, 3, 15, 17, 44));
        // Leap day.
        assert_eq!(civil_time(1_709_164_800), (2024, 2, 29, 0, 0, 0));
    }

    #[test]
    fn text_line_ends_with_message() {
        let fields = Fields {
            message: "Startup complete, waiting for shutdown signal".into(),
            extra: vec![("phase", "boot".into())],
        };
        let line = text_line("ts-init", Level::INFO, &fields);
        assert!(line.starts_with("boot: "), "{line}");
        assert!(line.contains(" ts-init: "), "{line}");
        assert!(
            line.ends_with(" Startup complete, waiting for shutdown signal\n"),
            "{line}"
        );
    }

    #[test]
    fn json_line_is_one_object() {
        let fields = Fields {
            message: "hello \"world\"".into(),
            extra: vec![],
        };
        let line = json_line("ts-auth", Level::WARN, &fields);
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["bin"], "ts-auth");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "hello \"world\"");
    }

    #[test]
    fn outside_text_is_one_bounded_line() {
        assert_eq!(outside("  etag mismatch\n"), "etag mismatch");
        assert_eq!(outside("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(
            outside("bad\nboot: forged\r\tx"),
            "bad\\nboot: forged\\r\\tx"
        );
        assert_eq!(outside("a\u{2028}b"), "a\\u{2028}b");
        let long = format!("é{}", "x".repeat(10 << 20));
        let cut = outside(&long);
        assert!(cut.starts_with("éxx"), "{cut}");
        assert!(
            cut.ends_with(&format!("… ({} more bytes)", long.len() - 2 - 299)),
            "{cut}"
        );
        assert_eq!(
            cut.chars().count(),
            OUTSIDE_MAX + "… (10485461 more bytes)".chars().count()
        );
        assert!(!outside(&format!("{long}\n")).contains('\n'));
        assert_eq!(outside_max("abcdef", 3), "abc… (3 more bytes)");
        assert_eq!(outside_max("\u{fffd}x", 10), "\u{fffd}x");
    }
}
