//! The health and metrics endpoint of a real boot: ts-init with the real tailscaled logging in
//! to the lab's headscale (see `tsboot_tests::real`), `/healthz` and `/metrics` scraped from
//! inside the node's namespace, the exposition checked by the Prometheus project's parser.
//! Prints `SKIPPED: <why>` and passes where the real programs or root are missing.

use std::net::SocketAddr;
use std::time::Duration;
use tsboot_tests::probe::{parse_exposition, prometheus_parser, request, Answer};
use tsboot_tests::real::{wait_for, BootSpec, Lab, REAL_PATIENCE};

fn scrape(lab: &Lab, node: &str, path: &'static str) -> Result<Answer, String> {
    // The default listener, [::]:9002, reached over the node's IPv4 loopback.
    let addr: SocketAddr = "127.0.0.1:9002".parse().expect("addr");
    lab.node(node)
        .within(move || request(addr, "GET", path).map_err(|e| e.to_string()))
}

#[test]
fn a_real_boot_serves_healthz_and_metrics() {
    let Some(lab) = Lab::new("real_health", &["a"]) else {
        return;
    };
    let key = lab.preauth_key(false);
    let mut b = lab.boot(BootSpec {
        node: "a",
        env: vec![
            ("TS_AUTHKEY".into(), key),
            ("TS_ENABLE_HEALTH_CHECK".into(), "true".into()),
            ("TS_ENABLE_METRICS".into(), "true".into()),
        ],
        service_account: None,
        containerboot: false,
    });
    b.expect_log("Running healthcheck endpoint at [::]:9002/healthz");
    let ip = b.wait_running();
    b.expect_log("Startup complete, waiting for shutdown signal");

    let ok = wait_for(
        REAL_PATIENCE,
        "/healthz 200 ok",
        || scrape(&lab, "a", "/healthz").ok().filter(|a| a.code == 200),
        || format!("{:?}\n{}", scrape(&lab, "a", "/healthz"), b.log()),
    );
    assert_eq!(ok.body, "ok");
    println!("real /healthz: {} {:?} (node {ip})", ok.code, ok.body);

    let metrics = scrape(&lab, "a", "/metrics").expect("/metrics");
    assert_eq!(metrics.code, 200);
    println!("real /metrics:\n{}", metrics.body);
    let Some(py) = prometheus_parser() else {
        println!("SKIPPED (metrics parse): no python3 with prometheus_client");
        return;
    };
    let families = parse_exposition(&py, &metrics.body)
        .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{}", metrics.body));
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in\n{}", metrics.body))
    };
    // The real daemon's own series come through.
    for name in [
        "tailscaled_health_messages",
        "tailscaled_inbound_packets",
        "tailscaled_outbound_bytes",
        "tailscaled_home_derp_region_id",
    ] {
        family(name);
    }
    assert_eq!(
        family("tsboot_healthy").value("tsboot_healthy", &[]),
        Some(1.0)
    );
    assert_eq!(
        family("tsboot_tailscaled_usermetrics_up").value("tsboot_tailscaled_usermetrics_up", &[]),
        Some(1.0)
    );
    assert!(
        family("tsboot_node_tailnet_addresses")
            .value("tsboot_node_tailnet_addresses", &[])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        family("tsboot_phase_state").value(
            "tsboot_phase_state",
            &[("phase", "tailscaled"), ("state", "running")]
        ),
        Some(1.0)
    );

    // Anything else on the listener is not found.
    assert_eq!(scrape(&lab, "a", "/debug/vars").map(|a| a.code), Ok(404));

    b.init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(b.init.wait_code(Duration::from_secs(30)), 0, "{}", b.log());
}
