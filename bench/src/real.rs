//! Against containerboot (#18 goal 4): runs the workspace's `real-sidebyside` (real tailscaled,
//! real containerboot, headscale, in the real-peer lab of `tsboot_tests::real`; no packet leaves
//! the machine) in kernel mode with `TS_DEST_IP`, plus its orphan flood, and reads its table.

use crate::goals::Goals;
use std::process::Command;

/// The median (the first number) of a "median (min–max)" cell.
fn median(cell: &str) -> Option<f64> {
    cell.trim()
        .trim_matches('*')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn row<'a>(table: &'a str, first: &str, wrapper: &str) -> Option<Vec<&'a str>> {
    table.lines().find_map(|l| {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        (cells.len() > 3 && cells[1] == first && cells[2] == wrapper).then_some(cells)
    })
}

pub fn run(runs: usize, orphans: usize, goals: &mut Goals) -> String {
    let bin = tsboot_tests::bin_path("real-sidebyside");
    let out = Command::new(&bin)
        .args(["--runs", &runs.to_string(), "--mode", "kernel"])
        .args(["--orphans", &orphans.to_string()])
        .output();
    let table = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            let why = match other {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .last()
                        .unwrap_or(""),
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
                Err(e) => format!("{}: {e}", bin.display()),
            };
            for (id, what) in [
                ("4a", "exec → Running, tsboot / containerboot"),
                ("4b", "resident memory, tsboot / containerboot"),
                ("4c", "orphans reaped by tsboot vs left by containerboot"),
            ] {
                goals.not_measured(id, what, format!("real-sidebyside failed: {why}"));
            }
            return format!("### Against containerboot (real daemon)\n\nSKIPPED: {why}\n\n");
        }
    };
    let mut report = format!(
        "### Against containerboot: real tailscaled, headscale, kernel mode with TS_DEST_IP, {runs} interleaved runs each (`real-sidebyside`)\n\n{table}\n"
    );
    let (ts, cb) = (
        row(&table, "kernel", "tsboot"),
        row(&table, "kernel", "containerboot"),
    );
    if let (Some(ts), Some(cb)) = (ts, cb) {
        // (goal, column of the table, what, unit, decimals, limit of the ratio)
        for (id, col, what, unit, prec, limit) in [
            (
                "4a",
                3,
                "exec → Running, tsboot / containerboot (medians, same run, interleaved)",
                "ms",
                1,
                1.0,
            ),
            (
                "4b",
                5,
                "resident memory of all wrapper processes, tsboot / containerboot (tailscaled excluded)",
                "KiB",
                0,
                0.5,
            ),
        ] {
            if let (Some(a), Some(b)) = (median(ts[col]), median(cb[col])) {
                let measured = format!("{a:.prec$} / {b:.prec$} {unit} = {:.2}×", a / b);
                goals.add(id, what, measured, a / b <= limit);
            }
        }
    }
    let left = |w: &str| {
        row(&table, "PID 1 of a PID namespace", w).and_then(|c| {
            c[4].trim_matches('*')
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
    };
    if let (Some(t), Some(c)) = (left("tsboot"), left("containerboot")) {
        goals.add(
            "4c",
            format!("{orphans} orphans re-parented to PID 1: zombies left 2 s later, tsboot vs containerboot"),
            format!("tsboot {t}, containerboot {c}"),
            t == 0 && c > 0,
        );
    }
    report.push('\n');
    report
}
