//! Restart transitions (README "Restarts and preferences") against the real `tailscale` CLI,
//! the real `tailscaled` and a real control server (headscale), in the lab's network namespaces
//! (nothing leaves the machine). Each test boots a node, optionally changes a preference by hand
//! with the real CLI, stops it (SIGTERM), boots it again on the same state with another
//! environment, and checks the outcome: the boot reaches Running, it is still the same node, and
//! the preferences are what the policy says. One row is the control: today's image (the real
//! `containerboot`) on the same transition crash-loops, and tsboot then boots on the state it
//! left behind.

use std::time::Duration;
use tsboot_tests::real::{Boot, BootSpec, Lab, REAL_PATIENCE};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";
const NODE: &str = "n1";

/// The environment of one boot: `{key}` is replaced by the lab's pre-auth key, and
/// `TS_EXTRA_ARGS` is appended to the login server every boot needs.
fn boot_vars(lab: &Lab, key: &str, env: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut extra = format!("--login-server={}", lab.login_server());
    let mut vars = Vec::new();
    for (k, v) in env {
        if *k == "TS_EXTRA_ARGS" {
            extra.push(' ');
            extra.push_str(v);
        } else {
            vars.push((k.to_string(), v.replace("{key}", key)));
        }
    }
    vars.push(("TS_EXTRA_ARGS".into(), extra));
    vars
}

fn start(lab: &Lab, key: &str, env: &[(&str, &str)], containerboot: bool) -> Boot {
    lab.boot(BootSpec {
        node: NODE,
        env: boot_vars(lab, key, env),
        service_account: None,
        containerboot,
    })
}

/// tailscaled's preferences as `tailscale debug prefs` prints them.
fn prefs(boot: &Boot) -> serde_json::Value {
    let text = boot
        .cli(&["debug", "prefs"])
        .unwrap_or_else(|e| panic!("tailscale debug prefs: {e}\n{}", boot.log()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("prefs JSON: {e}: {text}"))
}

fn stop(boot: &mut Boot) {
    boot.init.signal(nix::sys::signal::Signal::SIGTERM);
    let code = boot.init.wait_code(REAL_PATIENCE);
    assert_eq!(code, 0, "exit status after SIGTERM\n{}", boot.log());
}

/// Boots `first`, runs `by_hand` with the real CLI, restarts with `second`; returns the
/// preferences after the restart (`None`: the test printed SKIPPED).
fn transition(
    test: &str,
    first: &[(&str, &str)],
    by_hand: &[&[&str]],
    second: &[(&str, &str)],
) -> Option<serde_json::Value> {
    transition_seen(test, first, by_hand, second).map(|(_, after)| after)
}

/// [`transition`], also returning the preferences just before the restart.
fn transition_seen(
    test: &str,
    first: &[(&str, &str)],
    by_hand: &[&[&str]],
    second: &[(&str, &str)],
) -> Option<(serde_json::Value, serde_json::Value)> {
    let lab = Lab::new(test, &[NODE])?;
    let key = lab.preauth_key(true);
    let mut boot = start(&lab, &key, first, false);
    boot.wait_running();
    boot.expect_log(STARTUP);
    for args in by_hand {
        boot.cli(args)
            .unwrap_or_else(|e| panic!("by hand: tailscale {args:?}: {e}"));
    }
    let before = prefs(&boot);
    stop(&mut boot);

    let mut boot = start(&lab, &key, second, false);
    boot.wait_running();
    boot.expect_log(STARTUP);
    let after = prefs(&boot);
    assert!(
        !boot.log().contains("requires mentioning all"),
        "{}",
        boot.log()
    );
    assert_eq!(lab.nodes().len(), 1, "the restart registered a new node");
    if second.contains(&("TS_AUTH_ONCE", "true")) {
        // Logged in already: no `up`, the environment applied by `set` (D19).
        let log = boot.log();
        assert!(!log.contains("Running 'tailscale up'"), "{log}");
        assert!(log.contains("Running 'tailscale set'"), "{log}");
    }
    stop(&mut boot);
    Some((before, after))
}

fn hostname(p: &serde_json::Value) -> &str {
    p["Hostname"].as_str().unwrap_or("")
}

fn routes(p: &serde_json::Value) -> Vec<String> {
    let mut r: Vec<String> = p["AdvertiseRoutes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    r.sort();
    r
}

fn flag(p: &serde_json::Value, name: &str) -> bool {
    p[name].as_bool().unwrap_or(false)
}

const KEY: (&str, &str) = ("TS_AUTHKEY", "{key}");

#[test]
fn t01_hostname_added() {
    let Some(p) = transition("t01", &[KEY], &[], &[KEY, ("TS_HOSTNAME", "web-1")]) else {
        return;
    };
    assert_eq!(hostname(&p), "web-1");
}

#[test]
fn t02_hostname_changed() {
    let first = [KEY, ("TS_HOSTNAME", "web-1")];
    let Some(p) = transition("t02", &first, &[], &[KEY, ("TS_HOSTNAME", "web-2")]) else {
        return;
    };
    assert_eq!(hostname(&p), "web-2");
}

#[test]
fn t03_hostname_removed() {
    let Some(p) = transition("t03", &[KEY, ("TS_HOSTNAME", "web-1")], &[], &[KEY]) else {
        return;
    };
    assert_eq!(hostname(&p), "", "back to the container's own hostname");
}

#[test]
fn t04_route_added() {
    let first = [KEY, ("TS_ROUTES", "10.1.0.0/24")];
    let second = [KEY, ("TS_ROUTES", "10.1.0.0/24,10.2.0.0/24")];
    let Some(p) = transition("t04", &first, &[], &second) else {
        return;
    };
    assert_eq!(routes(&p), ["10.1.0.0/24", "10.2.0.0/24"]);
}

#[test]
fn t05_routes_variable_removed() {
    let first = [KEY, ("TS_ROUTES", "10.1.0.0/24,10.2.0.0/24")];
    let Some(p) = transition("t05", &first, &[], &[KEY]) else {
        return;
    };
    assert!(routes(&p).is_empty(), "{p}");
}

#[test]
fn t06_routes_set_but_empty() {
    let first = [KEY, ("TS_ROUTES", "10.1.0.0/24")];
    let Some(p) = transition("t06", &first, &[], &[KEY, ("TS_ROUTES", "")]) else {
        return;
    };
    assert!(routes(&p).is_empty(), "{p}");
}

#[test]
fn t07_accept_dns_flipped() {
    let first = [KEY, ("TS_ACCEPT_DNS", "false")];
    let Some(p) = transition("t07", &first, &[], &[KEY, ("TS_ACCEPT_DNS", "true")]) else {
        return;
    };
    assert!(flag(&p, "CorpDNS"), "{p}");
}

#[test]
fn t08_accept_dns_moved_into_extra_args() {
    let first = [KEY, ("TS_ACCEPT_DNS", "true")];
    let second = [
        KEY,
        ("TS_ACCEPT_DNS", "true"),
        ("TS_EXTRA_ARGS", "--accept-dns=false"),
    ];
    let Some(p) = transition("t08", &first, &[], &second) else {
        return;
    };
    assert!(!flag(&p, "CorpDNS"), "{p}");
}

#[test]
fn t09_auth_key_replaced_by_an_oauth_client_secret() {
    // headscale has no OAuth API; a client secret that is not `tskey-client-…` is used by the
    // CLI as the key itself, which is enough to show that the change does not break the boot.
    let second = [("TS_CLIENT_SECRET", "{key}"), ("TS_HOSTNAME", "web-1")];
    let Some(p) = transition("t09", &[KEY], &[], &second) else {
        return;
    };
    assert_eq!(hostname(&p), "web-1");
}

#[test]
fn t10_flag_dropped_from_extra_args() {
    let first = [KEY, ("TS_EXTRA_ARGS", "--shields-up")];
    let Some(p) = transition("t10", &first, &[], &[KEY]) else {
        return;
    };
    assert!(!flag(&p, "ShieldsUp"), "{p}");
}

#[test]
fn t11_preference_set_by_hand_follows_the_environment_again() {
    let hand: &[&[&str]] = &[&["set", "--shields-up"]];
    let Some((before, p)) = transition_seen("t11", &[KEY], hand, &[KEY]) else {
        return;
    };
    assert!(flag(&before, "ShieldsUp"), "set by hand: {before}");
    assert!(!flag(&p, "ShieldsUp"), "{p}");
}

#[test]
fn t12_reset_false_keeps_todays_behaviour_and_its_crash() {
    // The opt-out (`--reset=false` replaces tsboot's `--reset`) gives today's image's refusal
    // back: the boot fails (exit 1), it does not silently apply half of the environment. This
    // is also the proof that the other rows would fail without the policy.
    let Some(lab) = Lab::new("t12", &[NODE]) else {
        return;
    };
    let key = lab.preauth_key(true);
    let mut boot = start(&lab, &key, &[KEY, ("TS_HOSTNAME", "web-1")], false);
    boot.wait_running();
    boot.expect_log(STARTUP);
    stop(&mut boot);
    let mut boot = start(
        &lab,
        &key,
        &[KEY, ("TS_EXTRA_ARGS", "--reset=false")],
        false,
    );
    assert_eq!(boot.init.wait_code(REAL_PATIENCE), 1, "{}", boot.log());
    assert!(
        boot.log().contains("requires mentioning all"),
        "{}",
        boot.log()
    );
}

#[test]
fn t13_auth_once_hostname_changed_applied_by_set() {
    let first = [KEY, ("TS_AUTH_ONCE", "true"), ("TS_HOSTNAME", "web-1")];
    let second = [KEY, ("TS_AUTH_ONCE", "true"), ("TS_HOSTNAME", "web-2")];
    let Some(p) = transition("t13", &first, &[], &second) else {
        return;
    };
    assert_eq!(hostname(&p), "web-2");
}

#[test]
fn t14_auth_once_routes_cleared_by_set() {
    let first = [KEY, ("TS_AUTH_ONCE", "true"), ("TS_ROUTES", "10.1.0.0/24")];
    let second = [KEY, ("TS_AUTH_ONCE", "true"), ("TS_ROUTES", "")];
    let Some(p) = transition("t14", &first, &[], &second) else {
        return;
    };
    assert!(routes(&p).is_empty(), "{p}");
}

#[test]
fn t15_auth_once_keeps_a_preference_set_by_hand() {
    let first = [KEY, ("TS_AUTH_ONCE", "true"), ("TS_ACCEPT_DNS", "true")];
    let hand: &[&[&str]] = &[&["set", "--shields-up"]];
    let second = [KEY, ("TS_AUTH_ONCE", "true"), ("TS_ACCEPT_DNS", "false")];
    let Some((before, p)) = transition_seen("t15", &first, hand, &second) else {
        return;
    };
    assert!(
        flag(&before, "ShieldsUp") && flag(&before, "CorpDNS"),
        "{before}"
    );
    assert!(flag(&p, "ShieldsUp"), "hand-set preference kept: {p}");
    assert!(!flag(&p, "CorpDNS"), "accept-dns applied by set: {p}");
}

#[test]
fn t16_state_of_todays_image_crash_loops_there_and_boots_with_tsboot() {
    let Some(lab) = Lab::new("t16", &[NODE]) else {
        return;
    };
    let key = lab.preauth_key(true);
    // Today's image writes the state, with a hostname.
    let first = [KEY, ("TS_HOSTNAME", "web-1")];
    let mut boot = start(&lab, &key, &first, true);
    boot.wait_running();
    stop_containerboot(&mut boot);
    // Today's image restarted without TS_HOSTNAME refuses: the crash loop.
    let mut boot = start(&lab, &key, &[KEY], true);
    let code = boot.init.wait_code(REAL_PATIENCE);
    assert_ne!(code, 0, "{}", boot.log());
    assert!(
        boot.log().contains("requires mentioning all"),
        "{}",
        boot.log()
    );
    // tsboot on the same state and environment: Running, the environment applied.
    let mut boot = start(&lab, &key, &[KEY], false);
    boot.wait_running();
    boot.expect_log(STARTUP);
    assert_eq!(hostname(&prefs(&boot)), "");
    assert_eq!(lab.nodes().len(), 1, "the restart registered a new node");
    stop(&mut boot);
}

/// containerboot exits 0 on SIGTERM too, but its log is its own: only the status is checked.
fn stop_containerboot(boot: &mut Boot) {
    boot.init.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = boot.init.wait_code(Duration::from_secs(30));
}

#[test]
fn t17_reset_already_in_extra_args_is_not_given_twice() {
    // The old advice for the crash loop was to add --reset to TS_EXTRA_ARGS; `up` refuses a
    // flag given twice, so tsboot's own --reset steps aside.
    let first = [KEY, ("TS_HOSTNAME", "web-1"), ("TS_EXTRA_ARGS", "--reset")];
    let second = [KEY, ("TS_EXTRA_ARGS", "--reset")];
    let Some(p) = transition("t17", &first, &[], &second) else {
        return;
    };
    assert_eq!(hostname(&p), "");
}

#[test]
fn t18_kube_state_secret_created_by_tailscaled_settled_on_shutdown_and_restarted_with_new_env() {
    // Kubernetes: the state secret does not exist (create allowed), the real tailscaled creates
    // it; on SIGTERM tsboot checks the state is consistent before stopping tailscaled; the
    // restart on that secret with another hostname keeps the node.
    let Some(lab) = Lab::new("t18", &[NODE]) else {
        return;
    };
    let api = lab.fake_apiserver(NODE, "{}");
    let key = lab.preauth_key(true);
    let sa = api.service_account();
    let boot = |hostname: &str| {
        let mut vars = boot_vars(&lab, &key, &[KEY, ("TS_HOSTNAME", hostname)]);
        vars.extend([
            ("TS_KUBE_SECRET".to_string(), "tailscale".to_string()),
            (
                "TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV".into(),
                "true".into(),
            ),
            ("TS_STATE_DIR".into(), String::new()),
        ]);
        vars.extend(api.env.iter().cloned());
        lab.boot(BootSpec {
            node: NODE,
            env: vars,
            service_account: Some(&sa),
            containerboot: false,
        })
    };
    let mut b = boot("web-1");
    b.wait_running();
    b.expect_log(STARTUP);
    assert!(b.log().contains("tailscaled will create it"), "{}", b.log());
    stop(&mut b);
    assert!(
        b.log().contains("Checking for consistent state"),
        "{}",
        b.log()
    );
    let secret = api
        .secret("tailscale")
        .expect("tailscaled created the secret");
    for k in ["_current-profile", "_profiles", "_machinekey"] {
        assert!(secret.contains_key(k), "{k} missing: {:?}", secret.keys());
    }
    let profiles = secret.keys().filter(|k| k.starts_with("profile-")).count();
    assert_eq!(profiles, 1, "{:?}", secret.keys());

    let mut b = boot("web-2");
    b.wait_running();
    b.expect_log(STARTUP);
    assert_eq!(hostname(&prefs(&b)), "web-2");
    assert_eq!(lab.nodes().len(), 1, "the restart registered a new node");
    stop(&mut b);
}
