//! The goals of issue #18, side by side with what this run measured: every scenario adds its
//! rows here, and the report opens with the table (a goal whose scenario did not run says so).

use crate::stats::Table;

/// One goal: what it is, the target, the figure measured, and whether it was met (`None`: not
/// measured in this run, with the reason in `measured`).
pub struct Goal {
    pub id: &'static str,
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Every goal of #18, one per line: id | what | target. The target is said here only; a
/// scenario reports its own figure and verdict, and a goal no scenario measured still gets its
/// row.
const ALL: &str = "\
1a | ts-init VmRSS / tini VmRSS, same run, full configuration | ≤ 1.0×
1b | ts-init VmRSS / tini-static VmRSS, same run, full configuration | ≤ 1.2×
1c | all resident tsboot processes, VmRSS summed, full configuration | ≤ 6 MiB
1d | all binaries together | ≤ 12 MB (12×10⁶ B)
1e | ts-init binary | ≤ 1 MB (10⁶ B)
1f | each per-phase image | ≤ 4 MB (4×10⁶ B)
2a | bus bytes per boot and per self change, new daemon, largest tailnet | ≤ 64 KiB
2b | CPU per self change, largest tailnet | ≤ 1 ms
2c | watcher peak RSS, old daemon sending full netmaps, largest tailnet | ≤ 8 MiB
3 | boot: exec → `Startup complete`, median, full configuration | ≤ 15 ms
4a | exec → Running, tsboot / containerboot | ≤ 1.0×
4b | resident memory, tsboot / containerboot | ≤ 0.5×
4c | 10,000 orphans: reaped by tsboot, zombies under containerboot | tsboot reaps all; containerboot leaves them
5a | flapping 1,000 changes/s for 10 s: apiserver requests per second | ≤ 10/s
5b | flapping 1,000 changes/s for 10 s: iptables executions per second | ≤ 10/s
5c | flapping: final state exact | exact";

/// The goals of [`ALL`] as (id, what, target).
fn all() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    ALL.lines().filter_map(|line| {
        let mut cells = line.splitn(3, " | ");
        Some((cells.next()?, cells.next()?, cells.next()?))
    })
}

/// The target of goal `id`.
fn target(id: &str) -> String {
    all().find(|(goal, _, _)| *goal == id).map_or_else(
        || format!("goal {id} is not in the list"),
        |(_, _, t)| t.to_string(),
    )
}

#[derive(Default)]
pub struct Goals(Vec<Goal>);

impl Goals {
    pub fn add(
        &mut self,
        id: &'static str,
        what: impl Into<String>,
        measured: impl Into<String>,
        met: bool,
    ) {
        self.0.push(Goal {
            id,
            what: what.into(),
            target: target(id),
            measured: measured.into(),
            met: Some(met),
        });
    }

    /// A goal this run could not measure, and why.
    pub fn not_measured(
        &mut self,
        id: &'static str,
        what: impl Into<String>,
        why: impl Into<String>,
    ) {
        self.0.push(Goal {
            id,
            what: what.into(),
            target: target(id),
            measured: why.into(),
            met: None,
        });
    }

    pub fn render(&self) -> String {
        let missing: Vec<Goal> = all()
            .filter(|(id, _, _)| !self.0.iter().any(|g| g.id == *id))
            .map(|(id, what, target)| Goal {
                id,
                what: what.to_string(),
                target: target.to_string(),
                measured: "no scenario measured it in this run (left out by --only, or none in this tree yet)".into(),
                met: None,
            })
            .collect();
        let mut goals: Vec<&Goal> = self.0.iter().chain(&missing).collect();
        goals.sort_by_key(|g| g.id);
        let mut t = Table::new(&["#18 goal", "what", "target", "measured", "verdict"]);
        for g in goals {
            t.row(vec![
                g.id.to_string(),
                g.what.clone(),
                g.target.clone(),
                g.measured.clone(),
                match g.met {
                    Some(true) => "**met**".into(),
                    Some(false) => "**missed**".into(),
                    None => "not measured".into(),
                },
            ]);
        }
        format!(
            "## Goals of #18, side by side with this run\n\n{}\n",
            t.render()
        )
    }
}
