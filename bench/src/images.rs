//! Image sizes (#18 goal 1: each per-phase image ≤ 4 MB), from `docker/images.sh sizes`: the
//! images built by podman from docker/Dockerfile (`bash docker/images.sh build`, which CI runs).

use crate::goals::Goals;
use std::path::Path;
use std::process::Command;

/// The per-phase images (everything but the drop-in `tsboot`), and what each is built on.
const PHASE_IMAGES: [(&str, &str); 5] = [
    ("ts-prep", "scratch"),
    (
        "ts-proxy-rules",
        "an iptables base (here: the Debian stand-in; upstream: alpine)",
    ),
    ("ts-kubestate", "scratch"),
    ("ts-serve", "scratch"),
    ("ts-health", "scratch"),
];

pub fn run(goals: &mut Goals) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/images.sh");
    let out = Command::new("bash").arg(&script).arg("sizes").output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string(),
                Err(e) => e.to_string(),
            };
            for (t, _) in PHASE_IMAGES {
                goals.not_measured(
                    "1f",
                    format!("{t} image"),
                    format!("images not built (bash docker/images.sh build): {why}"),
                );
            }
            return format!(
                "### Image sizes\n\nSKIPPED: `docker/images.sh sizes` failed: {why}\n\n"
            );
        }
    };
    let size = |target: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(target))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|b| b.parse().ok())
    };
    let mut report = String::from(
        "### Image sizes (podman, built offline by `docker/images.sh build`)\n\n```text\n",
    );
    report.push_str(&text);
    report.push_str("```\n\n");
    let adds = text
        .lines()
        .find(|l| l.starts_with("ts-proxy-rules adds "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|b| b.parse::<u64>().ok());
    for (t, base) in PHASE_IMAGES {
        let Some(bytes) = size(t) else {
            goals.not_measured("1f", format!("{t} image"), "not in `images.sh sizes`");
            continue;
        };
        let note = if t == "ts-proxy-rules" {
            adds.map(|a| format!("; tsboot adds {a} B to its base"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        goals.add(
            "1f",
            format!("{t} image (on {base})"),
            format!("{bytes} B{note}"),
            bytes as f64 <= 4e6,
        );
    }
    report
}
