//! tsboot's own series in the Prometheus text exposition format (version 0.0.4), appended to
//! tailscaled's user metrics on `/metrics`. Every family has `# HELP` and `# TYPE`, counters end
//! in `_total`, label values are escaped, and every name starts with `tsboot_`, so the result
//! never collides with tailscaled's `tailscaled_*` families. The README lists each series.

use crate::verdict::NodeView;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use ts_common::status::{PhaseState, Report, INIT_NAME};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one scrape reports.
pub struct Snapshot<'a> {
    pub node: &'a NodeView,
    pub reports: &'a [Report],
    pub healthy: bool,
    /// tailscaled answered the user-metrics request.
    pub usermetrics_up: bool,
    pub now_ms: u64,
}

struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = match labels.is_empty() {
            true => writeln!(self.out, "{} {value}", self.name),
            false => writeln!(self.out, "{}{{{}}} {value}", self.name, labels.join(",")),
        };
    }
}

/// Starts a family; its type follows from the name, as counters (only they) end in `_total`.
fn family<'a>(out: &'a mut String, name: &'static str, help: &str) -> Family<'a> {
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// tsboot's series for `snap`.
pub fn render(snap: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let init = snap.reports.iter().find(|r| r.name == INIT_NAME);
    let watchers: Vec<&Report> = snap
        .reports
        .iter()
        .filter(|r| r.name != INIT_NAME)
        .collect();

    family(
        &mut out,
        "tsboot_healthy",
        "1 when /healthz answers 200: the node is Running with a tailnet IP, startup is complete and every running watcher's last reconcile succeeded.",
    )
    .sample(&[], u8::from(snap.healthy));
    family(
        &mut out,
        "tsboot_node_running",
        "1 while tailscaled reports the Running state on its IPN bus.",
    )
    .sample(&[], u8::from(snap.node.running()));
    family(
        &mut out,
        "tsboot_node_tailnet_addresses",
        "Tailnet addresses of this node, as tailscaled last reported them.",
    )
    .sample(&[], snap.node.addresses.len());
    family(
        &mut out,
        "tsboot_tailscaled_usermetrics_up",
        "1 when tailscaled answered /localapi/v0/usermetrics for this scrape (its series precede these).",
    )
    .sample(&[], u8::from(snap.usermetrics_up));

    if let Some(init) = init {
        family(
            &mut out,
            "tsboot_startup_complete",
            "1 once ts-init logged Startup complete.",
        )
        .sample(&[], u8::from(init.startup_complete));
        let mut f = family(
            &mut out,
            "tsboot_phase_state",
            "State of each phase ts-init started: 1 for the current state, 0 for the others.",
        );
        for (phase, current) in &init.phases {
            for state in PhaseState::ALL {
                f.sample(
                    &[("phase", phase), ("state", state.name())],
                    u8::from(state == *current),
                );
            }
        }
        let mut f = family(
            &mut out,
            "tsboot_phase_exits_total",
            "Exits of the phases ts-init started, by exit code (128+N for signal N).",
        );
        for (phase, codes) in &init.exits {
            for (code, n) in codes {
                f.sample(&[("phase", phase), ("code", &code.to_string())], n);
            }
        }
    }

    let mut f = family(
        &mut out,
        "tsboot_reconciles_total",
        "Finished reconciles of each watcher, by outcome.",
    );
    for w in &watchers {
        f.sample(&[("watcher", &w.name), ("outcome", "success")], w.successes);
        f.sample(&[("watcher", &w.name), ("outcome", "failure")], w.failures);
    }
    let mut f = family(
        &mut out,
        "tsboot_watcher_healthy",
        "1 when the watcher's last reconcile succeeded and none has been running for more than a second.",
    );
    for w in watchers.iter().filter(|w| !w.stopped) {
        f.sample(
            &[("watcher", &w.name)],
            u8::from(w.verdict(snap.now_ms).is_ok()),
        );
    }
    let mut f = family(
        &mut out,
        "tsboot_reconcile_in_progress_seconds",
        "How long the watcher's current reconcile has been running (0 when none is).",
    );
    for w in watchers.iter().filter(|w| !w.stopped) {
        let secs = w
            .in_progress_since_ms
            .map_or(0.0, |s| snap.now_ms.saturating_sub(s) as f64 / 1000.0);
        f.sample(&[("watcher", &w.name)], secs);
    }
    let mut f = family(
        &mut out,
        "tsboot_kube_requests_total",
        "Kubernetes API requests by phase and HTTP status code (timeout: no answer in time; error: no HTTP answer).",
    );
    for w in &watchers {
        for (code, n) in &w.kube_requests {
            f.sample(&[("phase", &w.name), ("code", code)], n);
        }
    }
    let mut rewatches: BTreeMap<&str, u64> = watchers
        .iter()
        .filter(|w| w.rewatches > 0)
        .map(|w| (w.name.as_str(), w.rewatches))
        .collect();
    rewatches.insert("ts-health", snap.node.rewatches);
    let mut f = family(
        &mut out,
        "tsboot_ipn_bus_rewatches_total",
        "IPN-bus watches opened again after tailscaled ended or cut a stream, by phase.",
    );
    for (phase, n) in rewatches {
        f.sample(&[("phase", phase)], n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts_common::status::Outcome;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn families_have_help_and_type_and_samples() {
        let node = NodeView {
            connected: true,
            state: Some(ts_localapi::notify::BackendState::Running),
            addresses: vec!["100.64.0.1/32".parse().expect("prefix")],
            rewatches: 2,
            ..NodeView::default()
        };
        let mut init = Report {
            name: INIT_NAME.into(),
            startup_complete: true,
            ..Report::default()
        };
        init.phases.insert("ts-prep".into(), PhaseState::Done);
        init.exits.entry("ts-prep".into()).or_default().insert(0, 1);
        let mut kube = Report {
            name: "ts-kubestate".into(),
            successes: 3,
            failures: 1,
            last: Some(Outcome {
                ok: true,
                ..Outcome::default()
            }),
            ..Report::default()
        };
        kube.kube_requests.insert("500".into(), 2);
        let text = render(&Snapshot {
            node: &node,
            reports: &[init, kube],
            healthy: true,
            usermetrics_up: false,
            now_ms: 1,
        });
        for line in [
            "tsboot_healthy 1",
            "tsboot_node_tailnet_addresses 1",
            "tsboot_tailscaled_usermetrics_up 0",
            "tsboot_phase_state{phase=\"ts-prep\",state=\"done\"} 1",
            "tsboot_phase_state{phase=\"ts-prep\",state=\"running\"} 0",
            "tsboot_phase_exits_total{phase=\"ts-prep\",code=\"0\"} 1",
            "tsboot_reconciles_total{watcher=\"ts-kubestate\",outcome=\"failure\"} 1",
            "tsboot_watcher_healthy{watcher=\"ts-kubestate\"} 1",
            "tsboot_kube_requests_total{phase=\"ts-kubestate\",code=\"500\"} 2",
            "tsboot_ipn_bus_rewatches_total{phase=\"ts-health\"} 2",
            "# TYPE tsboot_reconciles_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
        assert!(text.ends_with('\n'));
    }
}
