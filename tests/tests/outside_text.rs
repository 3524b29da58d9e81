//! Text that comes from outside tsboot (an API server's error message, tailscaled's
//! `ErrMessage`) reaches the log bounded and escaped: one line per event whatever it contains,
//! so a hostile or broken peer can neither flood the log with one huge line nor forge a line.

use std::path::PathBuf;
use tsboot_tests::fake_apiserver::{FakeApiServer, FakeConfig, Match, DEFAULT_TOKEN};
use tsboot_tests::fake_tailscaled_ctl::{fixture, require_bin, FakeTailscaled};
use tsboot_tests::harness::{temp_dir, Proc, Spawn};

/// A line a forger would like to see in the container's log, as ts-init writes it.
const FORGED: &str =
    "boot: 2026/01/01 00:00:00 ts-init: Startup complete, waiting for shutdown signal";

/// Far above any bounded line, far below the 10 MB of outside text.
const LONGEST_LINE: usize = 4096;

fn assert_bounded_and_unforged(stderr: &str) {
    for line in stderr.lines() {
        assert!(
            line.len() <= LONGEST_LINE,
            "a log line of {} bytes (starting {:?})",
            line.len(),
            line.chars().take(200).collect::<String>()
        );
        assert!(
            !line.starts_with(FORGED),
            "outside text forged a log line:\n{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_apiserver_message_with_newlines_is_one_bounded_line() {
    let api = FakeApiServer::start(FakeConfig::default())
        .await
        .expect("fake apiserver");
    api.set_secret("default", "tailscale", &[("authkey", "tskey-k")]);
    let root: PathBuf = temp_dir("outside-kube");
    api.write_serviceaccount(&root, DEFAULT_TOKEN).expect("sa");
    let message = format!("denied\n{FORGED}\n{}", "x".repeat(10 << 20));
    api.fail_next_with(Match::secret_get(), 403, &message, 1);

    let mut env = api.kube_env();
    env.push(("TS_TEST_ONLY_ROOT".into(), root.display().to_string()));
    let mut p = Proc::spawn(
        &require_bin("ts-kubestate"),
        &["preflight"],
        Spawn {
            env,
            ..Spawn::default()
        },
    );
    let code = p.wait_exit();
    let stderr = p.log();
    assert_eq!(code, 1, "a 403 on the authkey GET stays fatal");
    assert_bounded_and_unforged(&stderr);
    // The status handling and the message's advice are unchanged; the outside text is there,
    // escaped, and its cut is said.
    let line = stderr
        .lines()
        .find(|l| l.contains("403 Forbidden"))
        .unwrap_or_else(|| panic!("no line names the 403:\n{stderr}"));
    assert!(line.contains("\"get\" permission"), "{line}");
    assert!(line.contains("denied\\nboot: 2026/01/01"), "{line}");
    assert!(line.contains("more"), "the cut is not said: {line}");
}

#[test]
fn an_errmessage_with_a_newline_cannot_forge_a_log_line() {
    // Starting: ts-auth with TS_AUTH_ONCE waits for Running without running `tailscale up`.
    let fake = FakeTailscaled::start(
        "outside-errmsg",
        Some(&fixture("head-era-09-state-starting.json")),
        &[],
    );
    let mut p = Proc::spawn(
        &require_bin("ts-auth"),
        &[],
        Spawn {
            env: vec![
                ("TS_SOCKET".into(), fake.socket.display().to_string()),
                ("TS_AUTH_ONCE".into(), "true".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ],
            ..Spawn::default()
        },
    );
    fake.wait_watchers(1);
    let notify = serde_json::json!({
        "ErrMessage": format!("bad key\n{FORGED}\n{}", "y".repeat(64 << 10)),
    });
    fake.control(&format!("notify {notify}"));
    p.wait_log("tailscaled reported an error");
    p.signal(nix::sys::signal::Signal::SIGTERM);
    p.wait_exit();
    let stderr = p.log();
    assert_bounded_and_unforged(&stderr);
    assert!(stderr.contains("bad key\\nboot: 2026/01/01"), "{stderr}");
}
