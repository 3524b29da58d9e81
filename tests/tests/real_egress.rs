//! Egress with the real tailscaled and headscale (README D22): a client in its own namespace,
//! behind node a, sends to a's LAN address; ts-init on a (kernel mode, `TS_TAILNET_TARGET_IP`
//! or `TS_TAILNET_TARGET_FQDN` = node b) DNATs it to b's tailnet address, SNATs it to a's, and
//! b's service answers — once with iptables, once with nftables (tailscaled and tsboot both).
//!
//! Where the real programs are missing (or not root) each test prints `SKIPPED: <why>` and
//! passes; `.ci/run` installs them, so in CI every one runs. Nothing leaves the machine: every
//! namespace here is the lab's (see `tsboot_tests::real`), the client's only link goes to a.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use tsboot_tests::real::{
    http_get, run_ok, serve_http, wait_for, BootSpec, Lab, Netns, REAL_PATIENCE,
};

/// The client's link to node a: a at .1, the client at .2.
const CLIENT_NET: &str = "198.19.77";
const PORT: u16 = 8000;

/// A namespace whose only link is a veth to node `a`, routed through it.
fn client_behind(lab: &Lab, a: &str) -> Netns {
    let tag = lab.hub.name.trim_end_matches("hub").to_string();
    let client = Netns::new(format!("{tag}cl"));
    let node = lab.node(a);
    let (na, cl) = (format!("{tag}ca"), format!("{tag}cc"));
    let (na, cl) = (last15(&na), last15(&cl));
    run_ok(Command::new("ip").args([
        "link",
        "add",
        &na,
        "netns",
        &node.name,
        "type",
        "veth",
        "peer",
        "name",
        &cl,
        "netns",
        &client.name,
    ]));
    node.ip(&["addr", "add", &format!("{CLIENT_NET}.1/24"), "dev", &na]);
    node.ip(&["link", "set", "dev", &na, "addrgenmode", "none"]);
    node.ip(&["link", "set", &na, "up"]);
    client.ip(&["addr", "add", &format!("{CLIENT_NET}.2/24"), "dev", &cl]);
    client.ip(&["link", "set", "dev", &cl, "addrgenmode", "none"]);
    client.ip(&["link", "set", &cl, "up"]);
    client
}

fn last15(s: &str) -> String {
    let skip = s.chars().count().saturating_sub(15);
    s.chars().skip(skip).collect()
}

fn egress(test: &str, target_var: &str, mode: Option<&str>) {
    let Some(lab) = Lab::new(test, &["a", "b"]) else {
        return;
    };
    // Node b: a plain real tailscaled with a service on its tailnet address.
    let b = lab.start_daemon("b", false);
    b.up(&lab, "b", &[]);
    let b_ip = b.ipv4();
    let bind: SocketAddr = format!("{b_ip}:{PORT}").parse().expect("b's address");
    let listener = lab
        .node("b")
        .within(move || TcpListener::bind(bind).expect("bind on b's tailnet address"));
    serve_http(listener, "hello from b over the tailnet".into());

    let client = client_behind(&lab, "a");
    let key = lab.preauth_key(false);
    let target = if target_var == "TS_TAILNET_TARGET_FQDN" {
        "b.lab.tsboot.test".to_string()
    } else {
        b_ip.clone()
    };
    let mut vars = vec![
        ("TS_AUTHKEY".to_string(), key),
        ("TS_USERSPACE".to_string(), "false".to_string()),
        (target_var.to_string(), target.clone()),
    ];
    if let Some(m) = mode {
        vars.push(("TS_DEBUG_FIREWALL_MODE".into(), m.into()));
    }
    let mut a = lab.boot(BootSpec {
        node: "a",
        env: vars,
        service_account: None,
        containerboot: false,
    });
    a.expect_log("Startup complete, waiting for shutdown signal");
    let a_ip = a.wait_running();
    let backend = mode.unwrap_or("iptables");
    assert!(
        a.log().contains(&format!("firewall backend: {backend}")),
        "{}",
        a.log()
    );

    let body = wait_for(
        REAL_PATIENCE,
        "b's answer through a's egress",
        || http_get(&client, &format!("{CLIENT_NET}.1"), PORT, "b").ok(),
        || format!("a:\n{}\nb:\n{}", a.log(), b.proc.log()),
    );
    assert_eq!(body, "hello from b over the tailnet");

    let rules = match backend {
        "nftables" => run_ok(
            lab.node("a")
                .command("nft")
                .args(["list", "table", "ip", "tsboot"]),
        ),
        _ => run_ok(&mut lab.node("a").command("iptables-save")),
    };
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    let snat = match backend {
        "nftables" => format!("ip daddr {b_ip} snat to {a_ip}"),
        _ => format!("-d {b_ip}/32 -m comment --comment tsboot-egress -j SNAT --to-source {a_ip}"),
    };
    assert_eq!(
        rules.lines().filter(|l| l.contains(&snat)).count(),
        1,
        "{test}: one SNAT {snat:?} in\n{rules}"
    );
    eprintln!("{test}: a ({a_ip}) -> b ({b_ip}) via {target_var}={target}, {backend}:\n{rules}");
}

#[test]
fn egress_to_a_real_peer_by_ip_with_iptables() {
    egress("egress_ip_ipt", "TS_TAILNET_TARGET_IP", None);
}

#[test]
fn egress_to_a_real_peer_by_name_with_nftables() {
    egress(
        "egress_fqdn_nft",
        "TS_TAILNET_TARGET_FQDN",
        Some("nftables"),
    );
}
