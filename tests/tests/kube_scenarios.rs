//! The Kubernetes scenarios of the reference's `main_test.go` (the README's boot order), through the real
//! ts-init, ts-kubestate and the fake apiserver over TLS, for each message era.

use std::time::Duration;
use tsboot_tests::harness::{rec, ApiServer, Era, Root, ERAS};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";
const KUBE_TAILSCALED: &str =
    "--socket=/tmp/tailscaled.sock --state=kube:tailscale --statedir=/tmp --tun=userspace-networking";
const UP_WITH_KEY: &str =
    "--socket=/tmp/tailscaled.sock up --accept-dns=false --authkey=tskey-key --reset";
const SECRET_WITH_KEY: &str =
    r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key"}}]}"#;

fn env(root: &Root, era: &Era, api: &ApiServer, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = root.era_env(era);
    env.extend(api.env.iter().cloned());
    let root_str = root.dir.display().to_string();
    for (k, v) in extra {
        env.push((k.to_string(), v.replace("{root}", &root_str)));
    }
    env
}

fn stop(init: &mut tsboot_tests::harness::Proc) {
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    assert!(
        !init.log().contains("tskey-key"),
        "auth key in the log:\n{}",
        init.log()
    );
}

#[test]
fn kube_storage() {
    for era in &ERAS {
        let root = Root::new(&format!("kube_storage-{}", era.name));
        let api = ApiServer::start(&root, SECRET_WITH_KEY);
        let mut init = root.start_init(&env(&root, era, &api, &[]), &[]);
        root.expect_records(&[
            rec("tailscaled", KUBE_TAILSCALED),
            rec("tailscale", UP_WITH_KEY),
        ]);
        init.expect_log(" Using authkey found in kube secret");
        init.expect_log(STARTUP);
        api.expect_secret(
            "tailscale",
            &[
                ("authkey", "tskey-key"),
                ("device_fqdn", era.fqdn),
                ("device_id", era.stable_id),
            ],
        );
        stop(&mut init);
    }
}

#[test]
fn kube_disk_storage() {
    for era in &ERAS {
        let root = Root::new(&format!("kube_disk_storage-{}", era.name));
        let api = ApiServer::start(&root, SECRET_WITH_KEY);
        let extra = [
            ("TS_KUBE_SECRET", ""),
            ("TS_STATE_DIR", "{root}/tmp"),
            ("TS_AUTHKEY", "tskey-key"),
        ];
        let mut init = root.start_init(&env(&root, era, &api, &extra), &[]);
        root.expect_records(&[
            rec(
                "tailscaled",
                "--socket=/tmp/tailscaled.sock --statedir=/tmp --tun=userspace-networking",
            ),
            rec("tailscale", UP_WITH_KEY),
        ]);
        init.expect_log(STARTUP);
        api.expect_secret("tailscale", &[("authkey", "tskey-key")]);
        assert!(
            api.requests().is_empty(),
            "no kube calls at all, got {:#?}",
            api.requests()
        );
        stop(&mut init);
    }
}

#[test]
fn kube_storage_no_patch() {
    for era in &ERAS {
        let root = Root::new(&format!("kube_storage_no_patch-{}", era.name));
        let api = ApiServer::start(
            &root,
            r#"{"secrets":[{"name":"tailscale"}],"deny":[{"verb":"patch"}]}"#,
        );
        let mut init = root.start_init(&env(&root, era, &api, &[("TS_AUTHKEY", "tskey-key")]), &[]);
        root.expect_records(&[
            rec("tailscaled", KUBE_TAILSCALED),
            rec("tailscale", UP_WITH_KEY),
        ]);
        init.expect_log(STARTUP);
        api.expect_secret("tailscale", &[]);
        assert!(
            !api.requests().iter().any(|r| r.contains("\"PATCH\"")),
            "a PATCH without patch permission: {:#?}",
            api.requests()
        );
        stop(&mut init);
    }
}

#[test]
fn kube_storage_auth_once() {
    for era in &ERAS {
        let root = Root::new(&format!("kube_storage_auth_once-{}", era.name));
        let api = ApiServer::start(&root, SECRET_WITH_KEY);
        let mut env = env(&root, era, &api, &[("TS_AUTH_ONCE", "true")]);
        // tailscaled starts logged out and asks for a login only after it is watched.
        let no_state = root.dir.join("no-state.json");
        std::fs::write(&no_state, r#"{"Version":"","State":0}"#).expect("initial state");
        env.retain(|(k, _)| k != "FAKE_TAILSCALED_INITIAL");
        env.push((
            "FAKE_TAILSCALED_INITIAL".into(),
            no_state.display().to_string(),
        ));
        let mut init = root.start_init(&env, &[]);
        root.expect_records(&[rec("tailscaled", KUBE_TAILSCALED)]);
        root.notify_file(era.initial);
        init.expect_log(STARTUP);
        // D19: once Running, the environment is applied with `tailscale set`.
        root.expect_records(&[
            rec("tailscaled", KUBE_TAILSCALED),
            rec("tailscale", UP_WITH_KEY),
            rec(
                "tailscale",
                "--socket=/tmp/tailscaled.sock set --accept-dns=false",
            ),
        ]);
        init.expect_log(" Deleting authkey from kube secret");
        api.expect_secret(
            "tailscale",
            &[("device_fqdn", era.fqdn), ("device_id", era.stable_id)],
        );
        stop(&mut init);
    }
}

#[test]
fn kube_storage_updates() {
    for era in &ERAS {
        let root = Root::new(&format!("kube_storage_updates-{}", era.name));
        let api = ApiServer::start(&root, SECRET_WITH_KEY);
        let mut init = root.start_init(&env(&root, era, &api, &[]), &[]);
        init.expect_log(STARTUP);
        api.expect_secret(
            "tailscale",
            &[
                ("authkey", "tskey-key"),
                ("device_fqdn", era.fqdn),
                ("device_id", era.stable_id),
            ],
        );
        root.notify_file(era.identity_change);
        api.expect_secret(
            "tailscale",
            &[
                ("authkey", "tskey-key"),
                ("device_fqdn", era.new_fqdn),
                ("device_id", era.new_stable_id),
            ],
        );
        stop(&mut init);
    }
}

#[test]
fn rbac_missing_get_fails_before_tailscaled() {
    let root = Root::new("kube-rbac");
    let api = ApiServer::start(
        &root,
        r#"{"secrets":[{"name":"tailscale"}],"deny":[{"verb":"get"}]}"#,
    );
    let era = &ERAS[0];
    let mut init = root.start_init(&env(&root, era, &api, &[("TS_AUTHKEY", "tskey-key")]), &[]);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    assert!(
        init.log().contains("Some Kubernetes permissions are missing, please check your RBAC configuration: missing get permission on secret \"tailscale\""),
        "{}",
        init.log()
    );
    assert!(
        root.records().is_empty(),
        "tailscaled must not start: {:?}",
        root.records()
    );
}

#[test]
fn authkey_in_secret_without_patch_fails_before_tailscaled() {
    let root = Root::new("kube-key-no-patch");
    let api = ApiServer::start(
        &root,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key"}}],"deny":[{"verb":"patch"}]}"#,
    );
    let mut init = root.start_init(&env(&root, &ERAS[0], &api, &[]), &[]);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    assert!(
        init.log().contains("authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions on the secret to manage the authkey."),
        "{}",
        init.log()
    );
    assert!(root.records().is_empty());
    assert!(!init.log().contains("tskey-key"));
}

#[test]
fn untrusted_apiserver_certificate_fails_before_tailscaled() {
    let root = Root::new("kube-bad-ca");
    let api = ApiServer::start(&root, SECRET_WITH_KEY);
    // Replace the CA the pod trusts with an unrelated one.
    let other = Root::new("kube-other-ca");
    let other_api = ApiServer::start(&other, "{}");
    let ca = "var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
    std::fs::copy(other.dir.join(ca), root.dir.join(ca)).expect("swap CA");
    drop(other_api);
    let mut init = root.start_init(&env(&root, &ERAS[0], &api, &[]), &[]);
    assert_eq!(init.wait_code(Duration::from_secs(20)), 1, "{}", init.log());
    assert!(init.log().to_lowercase().contains("ca"), "{}", init.log());
    assert!(root.records().is_empty());
}

#[test]
fn auth_key_from_the_secret_never_reaches_a_log_even_at_trace_level() {
    let era = &ERAS[2];
    let root = Root::new("kube-trace");
    let api = ApiServer::start(&root, SECRET_WITH_KEY);
    let mut env = env(&root, era, &api, &[("RUST_LOG", "trace")]);
    env.push(("TS_AUTH_ONCE".into(), "false".into()));
    let mut init = root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    api.expect_secret(
        "tailscale",
        &[
            ("authkey", "tskey-key"),
            ("device_fqdn", era.fqdn),
            ("device_id", era.stable_id),
        ],
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    let log = init.log();
    assert!(
        log.contains("trace: ") || log.contains("debug: "),
        "RUST_LOG=trace had no effect:\n{log}"
    );
    // Neither the key nor its base64 form (as the secret carries it).
    for needle in ["tskey-key", "dHNrZXkta2V5"] {
        assert!(!log.contains(needle), "{needle} in the log:\n{log}");
    }
    // tailscaled's own environment lacks the key (D15): the preflight found it in the secret and
    // only ts-auth received it.
}
