//! `ts-kubestate preflight` (the real binary) against the fake kube-apiserver: the result-fd
//! protocol, the reference's fatal messages, one test per applicable cell of the status table
//! (SelfSubjectAccessReview and the authkey GET rows), and the auth key kept out of every log.

use std::path::PathBuf;
use ts_kube::SERVICEACCOUNT_DIR;
use tsboot_tests::fake_apiserver::{
    tls, write_serviceaccount, FakeApiServer, FakeConfig, Match, RecordedRequest, DEFAULT_TOKEN,
};
use tsboot_tests::fake_tailscaled_ctl::require_bin;
use tsboot_tests::harness::temp_dir;
use tsboot_tests::harness::{Proc, Spawn};

const NS: &str = "default";
const SECRET: &str = "tailscale";
const KEY: &str = "tskey-key-0123456789abcdef";
/// base64 of KEY, as it travels in the secret's `data`.
fn key_b64() -> String {
    tsboot_tests::fake_apiserver::patch::b64(KEY.as_bytes())
}

const RESULT_FD: i32 = 5;
const MISSING_GET: &str = "Some Kubernetes permissions are missing, please check your RBAC configuration: missing get permission on secret \"tailscale\"";
const NO_PATCH_FATAL: &str = "authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions on the secret to manage the authkey.";
const NO_KEY_LOG: &str = "No authkey found in kube secret and TS_AUTHKEY not provided, login will be interactive if needed.";

struct Setup {
    api: FakeApiServer,
    root: PathBuf,
}

impl Setup {
    async fn new(tag: &str) -> Setup {
        let api = FakeApiServer::start(FakeConfig::default())
            .await
            .expect("fake apiserver");
        api.set_secret(NS, SECRET, &[("authkey", KEY), ("_machinekey", "m")]);
        let root = temp_dir(tag);
        api.write_serviceaccount(&root, DEFAULT_TOKEN).expect("sa");
        Setup { api, root }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.api.kube_env();
        env.push(("TS_TEST_ONLY_ROOT".into(), self.root.display().to_string()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Runs `ts-kubestate preflight --result-fd 5`; returns (exit, result line, stderr).
    fn preflight(&self, extra: &[(&str, &str)]) -> (i32, String, String) {
        let mut p = Proc::spawn(
            &require_bin("ts-kubestate"),
            &["preflight", "--result-fd", &RESULT_FD.to_string()],
            Spawn {
                env: self.env(extra),
                result_fd: Some(RESULT_FD),
                ..Spawn::default()
            },
        );
        let code = p.wait_exit();
        let result = p.result();
        (code, result, p.log())
    }

    fn ssar_verbs(&self) -> Vec<String> {
        self.api
            .requests()
            .iter()
            .filter_map(RecordedRequest::ssar_verb)
            .collect()
    }

    fn secret_gets(&self) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/secrets/"))
            .count()
    }

    fn assert_no_write(&self) {
        let reqs = self.api.requests();
        assert!(
            reqs.iter()
                .all(|r| r.method == "GET" || r.path.contains("selfsubjectaccessreviews")),
            "the preflight never writes: {reqs:#?}"
        );
    }
}

fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY), "the auth key leaked:\n{text}");
    assert!(
        !text.contains(&key_b64()),
        "the auth key (base64) leaked:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_from_the_secret_goes_to_the_result_fd_only() {
    let s = Setup::new("pf-ok").await;
    let (code, result, stderr) = s.preflight(&[("RUST_LOG", "trace")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        result,
        format!("{{\"can_patch\":true,\"authkey\":\"{KEY}\"}}\n")
    );
    assert!(
        stderr.contains("Using authkey found in kube secret"),
        "{stderr}"
    );
    assert_no_key(&stderr);
    assert_eq!(s.ssar_verbs(), ["get", "update", "patch"]);
    assert_eq!(s.secret_gets(), 1);
    s.assert_no_write();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hand_the_outcome_is_logged_redacted() {
    let s = Setup::new("pf-hand").await;
    let mut p = Proc::spawn(
        &require_bin("ts-kubestate"),
        &["preflight"],
        Spawn {
            env: s.env(&[("RUST_LOG", "trace")]),
            ..Spawn::default()
        },
    );
    assert_eq!(p.wait_exit(), 0);
    let stderr = p.log();
    assert!(
        stderr.contains("authkey from the secret: <redacted>"),
        "{stderr}"
    );
    assert_no_key(&stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_but_never_writes_and_never_shows_the_key() {
    let s = Setup::new("pf-explain").await;
    for mode in [
        &["preflight", "--explain"][..],
        &["watch", "--explain"][..],
        &["--explain"][..],
    ] {
        let out = std::process::Command::new(require_bin("ts-kubestate"))
            .args(mode)
            .env_clear()
            .envs(s.env(&[("RUST_LOG", "trace"), ("TS_AUTH_ONCE", "true")]))
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode:?}: {stderr}");
        assert_no_key(&stdout);
        assert_no_key(&stderr);
        assert!(stdout.contains("selfsubjectaccessreviews"), "{stdout}");
        if mode[0] == "preflight" {
            assert!(
                stdout.contains("GET /api/v1/namespaces/default/secrets/tailscale"),
                "{stdout}"
            );
            assert!(stdout.contains("\"authkey\":\"<redacted>\""), "{stdout}");
        } else {
            assert!(stdout.contains("application/json-patch+json"), "{stdout}");
            assert!(stdout.contains("device_fqdn"), "{stdout}");
        }
    }
    s.assert_no_write();
    // Still there: nothing was removed.
    assert_eq!(s.api.secret(NS, SECRET).expect("s")["authkey"], KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_without_a_client_shows_the_calls_and_what_is_undecided() {
    let s = Setup::new("pf-explain-nosa").await;
    std::fs::remove_file(s.root.join(SERVICEACCOUNT_DIR).join("token")).expect("rm");
    let out = std::process::Command::new(require_bin("ts-kubestate"))
        .args(["preflight", "--explain"])
        .env_clear()
        .envs(s.env(&[]))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("cannot be built"), "{stdout}");
    assert!(stdout.contains("selfsubjectaccessreviews"), "{stdout}");
    assert!(stdout.contains("answer not obtained"), "{stdout}");
    assert!(stdout.contains("the preflight would fail"), "{stdout}");
    assert!(s.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_with_invalid_configuration_exits_2() {
    let s = Setup::new("pf-explain-bad").await;
    let mut env = s.env(&[]);
    env.retain(|(k, _)| k != "KUBERNETES_SERVICE_PORT_HTTPS");
    env.push(("KUBERNETES_SERVICE_PORT_HTTPS".into(), "not-a-port".into()));
    let out = std::process::Command::new(require_bin("ts-kubestate"))
        .args(["preflight", "--explain"])
        .env_clear()
        .envs(env)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KUBERNETES_SERVICE_PORT_HTTPS"));
    assert!(s.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_never_in_logs_even_when_it_fails() {
    // Found without patch permission: fatal, and the key still appears nowhere.
    let s = Setup::new("pf-nopatch").await;
    s.api.deny("patch", "secrets");
    let (code, result, stderr) = s.preflight(&[("RUST_LOG", "trace")]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result, "", "no result line on failure");
    assert!(stderr.trim_end().ends_with(NO_PATCH_FATAL), "{stderr}");
    assert_no_key(&stderr);
    s.assert_no_write();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_denies_get_is_fatal_with_the_reference_message() {
    let s = Setup::new("pf-noget").await;
    s.api.deny("get", "secrets");
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result, "");
    assert!(stderr.trim_end().ends_with(MISSING_GET), "{stderr}");
    // Fatal before the patch check and before any secret access.
    assert_eq!(s.ssar_verbs(), ["get", "update"]);
    assert_eq!(s.secret_gets(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_denies_get_and_update_joins_like_multierr() {
    let s = Setup::new("pf-noget-noupdate").await;
    s.api.deny("get", "secrets");
    s.api.deny("update", "secrets");
    let (code, _, stderr) = s.preflight(&[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Some Kubernetes permissions are missing, please check your RBAC configuration: multiple errors:\n\tmissing get permission on secret \"tailscale\"\n\tmissing update permission on secret \"tailscale\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_denies_patch_with_ts_authkey_gives_can_patch_false_and_no_key_taken() {
    let s = Setup::new("pf-nopatch-key").await;
    s.api.deny("patch", "secrets");
    let (code, result, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":false,\"authkey\":null}\n");
    // Read once, as today's image does, only to see that it exists; its authkey is not taken.
    assert_eq!(s.secret_gets(), 1);
    assert_eq!(
        s.ssar_verbs(),
        ["get", "update", "patch"],
        "it exists: no create check"
    );
    assert!(!stderr.contains("tskey-env"), "{stderr}");
    s.assert_no_write();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_403_is_logged_and_get_update_count_as_allowed_patch_as_not() {
    let s = Setup::new("pf-ssar403").await;
    s.api.fail_next(Match::ssar("get"), 403, 1);
    s.api.fail_next(Match::ssar("patch"), 403, 1);
    // TS_AUTHKEY set so that can_patch=false is not fatal.
    let (code, result, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":false,\"authkey\":null}\n");
    assert!(
        stderr.contains("error checking get permission on secret tailscale: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("error checking patch permission on secret tailscale: "),
        "{stderr}"
    );
    assert!(stderr.contains("403 Forbidden"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_404_and_422_are_like_403() {
    let s = Setup::new("pf-ssar404").await;
    s.api.fail_next(Match::ssar("update"), 404, 1);
    s.api.fail_next(Match::ssar("patch"), 422, 1);
    let (code, result, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":false,\"authkey\":null}\n");
    assert!(
        stderr.contains("error checking update permission"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error checking patch permission"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_500_twice_then_success_is_retried() {
    let s = Setup::new("pf-ssar500").await;
    s.api.fail_next(Match::ssar("patch"), 500, 2);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        result,
        format!("{{\"can_patch\":true,\"authkey\":\"{KEY}\"}}\n")
    );
    assert_eq!(s.ssar_verbs(), ["get", "update", "patch", "patch", "patch"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_transient_forever_then_same_as_403() {
    let s = Setup::new("pf-ssar503").await;
    s.api.fail_next(Match::ssar("patch"), 503, 100);
    let (code, result, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":false,\"authkey\":null}\n");
    assert!(
        stderr.contains("error checking patch permission"),
        "{stderr}"
    );
    let patches = s.ssar_verbs().iter().filter(|v| *v == "patch").count();
    assert_eq!(patches, 4, "bounded: the default policy's 4 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_401_with_a_rotated_token_on_disk_is_retried_with_the_new_token() {
    let s = Setup::new("pf-ssar401").await;
    // The server rotated; the file has the new token; the first SSAR still gets a 401
    // (as if sent just before the rotation), the retry re-reads the file.
    s.api.set_tokens(&["new-token"]);
    std::fs::write(s.root.join(SERVICEACCOUNT_DIR).join("token"), "new-token\n").expect("rotate");
    s.api.fail_next(Match::ssar("get"), 401, 1);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        result,
        format!("{{\"can_patch\":true,\"authkey\":\"{KEY}\"}}\n")
    );
    let reqs = s.api.requests();
    assert_eq!(reqs[0].status, Some(401));
    assert!(reqs[1..].iter().all(
        |r| r.authorization() == Some("Bearer new-token") && r.status.is_some_and(|c| c < 300)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssar_that_never_answers_is_bounded_then_like_403() {
    let s = Setup::new("pf-ssarhang").await;
    s.api.hang_next(Match::ssar("get"), 100);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("error checking get permission"), "{stderr}");
    assert!(stderr.contains("no answer from the API server"), "{stderr}");
    assert_eq!(
        result,
        format!("{{\"can_patch\":true,\"authkey\":\"{KEY}\"}}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_404_means_no_key() {
    let s = Setup::new("pf-get404").await;
    s.api.delete_secret(NS, SECRET);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":true,\"authkey\":null}\n");
    assert!(stderr.contains(NO_KEY_LOG), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_absent_from_the_secret_means_no_key() {
    let s = Setup::new("pf-nokey").await;
    s.api.set_secret(NS, SECRET, &[("_machinekey", "m")]);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":true,\"authkey\":null}\n");
    assert!(stderr.contains(NO_KEY_LOG), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_403_is_fatal_naming_verb_and_secret() {
    let s = Setup::new("pf-get403").await;
    s.api.fail_next(Match::secret_get(), 403, 1);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result, "");
    for want in [
        "Getting authkey from kube secret: ",
        "403 Forbidden",
        "\"get\" permission",
        "secret \"tailscale\"",
    ] {
        assert!(stderr.contains(want), "{want:?} missing:\n{stderr}");
    }
    assert_eq!(s.secret_gets(), 1, "403 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_401_after_one_retry_is_fatal_showing_401() {
    let s = Setup::new("pf-get401").await;
    s.api.fail_next(Match::secret_get(), 401, 2);
    let (code, _, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Getting authkey from kube secret: "),
        "{stderr}"
    );
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
    assert_eq!(s.secret_gets(), 2, "exactly one retry after a 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_401_with_rotated_token_succeeds() {
    let s = Setup::new("pf-get401ok").await;
    s.api.fail_next(Match::secret_get(), 401, 1);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        result,
        format!("{{\"can_patch\":true,\"authkey\":\"{KEY}\"}}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_500_twice_then_success() {
    let s = Setup::new("pf-get500").await;
    s.api.fail_next(Match::secret_get(), 500, 2);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        result,
        format!("{{\"can_patch\":true,\"authkey\":\"{KEY}\"}}\n")
    );
    assert_eq!(s.secret_gets(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_409_persistent_is_fatal_after_the_bounded_retry() {
    let s = Setup::new("pf-get409").await;
    s.api.fail_next(Match::secret_get(), 409, 100);
    let (code, _, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("409 Conflict"), "{stderr}");
    assert_eq!(s.secret_gets(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authkey_get_422_is_fatal() {
    let s = Setup::new("pf-get422").await;
    s.api.fail_next(Match::secret_get(), 422, 1);
    let (code, _, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Getting authkey from kube secret: "),
        "{stderr}"
    );
    assert!(stderr.contains("422"), "{stderr}");
    assert_eq!(s.secret_gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_in_kubernetes_or_empty_secret_name_has_nothing_to_do() {
    let s = Setup::new("pf-nok8s").await;
    let (code, result, stderr) = s.preflight(&[("TS_KUBE_SECRET", "")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":false,\"authkey\":null}\n");
    assert!(s.api.requests().is_empty());

    let mut p = Proc::spawn(
        &require_bin("ts-kubestate"),
        &["preflight", "--result-fd", "5"],
        Spawn {
            env: vec![("TS_TEST_ONLY_ROOT".into(), s.root.display().to_string())],
            result_fd: Some(5),
            ..Spawn::default()
        },
    );
    assert_eq!(p.wait_exit(), 0, "{}", p.log());
    assert_eq!(p.result(), "{\"can_patch\":false,\"authkey\":null}\n");
    assert!(p.log().contains("not running in Kubernetes"), "{}", p.log());
    assert!(s.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_service_account_token_is_fatal_naming_the_path() {
    let s = Setup::new("pf-notoken").await;
    std::fs::remove_file(s.root.join(SERVICEACCOUNT_DIR).join("token")).expect("rm");
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result, "");
    assert!(stderr.contains("serviceaccount/token"), "{stderr}");
    assert!(
        stderr.contains("mount the pod's service account token"),
        "{stderr}"
    );
    assert!(s.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_apiserver_certificate_is_fatal() {
    let s = Setup::new("pf-otherca").await;
    write_serviceaccount(&s.root, DEFAULT_TOKEN, &tls::other_ca_pem(), NS).expect("sa");
    let (code, result, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result, "");
    assert!(stderr.contains("ca.crt"), "{stderr}");
    assert!(
        stderr.contains("UnknownIssuer") || stderr.contains("certificate"),
        "{stderr}"
    );
    assert!(s.api.requests().is_empty(), "no request got through TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_flag_values_exit_2() {
    let s = Setup::new("pf-badflag").await;
    let out = std::process::Command::new(require_bin("ts-kubestate"))
        .args(["watch", "--can-patch", "maybe"])
        .env_clear()
        .envs(s.env(&[]))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--can-patch"));
    let out = std::process::Command::new(require_bin("ts-kubestate"))
        .args(["preflight", "--auth-once", "flase"])
        .env_clear()
        .envs(s.env(&[]))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TS_AUTH_ONCE"));
    assert!(s.api.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Today's image: the state secret must exist or be creatable; an OAuth client never takes the
// secret's authkey; the shutdown wait for a consistent state (`ts-kubestate settle`).

const NO_CREATE: &str =
    "Tailscale state Secret \"tailscale\" does not exist and we don't have permissions to create it";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_without_create_is_a_clear_error() {
    let s = Setup::new("pf-nocreate").await;
    s.api.delete_secret(NS, SECRET);
    s.api.deny("create", "secrets");
    let (code, result, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(result, "");
    assert!(stderr.contains(NO_CREATE), "{stderr}");
    assert!(
        stderr.contains("TS_KUBE_SECRET env var to an empty string"),
        "{stderr}"
    );
    assert_eq!(s.ssar_verbs(), ["get", "update", "patch", "create"]);
    s.assert_no_write();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_with_create_proceeds() {
    let s = Setup::new("pf-create").await;
    s.api.delete_secret(NS, SECRET);
    let (code, result, stderr) = s.preflight(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result, "{\"can_patch\":true,\"authkey\":null}\n");
    assert!(stderr.contains("tailscaled will create it"), "{stderr}");
    assert!(stderr.contains(NO_KEY_LOG), "{stderr}");
    s.assert_no_write();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_and_an_unanswerable_create_check_counts_as_not_allowed() {
    let s = Setup::new("pf-create503").await;
    s.api.delete_secret(NS, SECRET);
    s.api.fail_next(Match::ssar("create"), 503, 100);
    let (code, _, stderr) = s.preflight(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(NO_CREATE), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_client_never_takes_the_secrets_authkey() {
    for vars in [
        &[
            ("TS_CLIENT_ID", "k123"),
            ("TS_CLIENT_SECRET", "tskey-client-x"),
        ][..],
        &[("TS_CLIENT_SECRET", "tskey-client-x")],
        &[("TS_CLIENT_ID", "k123"), ("TS_ID_TOKEN", "eyJ")],
    ] {
        let s = Setup::new("pf-oauth").await;
        let (code, result, stderr) = s.preflight(vars);
        assert_eq!(code, 0, "{vars:?}: {stderr}");
        assert_eq!(
            result, "{\"can_patch\":true,\"authkey\":null}\n",
            "{vars:?}"
        );
        assert_no_key(&stderr);
        assert!(
            !stderr.contains("tskey-client-x") && !stderr.contains("eyJ"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_get_failure_without_a_key_lookup_names_the_state_secret() {
    let s = Setup::new("pf-get403-key").await;
    s.api.fail_next(Match::secret_get(), 403, 1);
    let (code, _, stderr) = s.preflight(&[("TS_AUTHKEY", "tskey-env")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Getting Tailscale state Secret: ")
            && stderr.contains("secret \"tailscale\""),
        "{stderr}"
    );
    assert!(stderr.contains("403 Forbidden"), "{stderr}");
}

fn settle(s: &Setup, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(require_bin("ts-kubestate"))
        .arg("settle")
        .args(args)
        .env_clear()
        .envs(s.env(&[]))
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_returns_at_once_on_a_consistent_or_empty_state() {
    let s = Setup::new("settle-ok").await;
    for data in [
        &[("authkey", KEY)][..],
        &[
            ("_current-profile", "profile-1"),
            ("_profiles", "{}"),
            ("_machinekey", "m"),
            ("profile-1", "{}"),
        ],
    ] {
        s.api.set_secret(NS, SECRET, data);
        let (code, stderr) = settle(&s, &["--timeout", "60s"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(!stderr.contains("Waiting for tailscaled"), "{stderr}");
    }
    s.api.delete_secret(NS, SECRET);
    let (code, stderr) = settle(&s, &["--timeout", "60s"]);
    assert_eq!(
        code, 0,
        "a missing secret holds no half-written state: {stderr}"
    );
    s.assert_no_write();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_waits_on_a_half_written_state_until_its_timeout() {
    let s = Setup::new("settle-wait").await;
    // Setup's secret holds `_machinekey` alone: half-written.
    let (code, stderr) = settle(&s, &["--timeout", "700ms"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Waiting for tailscaled to finish writing state to Secret \"tailscale\""),
        "{stderr}"
    );
    assert!(stderr.contains("still incomplete"), "{stderr}");
    assert!(s.secret_gets() >= 2, "re-read while waiting");
    s.assert_no_write();
    let (code, stderr) = settle(&s, &["--timeout", "soon"]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_does_not_wait_on_an_unreadable_secret() {
    let s = Setup::new("settle-403").await;
    s.api.deny("get", "secrets");
    let (code, stderr) = settle(&s, &["--timeout", "60s"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Error waiting for consistent state on shutdown"),
        "{stderr}"
    );
}
