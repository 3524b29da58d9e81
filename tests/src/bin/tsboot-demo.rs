//! `tsboot-demo`: the whole boot, end to end, against the test doubles — what tsboot does,
//! visible in one run. Run it with `./demo.sh` (which builds the workspace first).
//!
//! It lays out a temporary root, starts the fake kube-apiserver (TLS, a `tailscale` secret
//! holding an auth key) and runs the real `ts-init` in kernel mode with a subnet route and a
//! `TS_DEST_IP` proxy. The fake tailscaled behaves like a HEAD-era daemon. The demo prints the
//! log, the recorded command lines, the sysctls, the secret and the DNAT rule; then the node's
//! identity and address change, and the secret and the rule follow; then SIGTERM.

use std::path::Path;
use std::time::{Duration, Instant};
use tsboot_tests::harness::{wait_until, ApiServer, Proc, Root, HEAD};

struct LogTail {
    printed: usize,
}

impl LogTail {
    fn show(&mut self, init: &Proc) {
        let log = init.log();
        for line in log.lines().skip(self.printed) {
            println!("  | {line}");
            self.printed += 1;
        }
    }

    fn until(&mut self, init: &mut Proc, suffix: &str) {
        let start = Instant::now();
        loop {
            self.show(init);
            if init.log().lines().any(|l| l.ends_with(suffix)) {
                return;
            }
            if init.try_status().is_some() || start.elapsed() > Duration::from_secs(20) {
                self.show(init);
                // A panic unwinds through the harness, which stops ts-init and the fakes.
                panic!("demo: ts-init did not log {suffix:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn heading(text: &str) {
    println!("\n== {text}");
}

fn show_state(root: &Root, api: &ApiServer) {
    heading("secret default/tailscale at the fake apiserver (data, decoded)");
    for (k, v) in api.secret("tailscale").unwrap_or_default() {
        println!("  {k} = {v}");
    }
    heading("iptables -t nat -S PREROUTING (recording fake iptables)");
    let rules = root.run_with_env(
        &root.dir.join("usr/bin/iptables"),
        &["-t", "nat", "-S", "PREROUTING"],
    );
    for line in rules.lines() {
        println!("  {line}");
    }
}

fn main() {
    let root = Root::new("demo");
    let api = ApiServer::start(
        &root,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-demo-0123"}}]}"#,
    );
    let mut env = root.era_env(&HEAD);
    env.extend(api.env.iter().cloned());
    for (k, v) in [
        ("TS_USERSPACE", "false"),
        ("TS_ROUTES", "10.0.0.0/24"),
        ("TS_DEST_IP", "10.0.0.5"),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    println!("tsboot demo: the full boot against the test doubles");
    println!("root (TS_TEST_ONLY_ROOT): {}", root.dir.display());
    println!(
        "environment: TS_USERSPACE=false TS_ROUTES=10.0.0.0/24 TS_DEST_IP=10.0.0.5, in Kubernetes"
    );
    println!("  (KUBERNETES_SERVICE_HOST=127.0.0.1, service account under the root, secret `tailscale` holds an auth key)");

    heading("ts-init log");
    let mut init = root.start_init(&env, &[]);
    let mut tail = LogTail { printed: 0 };
    tail.until(&mut init, " Startup complete, waiting for shutdown signal");

    heading("commands run (recorded by the fake tailscaled, tailscale and iptables)");
    for line in root.records() {
        println!("  {line}");
    }
    heading("sysctls under the root");
    for f in [
        "proc/sys/net/ipv4/ip_forward",
        "proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        println!("  {f} = {}", root.read(f).trim());
    }
    show_state(&root, &api);

    let iptables = root.dir.join("usr/bin/iptables");
    let dnat_follows = |addr: &str| {
        wait_until("the DNAT rule to follow", || {
            let now = root.run_with_env(&iptables, &["-t", "nat", "-S", "PREROUTING"]);
            now.contains(addr) && now.lines().filter(|l| l.contains("DNAT")).count() == 1
        })
    };

    heading("tailscaled reports new tailnet addresses (SelfChange)");
    root.notify_file("head-era-15-selfchange-address-change.json");
    dnat_follows("100.88.77.66");
    tail.show(&init);
    show_state(&root, &api);

    heading("tailscaled reports a new node identity (re-registered: new StableID and name)");
    root.notify_file("head-era-14-selfchange-new-stableid-and-name.json");
    wait_until("the secret to follow", || {
        api.secret("tailscale")
            .is_some_and(|s| s.get("device_id").map(String::as_str) == Some("nQ9xR2tCNTRL"))
    });
    dnat_follows("100.101.102.103");
    tail.show(&init);
    show_state(&root, &api);

    heading("SIGTERM (as a container runtime stops the container)");
    init.signal(nix::sys::signal::Signal::SIGTERM);
    let code = init.wait_code(Duration::from_secs(30));
    tail.show(&init);
    println!("\nts-init exited with status {code}");
    let log = init.log();
    assert!(
        !log.contains("tskey-demo-0123"),
        "demo: the auth key leaked into the log"
    );
    let kept = root.keep();
    println!(
        "(the root is kept for a look: {}; api requests: {})",
        kept.display(),
        Path::new(&kept).join("apiserver/requests.log").display()
    );
    drop(api);
    if code != 0 {
        std::process::exit(1);
    }
}
