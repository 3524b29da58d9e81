//! The real ts-prep binary against a temporary root: the reference's `routes*` and proxy
//! scenarios, the reference's failure messages, invalid input, `--explain`, `--help` and flags.
//! These need no privileges: `dev/net/tun` is a placeholder file (it "exists").

mod common;

use common::*;

const FORWARDING_NEEDED: &str =
    "To run tailscale as a proxy or router container, IP forwarding must be enabled.";
const ADVICE_KUBERNETES: &str = "You can either set the sysctls as a privileged initContainer, or run the tailscale container with privileged=true.";
const ADVICE_CONTAINER: &str = "You can fix this by running the container with privileged=true, or the equivalent in your container runtime that permits access to sysctls.";

fn env<'a>(root: &'a TempRoot, vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![("TS_TEST_ONLY_ROOT", root.root_str())];
    all.extend_from_slice(vars);
    all
}

/// Runs a scenario on a fresh root (sysctls `0`/`0`) and returns (v4, v6) afterwards.
fn scenario(name: &str, vars: &[(&str, &str)]) -> (String, String) {
    let root = TempRoot::with_sysctls(name, "0", "0").with_tun_placeholder();
    let mut all = vec![("TS_AUTHKEY", "tskey-key")];
    all.extend_from_slice(vars);
    let run = ts_prep(&[], &env(&root, &all));
    assert_eq!(run.code, 0, "{name}: stderr:\n{}", run.stderr);
    (root.read(V4), root.read(V6))
}

#[test]
fn routes_userspace_leaves_sysctls_untouched() {
    let root = TempRoot::with_sysctls("routes", "0", "0");
    let run = ts_prep(
        &[],
        &env(
            &root,
            &[
                ("TS_AUTHKEY", "tskey-key"),
                ("TS_ROUTES", "1.2.3.0/24,10.20.30.0/24"),
            ],
        ),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((root.read(V4), root.read(V6)), ("0".into(), "0".into()));
    assert!(!root.exists("dev"), "no tun device in userspace mode");
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "one log line: {}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing to do"), "{}", run.stderr);
}

#[test]
fn routes_kernel_ipv4() {
    let got = scenario(
        "routes_kernel_ipv4",
        &[
            ("TS_ROUTES", "1.2.3.0/24,10.20.30.0/24"),
            ("TS_USERSPACE", "false"),
        ],
    );
    assert_eq!(got, ("1".into(), "0".into()));
}

#[test]
fn routes_kernel_ipv6() {
    let got = scenario(
        "routes_kernel_ipv6",
        &[("TS_ROUTES", "::/64,1::/64"), ("TS_USERSPACE", "false")],
    );
    assert_eq!(got, ("0".into(), "1".into()));
}

#[test]
fn routes_kernel_all_families() {
    let got = scenario(
        "routes_kernel_all_families",
        &[("TS_ROUTES", "::/64,1.2.3.0/24"), ("TS_USERSPACE", "false")],
    );
    assert_eq!(got, ("1".into(), "1".into()));
}

#[test]
fn proxy_dest_ip_v4() {
    let got = scenario(
        "proxy_v4",
        &[("TS_DEST_IP", "1.2.3.4"), ("TS_USERSPACE", "false")],
    );
    assert_eq!(got, ("1".into(), "0".into()));
}

#[test]
fn proxy_dest_ip_v6_and_ipv4_mapped() {
    for ip in ["fd00::1", "::ffff:1.2.3.4"] {
        let got = scenario("proxy_v6", &[("TS_DEST_IP", ip), ("TS_USERSPACE", "false")]);
        assert_eq!(got, ("0".into(), "1".into()), "TS_DEST_IP={ip}");
    }
}

#[test]
fn kernel_without_routes_touches_no_sysctl() {
    let got = scenario("kernel_no_routes", &[("TS_USERSPACE", "false")]);
    assert_eq!(got, ("0".into(), "0".into()));
}

#[test]
fn already_one_is_not_rewritten() {
    let root = TempRoot::with_sysctls("already", "1\n", "0").with_tun_placeholder();
    root.set_old_mtime(V4);
    let before = root.mtime(V4);
    let run = ts_prep(
        &[],
        &env(
            &root,
            &[
                ("TS_USERSPACE", "false"),
                ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
            ],
        ),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A write would have left "1" (no newline) and a new mtime.
    assert_eq!(root.read(V4), "1\n");
    assert_eq!(root.mtime(V4), before, "ip_forward was rewritten");
    assert_eq!(root.read(V6), "1");
}

#[test]
fn unreadable_sysctl_fails_with_reference_lines_and_changes_nothing() {
    // A directory where the v6 file should be: reading it fails (EISDIR), as it would on a
    // kernel without IPv6 where the file is missing.
    let root = TempRoot::with_sysctls("unreadable", "0", "0");
    std::fs::remove_file(root.path(V6)).expect("rm");
    std::fs::create_dir(root.path(V6)).expect("mkdir");
    let before = root.tree();
    let run = ts_prep(
        &[],
        &env(
            &root,
            &[
                ("TS_USERSPACE", "false"),
                ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
            ],
        ),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let v6 = root.path(V6);
    let line = run.line_with("Failed to enable IP forwarding:");
    assert!(
        line.contains(&format!(
            " Failed to enable IP forwarding: reading \"{}\": ",
            v6.display()
        )),
        "{line}"
    );
    run.assert_logged(&format!(" {FORWARDING_NEEDED}"));
    run.assert_logged(&format!(" {ADVICE_CONTAINER}"));
    assert!(!run.stderr.contains(ADVICE_KUBERNETES));
    // Validate all, then apply: neither the v4 sysctl nor the tun device was touched.
    assert_eq!(root.read(V4), "0");
    assert_eq!(root.tree(), before);
    assert!(!root.exists("dev"));
}

#[test]
fn missing_sysctl_file_fails_reading() {
    let root = TempRoot::new("missing").with_tun_placeholder();
    let run = ts_prep(
        &[],
        &env(
            &root,
            &[("TS_USERSPACE", "false"), ("TS_DEST_IP", "1.2.3.4")],
        ),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let line = run.line_with("Failed to enable IP forwarding:");
    assert!(
        line.contains(&format!("reading \"{}\": ", root.path(V4).display())),
        "{line}"
    );
    assert!(!root.exists(V4), "the sysctl file must not be created");
}

#[test]
fn kubernetes_gets_the_init_container_advice() {
    let root = TempRoot::with_sysctls("kube_advice", "0", "0").with_tun_placeholder();
    std::fs::remove_file(root.path(V4)).expect("rm");
    std::fs::create_dir(root.path(V4)).expect("mkdir");
    let vars = [
        ("TS_USERSPACE", "false"),
        ("TS_ROUTES", "10.0.0.0/8"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
    ];
    let run = ts_prep(&[], &env(&root, &vars));
    assert_eq!(run.code, 1, "{}", run.stderr);
    run.assert_logged(&format!(" {FORWARDING_NEEDED}"));
    run.assert_logged(&format!(" {ADVICE_KUBERNETES}"));
    assert!(!run.stderr.contains(ADVICE_CONTAINER));

    // KUBERNETES_SERVICE_HOST set but empty is "not in Kubernetes".
    let vars = [
        ("TS_USERSPACE", "false"),
        ("TS_ROUTES", "10.0.0.0/8"),
        ("KUBERNETES_SERVICE_HOST", ""),
    ];
    let run = ts_prep(&[], &env(&root, &vars));
    assert_eq!(run.code, 1, "{}", run.stderr);
    run.assert_logged(&format!(" {ADVICE_CONTAINER}"));
    assert!(!run.stderr.contains(ADVICE_KUBERNETES));
}

#[test]
fn invalid_configuration_exits_2_and_changes_nothing() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("TS_USERSPACE", "false"),
                ("TS_ROUTES", "1.2.3.0/24, 10.0.0.0/8"),
            ],
            "TS_ROUTES=\"1.2.3.0/24, 10.0.0.0/8\"",
        ),
        (
            &[("TS_USERSPACE", "false"), ("TS_ROUTES", "10.0.0.0/8,")],
            "TS_ROUTES=\"10.0.0.0/8,\"",
        ),
        (
            // D2: validated in userspace mode too.
            &[("TS_ROUTES", "10.0.0.0/33")],
            "TS_ROUTES=\"10.0.0.0/33\"",
        ),
        (
            &[("TS_USERSPACE", "flase"), ("TS_ROUTES", "10.0.0.0/8")],
            "TS_USERSPACE=\"flase\"",
        ),
        (
            &[("TS_USERSPACE", "false"), ("TS_DEST_IP", "1.2.3")],
            "TS_DEST_IP=\"1.2.3\"",
        ),
        (
            &[("TS_DEST_IP", "1.2.3.4")],
            "TS_DEST_IP is not supported with TS_USERSPACE",
        ),
        (&[("TS_LOG_FORMAT", "yaml")], "TS_LOG_FORMAT=\"yaml\""),
    ];
    for (vars, needle) in cases {
        let root = TempRoot::with_sysctls("invalid", "0", "0");
        let before = root.tree();
        let run = ts_prep(&[], &env(&root, vars));
        assert_eq!(run.code, 2, "{vars:?}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{vars:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("invalid configuration"),
            "{}",
            run.stderr
        );
        assert_eq!(root.tree(), before, "{vars:?}");
        assert_eq!((root.read(V4), root.read(V6)), ("0".into(), "0".into()));
        // --explain refuses the same configuration the same way, printing no plan.
        let run = ts_prep(&["--explain"], &env(&root, vars));
        assert_eq!(run.code, 2, "--explain {vars:?}: {}", run.stderr);
        assert_eq!(run.stdout, "");
    }
}

#[test]
fn explain_prints_the_plan_and_writes_nothing() {
    let root = TempRoot::with_sysctls("explain", "0", "1");
    root.set_old_mtime(V4);
    root.set_old_mtime(V6);
    let before = root.tree();
    let run = ts_prep(
        &["--explain"],
        &env(
            &root,
            &[
                ("TS_USERSPACE", "false"),
                ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
            ],
        ),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    assert!(out.contains("mode: kernel networking"), "{out}");
    assert!(
        out.contains(&format!(
            "tun: {} missing: would create it (mode 0755)",
            root.path("dev/net").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "tun: {} missing: would create it (char device 10,200, mode 0600)",
            root.path(TUN).display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "forwarding: IPv4 {} = \"0\": would write 1",
            root.path(V4).display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "forwarding: IPv6 {} = \"1\": already 1, no write",
            root.path(V6).display()
        )),
        "{out}"
    );
    assert_eq!(root.tree(), before);
    assert_eq!(root.read(V4), "0");
    assert_eq!(
        root.mtime(V4),
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(OLD_MTIME_SECS)
    );
}

#[test]
fn explain_in_userspace_and_with_existing_tun() {
    let root = TempRoot::with_sysctls("explain_us", "0", "0").with_tun_placeholder();
    let run = ts_prep(&["--explain"], &env(&root, &[("TS_ROUTES", "10.0.0.0/8")]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("mode: userspace networking"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("forwarding:"), "{}", run.stdout);

    let run = ts_prep(&["--explain", "--userspace", "false"], &env(&root, &[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("tun: {} exists", root.path(TUN).display())),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("forwarding: not needed"),
        "{}",
        run.stdout
    );
}

#[test]
fn help_names_every_variable_and_the_exit_codes() {
    let run = ts_prep(&["--help"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let help = &run.stdout;
    for needle in [
        "--userspace <BOOL>",
        "[env: TS_USERSPACE]",
        "--routes <CIDRS>",
        "[env: TS_ROUTES]",
        "--dest-ip <IP>",
        "[env: TS_DEST_IP]",
        "--root <DIR>",
        "[env: TS_TEST_ONLY_ROOT]",
        "--explain",
        "KUBERNETES_SERVICE_HOST",
        "TS_LOG_FORMAT",
        "dev/net/tun",
        "ip_forward",
        "0 success",
        "1 failure",
        "2 invalid configuration",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    // Each flag's help line ends with its variable.
    for line in help.lines().filter(|l| l.contains("[env: ")) {
        assert!(line.trim_end().ends_with(']'), "{line}");
    }
}

#[test]
fn version_and_bad_flags() {
    let run = ts_prep(&["--version"], &[]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.starts_with("ts-prep "), "{}", run.stdout);

    let run = ts_prep(&["--no-such-flag"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = ts_prep(&["extra-argument"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn flags_override_the_environment() {
    let root = TempRoot::with_sysctls("flags", "0", "0").with_tun_placeholder();
    // The environment alone would be refused (bad route) or be userspace; the flags win.
    let vars = [
        ("TS_TEST_ONLY_ROOT", "/nonexistent-root"),
        ("TS_USERSPACE", "true"),
        ("TS_ROUTES", "not-a-route"),
    ];
    let run = ts_prep(
        &[
            "--root",
            root.root_str(),
            "--userspace=false",
            "--routes",
            "fd00::/64",
        ],
        &vars,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!((root.read(V4), root.read(V6)), ("0".into(), "1".into()));

    let run = ts_prep(
        &[
            "--root",
            root.root_str(),
            "--userspace",
            "off",
            "--dest-ip",
            "1.2.3.4",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.read(V4), "1");

    // A bad flag value is refused naming the variable it stands for.
    let run = ts_prep(&["--userspace", "flase"], &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("TS_USERSPACE=\"flase\""),
        "{}",
        run.stderr
    );
}

#[test]
fn json_log_format_carries_the_reference_lines() {
    let root = TempRoot::new("json").with_tun_placeholder();
    let run = ts_prep(
        &[],
        &env(
            &root,
            &[
                ("TS_USERSPACE", "false"),
                ("TS_ROUTES", "10.0.0.0/8"),
                ("TS_LOG_FORMAT", "json"),
            ],
        ),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    for line in run.stderr.lines() {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    }
    assert!(
        run.stderr
            .contains(&format!("\"msg\":\"{FORWARDING_NEEDED}\"")),
        "{}",
        run.stderr
    );
}
