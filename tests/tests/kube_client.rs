//! `ts_kube::KubeClient` against the fake kube-apiserver over real TLS: the wire format
//! of every call, certificate verification, and the shared retry for each status.

use std::path::Path;
use std::time::Duration;
use ts_common::Settings;
use ts_kube::{secret_value, KubeClient, KubeError, RetryPolicy, SERVICEACCOUNT_DIR};
use tsboot_tests::fake_apiserver::{tls, FakeApiServer, FakeConfig, Match, DEFAULT_TOKEN};
use tsboot_tests::harness::temp_dir;

const NS: &str = "default";
const SECRET: &str = "tailscale";

fn settings(root: &Path, api: &FakeApiServer) -> Settings {
    let mut vars = api.kube_env();
    vars.push(("TS_TEST_ONLY_ROOT".into(), root.display().to_string()));
    Settings::from_vars(vars).expect("settings")
}

/// A server with the reference's secret and a client with its service account.
async fn setup(tag: &str) -> (FakeApiServer, KubeClient, std::path::PathBuf) {
    let api = FakeApiServer::start(FakeConfig::default())
        .await
        .expect("start fake apiserver");
    api.set_secret(
        NS,
        SECRET,
        &[("authkey", "tskey-key"), ("_machinekey", "m")],
    );
    let root = temp_dir(tag);
    api.write_serviceaccount(&root, DEFAULT_TOKEN)
        .expect("service account");
    let client = KubeClient::from_settings(&settings(&root, &api)).expect("client");
    (api, client, root)
}

/// A short policy so the failure tests stay quick; the shape (attempts, doubling) is the
/// default's.
fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        request_timeout: Duration::from_millis(300),
        budget: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn tls_round_trip_with_ip_certificate_and_exact_wire_format() {
    let (api, client, _root) = setup("kube-roundtrip").await;
    assert_eq!(client.namespace(), NS);
    assert_eq!(client.server(), format!("https://127.0.0.1:{}", api.port()));

    assert!(client.access_review("get", SECRET).await.expect("ssar"));
    let secret = client
        .get_secret(SECRET)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        secret_value(&secret, "authkey").as_deref(),
        Some("tskey-key")
    );
    client
        .patch_string_data(
            SECRET,
            &[
                ("device_id", "myID"),
                ("device_fqdn", "test-node.test.ts.net"),
            ],
        )
        .await
        .expect("patch");
    client.remove_key(SECRET, "authkey").await.expect("remove");

    let reqs = api.requests();
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    for r in &reqs {
        assert_eq!(r.authorization(), Some("Bearer bearer_token"), "{r:?}");
        assert_eq!(r.header("accept"), Some("application/json"), "{r:?}");
        assert!(r.status.is_some_and(|s| (200..300).contains(&s)), "{r:?}");
    }
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].path,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    );
    assert_eq!(
        reqs[0].body,
        r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"name":"tailscale","namespace":"default","resource":"secrets","verb":"get"}}}"#
    );
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].path, "/api/v1/namespaces/default/secrets/tailscale");
    assert_eq!(reqs[1].content_type(), None);
    assert_eq!(reqs[2].method, "PATCH");
    assert_eq!(
        reqs[2].path,
        "/api/v1/namespaces/default/secrets/tailscale?fieldManager=tailscale-container"
    );
    assert_eq!(
        reqs[2].content_type(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(
        reqs[2].body,
        "{\"stringData\":{\"device_fqdn\":\"test-node.test.ts.net\",\"device_id\":\"myID\"}}\n"
    );
    assert_eq!(reqs[3].content_type(), Some("application/json-patch+json"));
    assert_eq!(
        reqs[3].body,
        "[{\"op\":\"remove\",\"path\":\"/data/authkey\"}]\n"
    );
    assert_eq!(
        reqs[3].path,
        "/api/v1/namespaces/default/secrets/tailscale?fieldManager=tailscale-container"
    );

    let data = api.secret(NS, SECRET).expect("secret");
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["_machinekey", "device_fqdn", "device_id"]);
    assert_eq!(data["device_fqdn"], "test-node.test.ts.net");
}

#[tokio::test]
async fn a_server_outside_the_ca_is_refused_with_a_clear_error() {
    let api = FakeApiServer::start(FakeConfig::default())
        .await
        .expect("start");
    let root = temp_dir("kube-otherca");
    tsboot_tests::fake_apiserver::write_serviceaccount(
        &root,
        DEFAULT_TOKEN,
        &tls::other_ca_pem(),
        NS,
    )
    .expect("sa");
    let client = KubeClient::from_settings(&settings(&root, &api))
        .expect("client")
        .with_policy(quick());
    let err = client
        .access_review("get", SECRET)
        .await
        .expect_err("untrusted server must fail");
    let msg = err.to_string();
    assert!(matches!(err, KubeError::Tls { .. }), "{msg}");
    assert!(!err.is_transient(), "TLS trust is not retried: {msg}");
    assert!(msg.contains("CA"), "{msg}");
    assert!(msg.contains("ca.crt"), "{msg}");
    assert!(msg.contains("verification is never skipped"), "{msg}");
    // The handshake failed, so no HTTP request reached the server.
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn ipv6_service_host_is_bracketed_and_verified() {
    let api = match FakeApiServer::start_on(FakeConfig::default(), "[::1]:0".parse().expect("addr"))
        .await
    {
        Ok(api) => api,
        Err(e) => {
            eprintln!(
                "SKIPPED ipv6_service_host_is_bracketed_and_verified: cannot bind [::1]: {e}"
            );
            return;
        }
    };
    api.set_secret(NS, SECRET, &[]);
    let root = temp_dir("kube-v6");
    api.write_serviceaccount(&root, DEFAULT_TOKEN).expect("sa");
    let client = KubeClient::from_settings(&settings(&root, &api)).expect("client");
    assert_eq!(client.server(), format!("https://[::1]:{}", api.port()));
    assert!(client.get_secret(SECRET).await.expect("get").is_some());
}

#[tokio::test]
async fn status_500_twice_then_success_is_retried() {
    let (api, client, _root) = setup("kube-500").await;
    let client = client.with_policy(quick());
    api.fail_next(Match::secret_patch(), 500, 2);
    client
        .patch_string_data(SECRET, &[("device_id", "x")])
        .await
        .expect("third attempt succeeds");
    let statuses: Vec<Option<u16>> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    assert_eq!(api.secret(NS, SECRET).expect("s")["device_id"], "x");
}

#[tokio::test]
async fn status_409_and_429_are_transient() {
    let (api, client, _root) = setup("kube-409").await;
    let client = client.with_policy(quick());
    api.fail_next(Match::secret_get(), 409, 1);
    api.fail_next(Match::secret_get(), 429, 1);
    assert!(client.get_secret(SECRET).await.expect("get").is_some());
    let statuses: Vec<Option<u16>> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(409), Some(429), Some(200)]);
}

#[tokio::test]
async fn persistent_5xx_gives_up_after_the_bounded_attempts() {
    let (api, client, _root) = setup("kube-500x").await;
    let client = client.with_policy(quick());
    api.fail_next(Match::secret_get(), 503, 100);
    let err = client.get_secret(SECRET).await.expect_err("gives up");
    assert_eq!(err.status_code(), Some(503));
    assert!(err.is_transient());
    assert_eq!(api.requests().len(), 4, "exactly the policy's attempts");
    let msg = err.to_string();
    assert!(msg.contains("4 attempt"), "{msg}");
    assert!(msg.contains("\"tailscale\""), "{msg}");
}

#[tokio::test]
async fn status_401_rereads_a_rotated_token_and_retries_once() {
    let (api, client, root) = setup("kube-401").await;
    // The token on disk rotates; the server only accepts the new one from now on. The
    // client was built with the old token, so only a re-read can succeed.
    api.set_tokens(&["rotated-token"]);
    std::fs::write(
        root.join(SERVICEACCOUNT_DIR).join("token"),
        "rotated-token\n",
    )
    .expect("rotate");
    assert!(client.access_review("patch", SECRET).await.expect("ssar"));
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "token re-read before the request: {reqs:#?}");
    assert_eq!(reqs[0].authorization(), Some("Bearer rotated-token"));

    // A 401 (the server rotated first, the file a moment later): one retry, re-reading.
    api.clear_requests();
    api.fail_next(Match::secret_get(), 401, 1);
    assert!(client.get_secret(SECRET).await.expect("get").is_some());
    let statuses: Vec<Option<u16>> = api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(401), Some(200)]);

    // A token the server never accepts: exactly one retry, then a 401 error naming the fix.
    api.clear_requests();
    api.set_tokens(&["something-else"]);
    let err = client.get_secret(SECRET).await.expect_err("401");
    assert_eq!(err.status_code(), Some(401));
    assert_eq!(api.requests().len(), 2);
    let msg = err.to_string();
    assert!(msg.contains("401 Unauthorized"), "{msg}");
    assert!(msg.contains("token"), "{msg}");
}

#[tokio::test]
async fn status_403_on_patch_is_not_retried_and_names_verb_and_secret() {
    let (api, client, _root) = setup("kube-403").await;
    api.deny("patch", "secrets");
    let err = client
        .patch_string_data(SECRET, &[("device_id", "x")])
        .await
        .expect_err("403");
    assert_eq!(err.status_code(), Some(403));
    assert!(!err.is_transient());
    assert_eq!(api.requests().len(), 1);
    let msg = err.to_string();
    for want in [
        "PATCH",
        "403 Forbidden",
        "\"patch\" permission",
        "secret \"tailscale\"",
        "RBAC",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    assert!(!api.secret(NS, SECRET).expect("s").contains_key("device_id"));
}

#[tokio::test]
async fn status_404_secret_is_none_for_get_and_an_error_for_patch() {
    let (api, client, _root) = setup("kube-404").await;
    api.delete_secret(NS, SECRET);
    assert!(client
        .get_secret(SECRET)
        .await
        .expect("404 is Ok(None)")
        .is_none());
    let err = client
        .patch_string_data(SECRET, &[("device_id", "x")])
        .await
        .expect_err("404 patch");
    assert_eq!(err.status_code(), Some(404));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn status_422_on_remove_of_a_missing_key() {
    let (api, client, _root) = setup("kube-422").await;
    client
        .remove_key(SECRET, "authkey")
        .await
        .expect("first remove");
    let err = client
        .remove_key(SECRET, "authkey")
        .await
        .expect_err("second remove");
    assert_eq!(err.status_code(), Some(422));
    assert!(!err.is_transient());
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn a_request_that_never_answers_times_out_within_the_budget() {
    let (api, client, _root) = setup("kube-hang").await;
    let policy = RetryPolicy {
        request_timeout: Duration::from_millis(200),
        budget: Duration::from_millis(700),
        ..quick()
    };
    let client = client.with_policy(policy);
    api.hang_next(Match::ssar("get"), 100);
    let err = client
        .access_review("get", SECRET)
        .await
        .expect_err("timeout");
    assert!(matches!(err, KubeError::Timeout { .. }), "{err}");
    assert!(err.is_transient());
    let n = api.requests().len();
    assert!(
        (2..=4).contains(&n),
        "retried within the budget, got {n} attempts"
    );
    assert!(err.to_string().contains("no answer"), "{err}");
}

#[tokio::test]
async fn ssar_denied_is_allowed_false() {
    let (api, client, _root) = setup("kube-ssar").await;
    api.allow_verbs(&["get", "update"]);
    assert!(client.access_review("get", SECRET).await.expect("get"));
    assert!(client
        .access_review("update", SECRET)
        .await
        .expect("update"));
    assert!(!client.access_review("patch", SECRET).await.expect("patch"));
}

#[tokio::test]
async fn a_slow_answer_beyond_the_request_timeout_is_retried() {
    let (api, client, _root) = setup("kube-slow").await;
    let policy = RetryPolicy {
        request_timeout: Duration::from_millis(200),
        ..quick()
    };
    let client = client.with_policy(policy);
    // Slower than the timeout once; the retry gets a prompt answer.
    api.delay_next(Match::ssar("get"), Duration::from_millis(1500), 1);
    assert!(client.access_review("get", SECRET).await.expect("retried"));
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    // A delay shorter than the timeout is just served.
    api.clear_requests();
    api.delay_next(Match::secret_get(), Duration::from_millis(20), 1);
    assert!(client.get_secret(SECRET).await.expect("get").is_some());
    assert_eq!(api.requests().len(), 1);
}

#[tokio::test]
async fn a_token_gone_for_a_moment_is_a_transient_fault_within_the_budget() {
    let (api, client, root) = setup("kube-token-gone").await;
    let token = root.join(SERVICEACCOUNT_DIR).join("token");
    std::fs::remove_file(&token).expect("remove the token");
    // Back while the call is still retrying: the default policy waits 100, 200, 400 ms
    // between its attempts, within a 5 s budget.
    let restore = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(&token, DEFAULT_TOKEN)
    });
    let found = client
        .get_secret(SECRET)
        .await
        .expect("the call retries until the token is back");
    assert!(found.is_some());
    restore.await.expect("join").expect("restore the token");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "no request without a token: {reqs:#?}");
    assert_eq!(reqs[0].authorization(), Some("Bearer bearer_token"));
}

#[tokio::test]
async fn a_token_that_stays_gone_fails_after_the_bounded_retry_naming_the_file() {
    let (api, client, root) = setup("kube-token-lost").await;
    let client = client.with_policy(quick());
    std::fs::remove_file(root.join(SERVICEACCOUNT_DIR).join("token")).expect("remove");
    let err = client.get_secret(SECRET).await.expect_err("no token");
    let msg = err.to_string();
    assert!(msg.contains("serviceaccount/token"), "{msg}");
    assert!(msg.contains("4 attempt"), "{msg}");
    assert!(api.requests().is_empty());
}
