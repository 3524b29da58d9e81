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
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global logger for binary `bin`. Safe to call more than once (later calls are
/// ignored), so a `main` may log a settings error before the real format is known.
pub fn init(bin: &'static str, format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(LineLayer { bin, format }.with_filter(filter))
        .try_init();
}

struct LineLayer {
    bin: &'static str,
    format: LogFormat,
}

#[derive(Default)]
struct Fields {
    message: String,
    extra: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.extra.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.extra.push((field.name(), format!("{value:?}")));
        }
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let line = match self.format {
            LogFormat::Text => text_line(self.bin, level, &fields),
            LogFormat::Json => json_line(self.bin, level, &fields),
        };
        // One write per line so lines from several processes sharing stderr do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
    let mut obj = serde_json::Map::new();
    obj.insert(
        "time".into(),
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            now.subsec_millis()
        )
        .into(),
    );
    obj.insert("level".into(), level.as_str().to_ascii_lowercase().into());
    obj.insert("bin".into(), bin.into());
    obj.insert("msg".into(), fields.message.clone().into());
    for (k, v) in &fields.extra {
        obj.insert((*k).to_string(), v.clone().into());
    }
    let mut line = serde_json::Value::Object(obj).to_string();
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
fn civil_time(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
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
