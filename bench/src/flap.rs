//! Flapping (#18 goal 5): the fake tailscaled pushes `rate` self changes a second for `secs`
//! seconds to a full-configuration boot (each change flips the node's StableID, name and IPv4
//! address); the bench counts the requests the fake apiserver saw and the iptables executions
//! the fake iptables recorded, during the storm and until they stop, then checks that the final
//! state (the secret's device fields, the single DNAT rule) is exactly the last change's.

use crate::goals::Goals;
use crate::scenarios::variants_json;
use crate::setup::{count_lines, Boot, Config, Variant, DEST_IP};
use crate::sys;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the counts must stay unchanged for the system to count as settled, and the most
/// the bench waits for that after the storm.
const QUIET: Duration = Duration::from_secs(2);
const DRAIN_MAX: Duration = Duration::from_secs(300);

struct Counts {
    api: usize,
    ipt: usize,
}

fn counts(boot: &Boot) -> Counts {
    let api = boot.api.as_ref().map_or(0, |a| a.requests().len());
    // Mutating executions in the record file (which the fake tailscaled and tailscale share),
    // read-only ones (`-S`, `-C`) in its `.readonly` companion.
    let rec = std::fs::read_to_string(&boot.root.record).unwrap_or_default();
    let mutating = rec
        .lines()
        .filter(|l| l.contains("/iptables ") || l.contains("/ip6tables "))
        .count();
    let readonly = count_lines(Path::new(&format!(
        "{}.readonly",
        boot.root.record.display()
    )));
    Counts {
        api,
        ipt: mutating + readonly,
    }
}

/// The DNAT rules in the fake iptables' state.
fn dnat_rules(boot: &Boot) -> Vec<String> {
    let state = format!("{}.iptables.state", boot.root.record.display());
    Command::new(tsboot_tests::bin_path("fake-iptables"))
        .args(["-t", "nat", "-S", "PREROUTING"])
        .env_clear()
        .env("FAKE_IPTABLES_STATE", state)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A ") && l.contains("DNAT"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(variant: &Variant, rate: u32, secs: u32, goals: &mut Goals) -> Result<String, String> {
    let toggles = variants_json()?;
    // Index 1 is the state the boot ends in, so the storm starts with a no-op and ends on the
    // new identity and address: a watcher that did nothing cannot look right at the end.
    let order = [&toggles[1], &toggles[0]];
    let boot = Boot::start("flap", variant, Config::Full, false)?;
    boot.wait_startup()?;
    // Let the first reconciles' writes land before counting.
    std::thread::sleep(Duration::from_millis(300));
    let before = counts(&boot);
    let n = (rate * secs) as usize;
    let t0 = Instant::now();
    let mut late = 0usize;
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / f64::from(rate));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(10) {
            late += 1;
        }
        let (json, _, _) = order[i % 2];
        sys::control(&boot.root.control, &format!("notify {json}"))?;
    }
    let storm = t0.elapsed();
    let during = counts(&boot);
    // Drain: until neither count moved for QUIET.
    let mut last = (during.api, during.ipt);
    let mut still = Instant::now();
    let drain_start = Instant::now();
    while still.elapsed() < QUIET && drain_start.elapsed() < DRAIN_MAX {
        std::thread::sleep(Duration::from_millis(50));
        let c = counts(&boot);
        if (c.api, c.ipt) != last {
            last = (c.api, c.ipt);
            still = Instant::now();
        }
    }
    let quiet = still.elapsed() >= QUIET;
    let settled = drain_start
        .elapsed()
        .saturating_sub(if quiet { QUIET } else { Duration::ZERO });
    let after = counts(&boot);
    let (_, want_id, want_addr) = order[(n - 1) % 2];
    let secret = boot
        .api
        .as_ref()
        .and_then(|a| a.secret("tailscale"))
        .unwrap_or_default();
    let rules = dnat_rules(&boot);
    // The fixtures' two identities: nQ9xR2tCNTRL is new-name.tail1234.ts.net, n5Ez6W7CNTRL
    // test-node.tail1234.ts.net.
    let want_host = if *want_id == "nQ9xR2tCNTRL" {
        "new-name."
    } else {
        "test-node."
    };
    let secret_ok = secret.get("device_id").map(String::as_str) == Some(*want_id)
        && secret
            .get("device_fqdn")
            .is_some_and(|f| f.starts_with(want_host));
    let rules_ok = rules.len() == 1
        && rules[0].contains(&format!("-d {want_addr}"))
        && rules[0].contains(&format!("--to-destination {DEST_IP}"));
    let alive = {
        let kids: Vec<String> = boot.children().into_iter().map(|(n, _)| n).collect();
        ["ts-proxy-rules", "ts-kubestate", "ts-serve"]
            .iter()
            .all(|w| kids.iter().any(|k| k == w))
    };
    let stop = boot.stop();

    let s = storm.as_secs_f64();
    let api_storm = (during.api - before.api) as f64;
    let ipt_storm = (during.ipt - before.ipt) as f64;
    let api_all = (after.api - before.api) as f64;
    let ipt_all = (after.ipt - before.ipt) as f64;
    let whole = s + settled.as_secs_f64();
    let mut out = format!(
        "### Flapping: {n} self changes pushed at {rate}/s for {secs} s ({} build, full configuration)\n\n",
        variant.name
    );
    out.push_str(&format!(
        "Pushed in {s:.2} s ({late} pushes more than 10 ms late); {} {:.2} s after the last push.\n\n",
        if quiet { "settled" } else { "STILL BUSY (gave up)" },
        settled.as_secs_f64()
    ));
    out.push_str("| what | during the storm | per second (storm) | storm + settling | per second (storm + settling) |\n|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| apiserver requests (fake apiserver's log) | {api_storm} | {:.1} | {api_all} | {:.1} |\n",
        api_storm / s,
        api_all / whole
    ));
    out.push_str(&format!(
        "| iptables executions (fake iptables' records, mutating + read-only) | {ipt_storm} | {:.1} | {ipt_all} | {:.1} |\n\n",
        ipt_storm / s,
        ipt_all / whole
    ));
    out.push_str(&format!(
        "Final state: secret device_id={:?} device_fqdn={:?} (want {want_id}, {want_host}…): {}; DNAT rules {rules:?} (want exactly one, {want_addr} → {DEST_IP}): {}; watchers still running: {alive}; clean stop: {}\n\n",
        secret.get("device_id"),
        secret.get("device_fqdn"),
        if secret_ok { "exact" } else { "WRONG" },
        if rules_ok { "exact" } else { "WRONG" },
        stop.is_ok()
    ));
    let api_rate = api_all / whole;
    let ipt_rate = ipt_all / whole;
    goals.add(
        "5a",
        format!("flapping {rate}/s for {secs} s: apiserver requests per second (storm + settling)"),
        format!(
            "{api_rate:.1}/s ({api_all} in {whole:.1} s; {:.1}/s during the storm)",
            api_storm / s
        ),
        api_rate <= 10.0,
    );
    goals.add(
        "5b",
        format!(
            "flapping {rate}/s for {secs} s: iptables executions per second (storm + settling)"
        ),
        format!(
            "{ipt_rate:.1}/s ({ipt_all} in {whole:.1} s; {:.1}/s during the storm)",
            ipt_storm / s
        ),
        ipt_rate <= 10.0,
    );
    goals.add(
        "5c",
        "flapping: final state (secret device fields, the one DNAT rule) is the last change's",
        format!(
            "secret {}, DNAT rule {}, settled {:.1} s after the storm",
            if secret_ok { "exact" } else { "wrong" },
            if rules_ok { "exact" } else { "wrong" },
            settled.as_secs_f64()
        ),
        quiet && secret_ok && rules_ok && alive,
    );
    Ok(out)
}
