//! TS_SERVE_CONFIG against the real tailscaled and headscale (see `tsboot_tests::real`): an
//! HTTP serve entry on node a proxies to a backend in a's namespace, and a second real node, b,
//! fetches the page through the tailnet; an edit of the file changes what b gets.
//!
//! Where the real programs are missing (or not root) it prints `SKIPPED: <why>` and passes.

use std::net::TcpListener;
use tsboot_tests::real::{http_get, serve_http, wait_for, BootSpec, Lab, REAL_PATIENCE};

/// headscale's `dns.base_domain` in the lab: node a is `a.lab.tsboot.test`.
const A_FQDN: &str = "a.lab.tsboot.test";

fn proxy_config(port: u16) -> String {
    format!(
        r#"{{"TCP":{{"80":{{"HTTP":true}}}},
            "Web":{{"{A_FQDN}:80":{{"Handlers":{{"/":{{"Proxy":"http://127.0.0.1:{port}"}}}}}}}}}}"#
    )
}

#[test]
fn an_http_serve_entry_proxies_a_peer_to_the_backend_through_the_tailnet() {
    let Some(lab) = Lab::new("serve_http", &["a", "b"]) else {
        return;
    };
    // The backend listens on a's loopback only: the tailnet is the one way to it from b.
    let listener = lab
        .node("a")
        .within(|| TcpListener::bind("127.0.0.1:8081").expect("backend bind"));
    serve_http(listener, "hello from the backend of a".to_string());
    let serve_file = lab.state_dir("a").join("serve-config/serve.json");
    std::fs::create_dir_all(serve_file.parent().expect("dir")).expect("serve dir");
    std::fs::write(&serve_file, proxy_config(8081)).expect("serve config");

    let key = lab.preauth_key(false);
    let mut a = lab.boot(BootSpec {
        node: "a",
        env: vec![
            ("TS_AUTHKEY".into(), key),
            ("TS_SERVE_CONFIG".into(), serve_file.display().to_string()),
        ],
        service_account: None,
        containerboot: false,
    });
    a.expect_log("Startup complete, waiting for shutdown signal");
    let a_ip = a.wait_running();
    let log = a.log();
    assert!(
        log.contains("serve proxy: unsetting previous config"),
        "{log}"
    );
    assert!(log.contains("serve proxy: applying serve config"), "{log}");
    // The real daemon holds exactly the file's config.
    let status = a.cli(&["serve", "status", "--json"]).expect("serve status");
    let held: serde_json::Value = serde_json::from_str(&status).expect("serve status JSON");
    let want: serde_json::Value = serde_json::from_str(&proxy_config(8081)).expect("json");
    assert_eq!(held["TCP"], want["TCP"], "{status}");
    assert_eq!(held["Web"], want["Web"], "{status}");

    let b = lab.start_daemon("b", false);
    b.up(&lab, "b", &[]);
    b.ipv4();
    let body = wait_for(
        REAL_PATIENCE,
        "the backend's page through a's serve config",
        || http_get(lab.node("b"), &a_ip, 80, A_FQDN).ok(),
        || format!("a:\n{}\nb:\n{}", a.log(), b.proc.log()),
    );
    assert_eq!(body, "hello from the backend of a");

    // An editor's save (write and rename): the new handler answers without a restart.
    let text = format!(
        r#"{{"TCP":{{"80":{{"HTTP":true}}}},"Web":{{"{A_FQDN}:80":{{"Handlers":{{"/":{{"Text":"edited on a"}}}}}}}}}}"#
    );
    let tmp = serve_file.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &serve_file).expect("rename");
    let body = wait_for(
        REAL_PATIENCE,
        "the edited serve config's answer",
        || {
            http_get(lab.node("b"), &a_ip, 80, A_FQDN)
                .ok()
                .filter(|b| b.contains("edited on a"))
        },
        || format!("a:\n{}", a.log()),
    );
    assert_eq!(body.trim(), "edited on a");
    assert!(a.init.try_status().is_none(), "{}", a.log());
}
