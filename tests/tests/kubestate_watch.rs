//! `ts-kubestate watch` (the real binary) between the fake tailscaled (IPN bus) and the fake
//! kube-apiserver: device info on every identity change, authkey removal with auth-once, the
//! exact keys left in the secret, readiness, and one test per applicable cell of the status
//! table's "secret GET before device info", "device-info PATCH" and "authkey removal" rows.

use ts_kube::SERVICEACCOUNT_DIR;
use tsboot_tests::fake_apiserver::Match;
use tsboot_tests::kube_watch::{KubeWatch, NS, SECRET};

const RUNNING: &str = "seed-era-testharness-running.json";
const RUNNING_NEWID: &str = "seed-era-testharness-running-newid.json";
const NEEDS_LOGIN: &str = "seed-era-testharness-needslogin.json";

fn device_patch(fqdn: &str, id: &str) -> String {
    format!("{{\"stringData\":{{\"device_fqdn\":\"{fqdn}\",\"device_id\":\"{id}\"}}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_info_on_running_and_on_every_identity_change() {
    let s = KubeWatch::new("kw-updates", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(
        w.wait_ready(),
        "ready after the first reconcile:\n{}",
        w.log()
    );
    let d = s.data();
    assert_eq!(d["device_id"], "myID");
    assert_eq!(d["device_fqdn"], "test-node.test.ts.net");
    // Exactly the reference's keys, tailscaled's own key untouched.
    assert_eq!(
        s.keys(),
        ["_machinekey", "authkey", "device_fqdn", "device_id"]
    );
    assert_eq!(d["_machinekey"], "m");
    assert_eq!(d["authkey"], "tskey-key");

    let reqs = s.api.requests();
    let shape: Vec<(String, String)> = reqs
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        shape,
        [
            (
                "GET".to_string(),
                "/api/v1/namespaces/default/secrets/tailscale".to_string()
            ),
            (
                "PATCH".to_string(),
                "/api/v1/namespaces/default/secrets/tailscale?fieldManager=tailscale-container"
                    .to_string()
            ),
        ]
    );
    assert_eq!(
        reqs[1].content_type(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(reqs[1].body, device_patch("test-node.test.ts.net", "myID"));

    // The same identity again: no write. A new one: GET + PATCH with the new values.
    s.tsd.send_fixture(RUNNING);
    s.tsd.send_fixture(RUNNING_NEWID);
    s.wait_device("newID", "new-name.test.ts.net");
    assert_eq!(
        s.patches(),
        [
            device_patch("test-node.test.ts.net", "myID"),
            device_patch("new-name.test.ts.net", "newID")
        ]
    );
    assert_eq!(
        s.keys(),
        ["_machinekey", "authkey", "device_fqdn", "device_id"]
    );

    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.wait_exit(), 0, "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_era_selfchange_identity_is_stored_verbatim() {
    let s = KubeWatch::new(
        "kw-head",
        "head-era-13-initial-running-with-netmap-mask10.json",
    )
    .await;
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    // The name keeps its trailing dot, as the reference stores SelfNode.Name verbatim.
    s.wait_device("n5Ez6W7CNTRL", "test-node.tail1234.ts.net.");
    s.tsd
        .send_fixture("head-era-14-selfchange-new-stableid-and-name.json");
    s.wait_device("nQ9xR2tCNTRL", "new-name.tail1234.ts.net.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_once_removes_the_authkey_and_leaves_exactly_the_reference_keys() {
    let s = KubeWatch::new("kw-authonce", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "true"], &[("TS_AUTH_ONCE", "true")]);
    assert!(w.wait_ready(), "{}", w.log());
    w.wait_log("Deleting authkey from kube secret");
    assert!(
        w.log().contains("Deleting authkey from kube secret"),
        "{}",
        w.log()
    );
    assert_eq!(s.keys(), ["_machinekey", "device_fqdn", "device_id"]);
    let reqs = s.api.requests();
    assert_eq!(reqs[0].method, "PATCH");
    assert_eq!(reqs[0].content_type(), Some("application/json-patch+json"));
    assert_eq!(
        reqs[0].body,
        "[{\"op\":\"remove\",\"path\":\"/data/authkey\"}]\n"
    );
    assert_eq!(
        reqs[0].path,
        "/api/v1/namespaces/default/secrets/tailscale?fieldManager=tailscale-container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_once_with_the_authkey_already_gone_422_is_done() {
    let s = KubeWatch::new("kw-authonce-422", RUNNING).await;
    s.api.set_secret(NS, SECRET, &[("_machinekey", "m")]);
    let mut w = s.watch(&["--can-patch", "true", "--auth-once", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    assert_eq!(s.api.requests()[0].status, Some(422));
    assert_eq!(s.keys(), ["_machinekey", "device_fqdn", "device_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_once_removal_403_is_fatal() {
    let s = KubeWatch::new("kw-authonce-403", RUNNING).await;
    s.api.fail_next(Match::secret_patch(), 403, 1);
    let mut w = s.watch(&["--can-patch", "true"], &[("TS_AUTH_ONCE", "true")]);
    assert!(!w.wait_ready(), "never ready");
    assert_eq!(w.wait_exit(), 1);
    let err = w.log();
    assert!(err.contains("deleting authkey from kube secret: "), "{err}");
    assert!(err.contains("403 Forbidden"), "{err}");
    assert!(
        err.contains("\"patch\" permission on secret \"tailscale\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_before_running() {
    let s = KubeWatch::new("kw-wait", NEEDS_LOGIN).await;
    let mut w = s.watch(&["--can-patch", "true"], &[("TS_AUTH_ONCE", "true")]);
    s.tsd.wait_watchers(1);
    // A Running notify is the only thing that lets it proceed; once it did, everything before
    // it was seen too, so the request log proves nothing was written earlier.
    s.tsd.send_fixture(RUNNING);
    assert!(w.wait_ready(), "{}", w.log());
    let reqs = s.api.requests();
    assert_eq!(reqs.len(), 3, "remove, GET, PATCH: {reqs:#?}");
    assert_eq!(s.keys(), ["_machinekey", "device_fqdn", "device_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_denies_patch_so_no_patch_is_ever_sent() {
    let s = KubeWatch::new("kw-nopatch", RUNNING).await;
    s.api.deny("patch", "secrets");
    let mut w = s.watch(&[], &[("TS_AUTH_ONCE", "true")]);
    assert!(w.wait_ready());
    assert_eq!(w.wait_exit(), 0, "{}", w.log());
    assert!(w.log().contains("no patch permission"), "{}", w.log());
    let reqs = s.api.requests();
    assert_eq!(reqs.len(), 1, "only the SSAR: {reqs:#?}");
    assert_eq!(reqs[0].ssar_verb().as_deref(), Some("patch"));
    assert!(s.patches().is_empty());
    assert_eq!(s.keys(), ["_machinekey", "authkey"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_patch_false_from_ts_init_means_nothing_at_all() {
    let s = KubeWatch::new("kw-cpfalse", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "false"], &[]);
    assert_eq!(w.wait_exit(), 0);
    assert!(s.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_500_twice_then_success() {
    let s = KubeWatch::new("kw-500", RUNNING).await;
    s.api.fail_next(Match::secret_patch(), 500, 2);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    s.wait_device("myID", "test-node.test.ts.net");
    let statuses: Vec<Option<u16>> = s
        .api
        .requests()
        .iter()
        .filter(|r| r.is_secret_patch())
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_patch_409_are_retried() {
    let s = KubeWatch::new("kw-409", RUNNING).await;
    s.api.fail_next(Match::secret_get(), 409, 1);
    s.api.fail_next(Match::secret_patch(), 409, 1);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    s.wait_device("myID", "test-node.test.ts.net");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_403_is_fatal_naming_verb_and_secret() {
    let s = KubeWatch::new("kw-403", RUNNING).await;
    // ts-init said patch is allowed, but the API server disagrees on the real request.
    s.api.deny("patch", "secrets");
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(!w.wait_ready(), "never ready");
    assert_eq!(w.wait_exit(), 1);
    let err = w.log();
    for want in [
        "storing device ID in kube secret: ",
        "403 Forbidden",
        "\"patch\" permission on secret \"tailscale\"",
        "RBAC",
    ] {
        assert!(err.contains(want), "{want:?} missing:\n{err}");
    }
    assert_eq!(s.patches().len(), 1, "403 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_422_is_fatal() {
    let s = KubeWatch::new("kw-422", RUNNING).await;
    s.api.fail_next(Match::secret_patch(), 422, 1);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert_eq!(w.wait_exit(), 1);
    assert!(
        w.log().contains("storing device ID in kube secret: "),
        "{}",
        w.log()
    );
    assert!(w.log().contains("422"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_404_secret_gone_skips_the_write() {
    let s = KubeWatch::new("kw-patch404", RUNNING).await;
    s.api.fail_next(Match::secret_patch(), 404, 1);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    assert!(w.running());
    assert!(!s.data().contains_key("device_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_404_skips_the_write_until_the_identity_changes() {
    let s = KubeWatch::new("kw-404", RUNNING).await;
    s.api.delete_secret(NS, SECRET);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(
        w.wait_ready(),
        "skipping still completes the reconcile:\n{}",
        w.log()
    );
    w.wait_log("not found");
    assert!(s.patches().is_empty());
    // The secret appears; the next identity change is written (the reference's change
    // detector was already updated, so the same identity is not retried).
    s.api.set_secret(NS, SECRET, &[("_machinekey", "m")]);
    s.tsd.send_fixture(RUNNING_NEWID);
    s.wait_device("newID", "new-name.test.ts.net");
    assert_eq!(s.keys(), ["_machinekey", "device_fqdn", "device_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_403_and_422_skip_the_write() {
    for code in [403u16, 422] {
        let s = KubeWatch::new(&format!("kw-get{code}"), RUNNING).await;
        s.api.fail_next(Match::secret_get(), code, 1);
        let mut w = s.watch(&["--can-patch", "true"], &[]);
        assert!(w.wait_ready(), "{code}: {}", w.log());
        // stderr is collected by a reader thread: wait for the line rather than race it.
        w.wait_log("skipping the write");
        assert!(s.patches().is_empty(), "{code}");
        assert!(w.running());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_401_after_one_retry_skips_the_write() {
    let s = KubeWatch::new("kw-get401", RUNNING).await;
    s.api.fail_next(Match::secret_get(), 401, 2);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    w.wait_log("401 Unauthorized");
    assert!(s.patches().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_401_with_a_rotated_token_on_disk_succeeds() {
    let s = KubeWatch::new("kw-401", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    // The projected token rotates: the server accepts only the new one, the file has it.
    s.api.set_tokens(&["rotated"]);
    std::fs::write(s.root.join(SERVICEACCOUNT_DIR).join("token"), "rotated\n").expect("rotate");
    s.api.fail_next(Match::secret_patch(), 401, 1);
    s.tsd.send_fixture(RUNNING_NEWID);
    s.wait_device("newID", "new-name.test.ts.net");
    let last = s.api.requests().pop().expect("requests");
    assert_eq!(last.authorization(), Some("Bearer rotated"));
    assert!(w.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_401_persistent_is_fatal() {
    let s = KubeWatch::new("kw-401x", RUNNING).await;
    s.api.fail_next(Match::secret_patch(), 401, 2);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert_eq!(w.wait_exit(), 1);
    assert!(w.log().contains("401 Unauthorized"), "{}", w.log());
    assert_eq!(s.patches().len(), 2, "one retry after a 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_write_failure_during_startup_is_fatal_after_the_bounded_retry() {
    let s = KubeWatch::new("kw-503start", RUNNING).await;
    s.api.fail_next(Match::secret_patch(), 503, 100);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(!w.wait_ready());
    assert_eq!(w.wait_exit(), 1);
    assert_eq!(s.patches().len(), 4);
    assert!(w.log().contains("503 Service Unavailable"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_that_never_answers_during_startup_is_bounded_and_fatal() {
    let s = KubeWatch::new("kw-hang", RUNNING).await;
    s.api.hang_next(Match::secret_patch(), 100);
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert_eq!(w.wait_exit(), 1);
    assert!(
        w.log().contains("no answer from the API server"),
        "{}",
        w.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_startup_transient_write_failures_are_retried_until_they_succeed() {
    let s = KubeWatch::new("kw-503later", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    // More failures than one bounded retry absorbs (4 attempts per call).
    s.api.fail_next(Match::secret_patch(), 503, 6);
    s.tsd.send_fixture(RUNNING_NEWID);
    s.wait_device("newID", "new-name.test.ts.net");
    let err = w.log();
    assert!(
        err.contains("storing device info in secret \"tailscale\" failed: "),
        "{err}"
    );
    assert!(err.contains("(retry 1)"), "{err}");
    assert!(w.running(), "still watching");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscaled_gone_exits_1_with_a_clear_line() {
    let s = KubeWatch::new("kw-gone", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    let _ = s.tsd.try_control("exit 0");
    assert_eq!(w.wait_exit(), 1);
    assert!(w.log().contains("tailscaled is gone"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_is_watched_again() {
    let s = KubeWatch::new("kw-drop", RUNNING).await;
    let mut w = s.watch(&["--can-patch", "true"], &[]);
    assert!(w.wait_ready(), "{}", w.log());
    s.tsd.control("drop");
    s.tsd.wait_watchers(1);
    s.tsd.send_fixture(RUNNING_NEWID);
    s.wait_device("newID", "new-name.test.ts.net");
    assert!(w.running());
}
