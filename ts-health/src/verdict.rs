//! The health verdict: what `/healthz` answers, from the node as tailscaled's IPN bus shows it
//! and the reports the phases publish (see `ts_common::status`). Pure, so every state is
//! tested without a process.

use ts_common::settings::IpPrefix;
use ts_common::status::{Report, INIT_NAME};
use ts_localapi::notify::BackendState;

/// The node as the last IPN-bus messages described it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// A bus watch is open.
    pub connected: bool,
    /// Why not, when not (one line).
    pub not_connected: String,
    pub state: Option<BackendState>,
    pub addresses: Vec<IpPrefix>,
    /// Bus watches ts-health itself opened again after a stream ended or tailscaled went away.
    pub rewatches: u64,
}

impl NodeView {
    pub fn running(&self) -> bool {
        self.connected && self.state == Some(BackendState::Running)
    }
}

/// `Ok` when healthy; otherwise the one-line reason `/healthz` answers with. The checks go
/// from the node outwards, so the reason names the first thing to fix.
pub fn verdict(node: &NodeView, reports: &[Report], now_ms: u64) -> Result<(), String> {
    if !node.connected {
        return Err(if node.not_connected.is_empty() {
            "not connected to tailscaled yet".to_string()
        } else {
            format!("not connected to tailscaled: {}", node.not_connected)
        });
    }
    match node.state {
        Some(BackendState::Running) => {}
        Some(other) => return Err(format!("node is not Running (state {other})")),
        None => return Err("tailscaled has not reported its state yet".to_string()),
    }
    if node.addresses.is_empty() {
        return Err("node is Running but has no tailnet IP".to_string());
    }
    if let Some(init) = reports.iter().find(|r| r.name == INIT_NAME) {
        if !init.startup_complete {
            return Err(if init.activity.is_empty() {
                "startup not complete".to_string()
            } else {
                format!("startup not complete ({})", init.activity)
            });
        }
    }
    for report in reports {
        report.verdict(now_ms)?;
        if report.writer_gone() {
            return Err(format!(
                "{} (pid {}) is gone without stopping cleanly",
                report.name, report.pid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts_common::status::Outcome;

    fn running(addresses: &[&str]) -> NodeView {
        NodeView {
            connected: true,
            state: Some(BackendState::Running),
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("prefix"))
                .collect(),
            ..NodeView::default()
        }
    }

    fn watcher(name: &str, ok: Option<bool>) -> Report {
        Report {
            name: name.into(),
            last: ok.map(|ok| Outcome {
                ok,
                reason: if ok { String::new() } else { "boom".into() },
                at_ms: 1,
            }),
            ..Report::default()
        }
    }

    fn init(complete: bool) -> Report {
        Report {
            name: INIT_NAME.into(),
            startup_complete: complete,
            activity: if complete {
                String::new()
            } else {
                "waiting for tailscaled to reach Running".into()
            },
            ..Report::default()
        }
    }

    #[test]
    fn every_state_the_verdict_depends_on() {
        let up = running(&["100.64.0.1/32"]);
        let done = [init(true), watcher("ts-proxy-rules", Some(true))];
        assert_eq!(verdict(&up, &done, 5000), Ok(()));

        let cases: Vec<(NodeView, Vec<Report>, &str)> = vec![
            (
                NodeView::default(),
                vec![],
                "not connected to tailscaled yet",
            ),
            (
                NodeView {
                    not_connected: "no socket".into(),
                    ..NodeView::default()
                },
                vec![],
                "not connected to tailscaled: no socket",
            ),
            (
                NodeView {
                    connected: true,
                    ..NodeView::default()
                },
                vec![],
                "tailscaled has not reported its state yet",
            ),
            (
                NodeView {
                    connected: true,
                    state: Some(BackendState::NeedsLogin),
                    ..NodeView::default()
                },
                done.to_vec(),
                "node is not Running (state NeedsLogin)",
            ),
            (
                running(&[]),
                done.to_vec(),
                "node is Running but has no tailnet IP",
            ),
            (
                up.clone(),
                vec![init(false)],
                "startup not complete (waiting for tailscaled to reach Running)",
            ),
            (
                up.clone(),
                vec![init(true), watcher("ts-kubestate", None)],
                "ts-kubestate: first reconcile not finished yet",
            ),
            (
                up.clone(),
                vec![
                    init(true),
                    watcher("ts-kubestate", Some(true)),
                    watcher("ts-proxy-rules", Some(false)),
                ],
                "ts-proxy-rules: last reconcile failed: boom",
            ),
        ];
        for (node, reports, want) in cases {
            assert_eq!(verdict(&node, &reports, 5000), Err(want.to_string()));
        }
    }

    #[test]
    fn a_stuck_reconcile_turns_unhealthy_after_a_second() {
        let up = running(&["100.64.0.1/32"]);
        let mut w = watcher("ts-proxy-rules", Some(true));
        w.in_progress_since_ms = Some(10_000);
        let reports = [init(true), w];
        assert_eq!(verdict(&up, &reports, 10_900), Ok(()));
        assert_eq!(
            verdict(&up, &reports, 11_200),
            Err("ts-proxy-rules: reconcile running for 1.2s (stuck?)".into())
        );
    }

    #[test]
    fn without_ts_init_only_the_node_and_watchers_count() {
        let up = running(&["100.64.0.1/32"]);
        assert_eq!(verdict(&up, &[], 0), Ok(()));
        let mut stopped = watcher("ts-kubestate", None);
        stopped.stopped = true;
        assert_eq!(verdict(&up, &[stopped], 0), Ok(()));
    }
}
