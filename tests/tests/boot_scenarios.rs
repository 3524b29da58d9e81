//! Every scenario of the reference's `main_test.go` (the README's boot order) run through the real ts-init
//! binary against the fakes, for each message era (the reference harness's own notifies, a
//! seed-era daemon, a HEAD-era daemon): recorded argv byte for byte, sysctl files, the log line.

use std::time::Duration;
use tsboot_tests::harness::{fixture, rec, Era, Root, ERAS};

const SOCK: &str = "--socket=/tmp/tailscaled.sock";
const STARTUP: &str = " Startup complete, waiting for shutdown signal";

struct Scenario {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
    tailscaled: &'static str,
    /// `tailscale up` arguments after `--socket=… up`.
    up: &'static str,
    auth_once: bool,
    /// Expected (ip_forward, ipv6 forwarding) after startup.
    sysctls: (&'static str, &'static str),
    /// Extra recorded commands after Running (the proxy rule), with `{ip}` for the era's IPv4.
    after_running: &'static [&'static str],
}

const MEM_USERSPACE: &str = "--state=mem: --statedir=/tmp --tun=userspace-networking";
const MEM_KERNEL: &str = "--state=mem: --statedir=/tmp";

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no_args",
        env: &[],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "authkey",
        env: &[("TS_AUTHKEY", "tskey-key")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --authkey=tskey-key --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "authkey-old-flag",
        env: &[("TS_AUTH_KEY", "tskey-key")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --authkey=tskey-key --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "authkey_disk_state",
        env: &[("TS_AUTHKEY", "tskey-key"), ("TS_STATE_DIR", "{root}/tmp")],
        tailscaled: "--statedir={root}/tmp --tun=userspace-networking",
        up: "up --accept-dns=false --authkey=tskey-key --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "routes",
        env: &[("TS_AUTHKEY", "tskey-key"), ("TS_ROUTES", "1.2.3.0/24,10.20.30.0/24")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --authkey=tskey-key --advertise-routes=1.2.3.0/24,10.20.30.0/24 --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "routes_kernel_ipv4",
        env: &[
            ("TS_AUTHKEY", "tskey-key"),
            ("TS_ROUTES", "1.2.3.0/24,10.20.30.0/24"),
            ("TS_USERSPACE", "false"),
        ],
        tailscaled: MEM_KERNEL,
        up: "up --accept-dns=false --authkey=tskey-key --advertise-routes=1.2.3.0/24,10.20.30.0/24 --reset",
        auth_once: false,
        sysctls: ("1", "0"),
        after_running: &[],
    },
    Scenario {
        name: "routes_kernel_ipv6",
        env: &[
            ("TS_AUTHKEY", "tskey-key"),
            ("TS_ROUTES", "::/64,1::/64"),
            ("TS_USERSPACE", "false"),
        ],
        tailscaled: MEM_KERNEL,
        up: "up --accept-dns=false --authkey=tskey-key --advertise-routes=::/64,1::/64 --reset",
        auth_once: false,
        sysctls: ("0", "1"),
        after_running: &[],
    },
    Scenario {
        name: "routes_kernel_all_families",
        env: &[
            ("TS_AUTHKEY", "tskey-key"),
            ("TS_ROUTES", "::/64,1.2.3.0/24"),
            ("TS_USERSPACE", "false"),
        ],
        tailscaled: MEM_KERNEL,
        up: "up --accept-dns=false --authkey=tskey-key --advertise-routes=::/64,1.2.3.0/24 --reset",
        auth_once: false,
        sysctls: ("1", "1"),
        after_running: &[],
    },
    Scenario {
        name: "proxy",
        env: &[
            ("TS_AUTHKEY", "tskey-key"),
            ("TS_DEST_IP", "1.2.3.4"),
            ("TS_USERSPACE", "false"),
        ],
        tailscaled: MEM_KERNEL,
        up: "up --accept-dns=false --authkey=tskey-key --reset",
        auth_once: false,
        sysctls: ("1", "0"),
        after_running: &["iptables -t nat -I PREROUTING 1 -d {ip} -j DNAT --to-destination 1.2.3.4"],
    },
    Scenario {
        name: "egress",
        env: &[
            ("TS_AUTHKEY", "tskey-key"),
            ("TS_TAILNET_TARGET_IP", "100.99.99.99"),
            ("TS_USERSPACE", "false"),
        ],
        tailscaled: MEM_KERNEL,
        up: "up --accept-dns=false --authkey=tskey-key --reset",
        auth_once: false,
        sysctls: ("1", "0"),
        after_running: &[
            "iptables -t nat -I PREROUTING 1 ! -i tailscale0 -m comment --comment tsboot-egress -j DNAT --to-destination 100.99.99.99",
            "iptables -t nat -I POSTROUTING 1 -d 100.99.99.99/32 -m comment --comment tsboot-egress -j SNAT --to-source {ip}",
            "iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu",
            "iptables -t mangle -A FORWARD -i tailscale0 -p tcp --tcp-flags SYN,RST SYN -m comment --comment tsboot-egress -j TCPMSS --clamp-mss-to-pmtu",
        ],
    },
    Scenario {
        name: "authkey_once",
        env: &[("TS_AUTHKEY", "tskey-key"), ("TS_AUTH_ONCE", "true")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --authkey=tskey-key --reset",
        auth_once: true,
        sysctls: ("0", "0"),
        // D19: the environment is re-applied once Running.
        after_running: &["tailscale --socket=/tmp/tailscaled.sock set --accept-dns=false"],
    },
    Scenario {
        name: "proxies",
        env: &[
            ("TS_SOCKS5_SERVER", "localhost:1080"),
            ("TS_OUTBOUND_HTTP_PROXY_LISTEN", "localhost:8080"),
        ],
        tailscaled: "--state=mem: --statedir=/tmp --tun=userspace-networking --socks5-server=localhost:1080 --outbound-http-proxy-listen=localhost:8080",
        up: "up --accept-dns=false --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "dns",
        env: &[("TS_ACCEPT_DNS", "true")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=true --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "extra_args",
        env: &[
            ("TS_EXTRA_ARGS", "--widget=rotated"),
            ("TS_TAILSCALED_EXTRA_ARGS", "--experiments=widgets"),
        ],
        tailscaled: "--state=mem: --statedir=/tmp --tun=userspace-networking --experiments=widgets",
        up: "up --accept-dns=false --reset --widget=rotated",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    // Today's image's variables. Credentials contain "tskey-key" so the check that it never
    // reaches the log covers them too.
    Scenario {
        name: "hostname",
        env: &[("TS_AUTHKEY", "tskey-key"), ("TS_HOSTNAME", "web-1")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --authkey=tskey-key --hostname=web-1 --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "routes_set_but_empty",
        env: &[("TS_ROUTES", ""), ("TS_HOSTNAME", "")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --advertise-routes= --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "accept_dns_in_extra_args",
        env: &[
            ("TS_ACCEPT_DNS", "false"),
            ("TS_EXTRA_ARGS", "--ssh --accept-dns"),
        ],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=true --reset --ssh",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "oauth_client_secret",
        env: &[
            ("TS_CLIENT_ID", "k123"),
            ("TS_CLIENT_SECRET", "tskey-key-client-secret"),
            ("TS_ROUTES", "10.0.0.0/24"),
            ("TS_HOSTNAME", "gw"),
        ],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --client-id=k123 --client-secret=tskey-key-client-secret --advertise-routes=10.0.0.0/24 --hostname=gw --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "workload_identity_token",
        env: &[
            ("TS_CLIENT_ID", "k123"),
            ("TS_ID_TOKEN", "tskey-key-id-token"),
        ],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --client-id=k123 --id-token=tskey-key-id-token --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "workload_identity_audience",
        env: &[("TS_CLIENT_ID", "k123"), ("TS_AUDIENCE", "api://tailscale")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --client-id=k123 --audience=api://tailscale --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "credentials_in_extra_args",
        env: &[("TS_EXTRA_ARGS", "--auth-key=tskey-key-extra --client-secret tskey-key-2")],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=false --reset --auth-key=tskey-key-extra --client-secret tskey-key-2",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "debug_addr_port",
        env: &[
            ("TS_DEBUG_ADDR_PORT", "127.0.0.1:9001"),
            ("TS_TAILSCALED_EXTRA_ARGS", "--verbose=1"),
        ],
        tailscaled: "--state=mem: --statedir=/tmp --tun=userspace-networking --debug=127.0.0.1:9001 --verbose=1",
        up: "up --accept-dns=false --reset",
        auth_once: false,
        sysctls: ("0", "0"),
        after_running: &[],
    },
    Scenario {
        name: "auth_once_sets_owned_prefs",
        env: &[
            ("TS_AUTHKEY", "tskey-key"),
            ("TS_AUTH_ONCE", "true"),
            ("TS_ROUTES", ""),
            ("TS_HOSTNAME", "web-2"),
            ("TS_EXTRA_ARGS", "--accept-dns=true --ssh"),
        ],
        tailscaled: MEM_USERSPACE,
        up: "up --accept-dns=true --authkey=tskey-key --advertise-routes= --hostname=web-2 --reset --ssh",
        auth_once: true,
        sysctls: ("0", "0"),
        after_running: &["tailscale --socket=/tmp/tailscaled.sock set --accept-dns=true --advertise-routes= --hostname=web-2"],
    },
];

/// A state the fake tailscaled starts in for auth-once runs: no login requested yet.
const NO_STATE: &str = r#"{"Version":"","ErrMessage":null,"LoginFinished":null,"State":0,"Prefs":null,"NetMap":null,"Engine":null,"BrowseToURL":null,"BackendLogID":null}"#;

fn run(s: &Scenario, era: &Era) {
    let root = Root::new(&format!("{}-{}", s.name, era.name));
    let root_str = root.dir.display().to_string();
    let mut env = root.era_env(era);
    for (k, v) in s.env {
        env.push((k.to_string(), v.replace("{root}", &root_str)));
    }
    if s.auth_once {
        let no_state = root.dir.join("no-state.json");
        std::fs::write(&no_state, NO_STATE).expect("write initial state");
        env.retain(|(k, _)| k != "FAKE_TAILSCALED_INITIAL");
        env.push((
            "FAKE_TAILSCALED_INITIAL".into(),
            no_state.display().to_string(),
        ));
    }
    let mut init = root.start_init(&env, &[]);

    let tailscaled = rec(
        "tailscaled",
        &format!("{SOCK} {}", s.tailscaled.replace("{root}", "")),
    );
    let up = rec("tailscale", &format!("{SOCK} {}", s.up));
    if s.auth_once {
        // Nothing but tailscaled until tailscaled asks for a login; ts-auth is watching.
        root.expect_records(std::slice::from_ref(&tailscaled));
        wait_for_watchers(&root, 1);
        assert_eq!(
            root.records(),
            vec![tailscaled.clone()],
            "{} ({}): up ran before NeedsLogin",
            s.name,
            era.name
        );
        root.notify_file(era.initial);
    }
    let mut want = vec![tailscaled, up];
    for extra in s.after_running {
        let mut parts = extra.splitn(2, ' ');
        let program = parts.next().unwrap_or_default();
        want.push(rec(
            program,
            &parts.next().unwrap_or_default().replace("{ip}", era.ipv4),
        ));
    }
    init.expect_log(STARTUP);
    // Startup is complete only once every watcher finished its first reconcile: the DNAT rule
    // is already recorded at that moment, not merely eventually.
    assert_eq!(
        root.records(),
        want,
        "{} ({}): records at Startup complete",
        s.name,
        era.name
    );
    // D17: the compatibility symlink of newer images points at TS_SOCKET.
    let link = root.dir.join("var/run/tailscale/tailscaled.sock");
    assert_eq!(
        std::fs::read_link(&link).ok().as_deref(),
        Some(root.socket.as_path()),
        "{} ({}): socket symlink",
        s.name,
        era.name
    );
    assert_eq!(
        (
            root.read("proc/sys/net/ipv4/ip_forward").trim(),
            root.read("proc/sys/net/ipv6/conf/all/forwarding").trim()
        ),
        s.sysctls,
        "{} ({}): sysctls",
        s.name,
        era.name
    );
    init.signal(nix::sys::signal::Signal::SIGTERM);
    let code = init.wait_code(Duration::from_secs(10));
    assert_eq!(
        code,
        0,
        "{} ({}): exit status after SIGTERM\n{}",
        s.name,
        era.name,
        init.log()
    );
    // The auth key never reaches a log line.
    assert!(
        !init.log().contains("tskey-key"),
        "{} ({}): auth key in the log:\n{}",
        s.name,
        era.name,
        init.log()
    );
}

fn wait_for_watchers(root: &Root, n: usize) {
    let start = std::time::Instant::now();
    loop {
        let answer = root.control("watchers");
        let count: usize = answer.trim_start_matches("ok").trim().parse().unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(
            start.elapsed() < tsboot_tests::harness::PATIENCE,
            "no bus watcher connected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn scenario(name: &str) -> &'static Scenario {
    SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                for era in &ERAS {
                    run(scenario($name), era);
                }
            }
        )*
    };
}

scenario_tests! {
    no_args => "no_args",
    authkey => "authkey",
    authkey_old_flag => "authkey-old-flag",
    authkey_disk_state => "authkey_disk_state",
    routes => "routes",
    routes_kernel_ipv4 => "routes_kernel_ipv4",
    routes_kernel_ipv6 => "routes_kernel_ipv6",
    routes_kernel_all_families => "routes_kernel_all_families",
    proxy => "proxy",
    egress => "egress",
    authkey_once => "authkey_once",
    proxies => "proxies",
    dns => "dns",
    extra_args => "extra_args",
    hostname => "hostname",
    routes_set_but_empty => "routes_set_but_empty",
    accept_dns_in_extra_args => "accept_dns_in_extra_args",
    oauth_client_secret => "oauth_client_secret",
    workload_identity_token => "workload_identity_token",
    workload_identity_audience => "workload_identity_audience",
    credentials_in_extra_args => "credentials_in_extra_args",
    debug_addr_port => "debug_addr_port",
    auth_once_sets_owned_prefs => "auth_once_sets_owned_prefs",
}

#[test]
fn fixtures_exist_for_every_era() {
    for era in &ERAS {
        for f in [era.initial, era.login, era.identity_change] {
            assert!(fixture(f).is_file(), "missing fixture {f}");
        }
    }
}
