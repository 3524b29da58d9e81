//! The images of `docker/Dockerfile`, run with podman as a user would (`docker/images.sh build`
//! makes them; `docker/images.sh podman` is the podman with the storage and runtime options
//! used there).
//!
//! Network rule: podman, headscale and every container run inside network namespaces the test
//! created (`tsboot_tests::real`), with no route out; a container's `--network=host` is that
//! namespace. The real tailscaled in the drop-in image gets `--no-logs-no-support` and the lab's
//! login server, and headscale hands out the lab's own DERP map only.
//!
//! Without root, podman or the images, each test prints `SKIPPED: <why>` and passes; CI builds
//! the images first and sets `TSBOOT_REQUIRE_IMAGES=1`, which turns a skip into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use tsboot_tests::fake_tailscaled_ctl::{fixture, FakeTailscaled};
use tsboot_tests::harness::{children_of, processes, temp_dir, HARNESS};
use tsboot_tests::real::{self_ipv4, wait_for, which, Lab, Netns, REAL_PATIENCE};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Hard limits runc can set on every machine (it fails "setting rlimit" when asked to keep
/// limits above what the host allows); nproc leaves room for the zombie flood.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

fn images_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/images.sh")
}

/// Image names by Dockerfile target, from `docker/images.sh names`.
struct Images {
    names: Vec<(String, String)>,
}

impl Images {
    fn get(&self, target: &str) -> &str {
        self.names
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, i)| i.as_str())
            .unwrap_or_else(|| panic!("docker/images.sh names has no target {target}"))
    }
}

/// The built images and a lab with one node `c` named `lab`, or `None` after `SKIPPED: <why>`.
fn images_and_lab(test: &str, lab: &str) -> Option<(Images, Lab)> {
    let images = images(test)?;
    Some((images, Lab::new(lab, &["c"])?))
}

/// The built images, or `None` after `SKIPPED: <why>` (a failure when CI requires them).
fn images(test: &str) -> Option<Images> {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root (podman, network namespaces)".to_string())
    } else {
        ["podman", "runc", "ip", "nsenter", "iptables-legacy"]
            .into_iter()
            .find(|t| which(t).is_none())
            .map(|tool| format!("{tool} not installed (.ci/run installs it)"))
    };
    let names = match why {
        Some(_) => Vec::new(),
        None => {
            let out = Command::new("bash")
                .arg(images_sh())
                .arg("names")
                .output()
                .expect("docker/images.sh names");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(t, i)| (t.to_string(), i.to_string()))
                .collect()
        }
    };
    let why = why.or_else(|| {
        names
            .iter()
            .find(|(_, image)| {
                !podman()
                    .args(["image", "exists", image])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .map(|(_, image)| format!("image {image} not built (run: bash docker/images.sh build)"))
    });
    match why {
        None => Some(Images { names }),
        Some(why) if std::env::var("TSBOOT_REQUIRE_IMAGES").is_ok_and(|v| v == "1") => {
            panic!("{test}: TSBOOT_REQUIRE_IMAGES=1 but {why}")
        }
        Some(why) => {
            println!("SKIPPED: {test}: {why}");
            None
        }
    }
}

/// podman with the options the images were built with (storage, runtime, cgroups).
fn podman() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(images_sh()).arg("podman").stdin(Stdio::null());
    cmd
}

fn podman_out(args: &[&str]) -> Result<String, String> {
    stdout_of(podman(), args)
}

/// `cmd args`: its stdout, or an error with its status and output.
fn stdout_of(mut cmd: Command, args: &[&str]) -> Result<String, String> {
    let out = cmd.args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "podman {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A container started by the test, removed (with everything in it) when dropped.
struct Container {
    name: String,
    /// The network namespace it was started in (its `--network=host`).
    netns: String,
}

impl Container {
    /// `podman run -d --network=host <args> <image> <cmd>` inside `ns`.
    fn run(ns: &Netns, args: &[&str], image: &str, cmd: &[&str]) -> Container {
        let name = format!(
            "tsboot-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts runc needs.
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("bash")
            .arg(images_sh())
            .args(["podman", "run", "-d", "--name", &name, "--network=host"])
            .args(ULIMITS)
            .args(args)
            .arg(image)
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("podman run");
        let c = Container {
            name,
            netns: ns.name.clone(),
        };
        assert!(
            out.status.success(),
            "podman run {image} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    fn logs(&self) -> String {
        let out = podman()
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn exec(&self, cmd: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        podman_out(&args)
    }

    /// podman from inside the container's network namespace: a `--network=host` container
    /// has none of its own, so what `podman exec` or `podman healthcheck run` starts gets the
    /// caller's, and a check of 127.0.0.1 must be made from there.
    fn podman_in_netns(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("bash")
            .arg(images_sh())
            .arg("podman")
            .stdin(Stdio::null());
        stdout_of(cmd, args)
    }

    fn inspect(&self, format: &str) -> String {
        podman_out(&["inspect", "--format", format, &self.name])
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_string()
    }

    /// The host pid of the container's PID 1.
    fn pid1(&self) -> i32 {
        self.inspect("{{.State.Pid}}")
            .parse()
            .unwrap_or_else(|e| panic!("container pid: {e}"))
    }

    /// Waits for a log line containing `needle`; fails if the container exits first.
    fn wait_log(&self, needle: &str) {
        wait_for(
            REAL_PATIENCE,
            &format!("{needle:?} in the container's log"),
            || {
                if self.logs().contains(needle) {
                    return Some(());
                }
                if self.inspect("{{.State.Running}}") != "true" {
                    panic!(
                        "container exited ({}) before logging {needle:?}\n{}",
                        self.inspect("{{.State.ExitCode}}"),
                        self.logs()
                    );
                }
                None
            },
            || self.logs(),
        )
    }

    /// Waits for the container to exit; its exit code.
    fn wait_exit(&self) -> i32 {
        wait_for(
            REAL_PATIENCE,
            "the container to exit",
            || (self.inspect("{{.State.Running}}") == "false").then_some(()),
            || self.logs(),
        );
        self.inspect("{{.State.ExitCode}}")
            .parse()
            .unwrap_or_else(|e| panic!("exit code: {e}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("container {} log:\n{}", self.name, self.logs());
        }
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A namespace of the test's own with only its loopback (no route anywhere).
fn lone_netns(tag: &str) -> Netns {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    Netns::new(format!("tsi{}{tag}{n}", std::process::id() % 100_000))
}

fn sysctl_in(ns: &Netns, key: &str) -> String {
    let out = ns
        .command("sysctl")
        .args(["-n", key])
        .output()
        .expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The drop-in image booted against the lab's headscale, userspace networking.
fn boot_drop_in(lab: &Lab, images: &Images, hostname: &str, extra: &[&str]) -> Container {
    let key = lab.preauth_key(false);
    let env = [
        format!("TS_AUTHKEY={key}"),
        format!(
            "TS_EXTRA_ARGS=--login-server={} --hostname={hostname}",
            lab.login_server()
        ),
        "TS_TAILSCALED_EXTRA_ARGS=--no-logs-no-support".to_string(),
        "TS_NO_LOGS_NO_SUPPORT=true".to_string(),
        "TS_DEBUG_USE_DERP_HTTP=1".to_string(),
    ];
    let mut args = Vec::new();
    for e in &env {
        args.extend(["-e", e.as_str()]);
    }
    args.extend_from_slice(extra);
    let c = Container::run(lab.node("c"), &args, images.get("tsboot"), &[]);
    c.wait_log("Startup complete, waiting for shutdown signal");
    c
}

/// `tailscale status --json` through `podman exec`, once it reports Running with an address.
fn wait_running(c: &Container) -> (serde_json::Value, String) {
    wait_for(
        REAL_PATIENCE,
        "tailscale status: Running with a tailnet IPv4",
        || {
            let status: serde_json::Value =
                serde_json::from_str(&c.exec(&["tailscale", "status", "--json"]).ok()?).ok()?;
            if status.get("BackendState")?.as_str()? != "Running" {
                return None;
            }
            let ip = self_ipv4(&status)?;
            Some((status, ip))
        },
        || c.logs(),
    )
}

/// The program a process runs: the file name of its argv[0].
fn program_of(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    argv0.rsplit('/').next().unwrap_or_default().to_string()
}

/// Host pid of the child of the container's init that runs `program`.
fn child_running(c: &Container, program: &str) -> i32 {
    let init = c.pid1();
    wait_for(
        REAL_PATIENCE,
        &format!("{program} under the container's init"),
        || {
            children_of(init)
                .into_iter()
                .find(|p| program_of(*p) == program)
        },
        || c.logs(),
    )
}

/// The pid a host process has inside its own PID namespace (the last `NSpid` field).
fn pid_in_namespace(host_pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{host_pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no NSpid for {host_pid}"))
}

#[test]
fn drop_in_image_boots_to_running_answers_tailscale_status_reaps_and_stops_with_0() {
    let Some((images, lab)) = images_and_lab("image drop-in boot", "image-boot") else {
        return;
    };
    let c = boot_drop_in(&lab, &images, "tsboot-image", &[]);

    // `tailscale status` as a user runs it: no --socket, through the D17 symlink.
    let (status, ip) = wait_running(&c);
    assert!(ip.starts_with("100."), "{status}");
    let plain = c
        .exec(&["tailscale", "status"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        plain.contains(&ip) && plain.contains("tsboot-image"),
        "tailscale status:\n{plain}"
    );
    assert!(
        lab.node_named("tsboot-image").is_some(),
        "headscale does not list the node: {:#?}",
        lab.nodes()
    );

    // Zombie flood: orphans re-parented to ts-init (PID 1 inside), all dying at once.
    const ORPHANS: usize = 300;
    let init = c.pid1();
    c.exec(&[
        "sh",
        "-c",
        &format!("i=0; while [ $i -lt {ORPHANS} ]; do sleep 1000 & i=$((i+1)); done"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let orphans = || {
        children_of(init)
            .into_iter()
            .filter(|p| program_of(*p) == "sleep")
            .count()
    };
    wait_for(
        REAL_PATIENCE,
        "every orphan re-parented to ts-init",
        || (orphans() == ORPHANS).then_some(()),
        || format!("{} of {ORPHANS} sleep processes under ts-init", orphans()),
    );
    c.exec(&["sh", "-c", "kill -KILL $(pidof sleep)"])
        .unwrap_or_else(|e| panic!("{e}"));
    let zombies = || {
        processes()
            .into_iter()
            .filter(|(_, ppid, state)| *ppid == init && *state == 'Z')
            .count()
    };
    wait_for(
        REAL_PATIENCE,
        "ts-init to reap every orphan",
        || (orphans() == 0 && zombies() == 0).then_some(()),
        || format!("{} orphans, {} zombies left", orphans(), zombies()),
    );
    assert_eq!(
        c.inspect("{{.State.Running}}"),
        "true",
        "the flood ended the container:\n{}",
        c.logs()
    );
    wait_running(&c);

    // `podman stop`: SIGTERM, and podman's own SIGKILL only after 30 s, longer than
    // TS_SHUTDOWN_GRACE (20 s): status 0 means everything stopped within the grace.
    podman_out(&["stop", "-t", "30", &c.name]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.wait_exit(), 0, "{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains("Received SIGTERM from container runtime, shutting down tailscaled"),
        "{logs}"
    );
    assert!(logs.contains("Exiting with status 0"), "{logs}");
}

/// The healthcheck command of docker/compose.yaml (`wget` of /healthz inside the container), as
/// podman's `--health-cmd`.
fn compose_healthcheck() -> String {
    let compose = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yaml"),
    )
    .expect("docker/compose.yaml");
    let test = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("test: "))
        .expect("a healthcheck test in docker/compose.yaml");
    let mut argv: Vec<String> =
        serde_json::from_str(test).expect("the healthcheck test is a JSON array");
    assert_eq!(argv.remove(0), "CMD", "{test}");
    serde_json::to_string(&argv).expect("json")
}

#[test]
fn drop_in_image_answers_the_compose_healthcheck_through_ts_health() {
    let Some((images, lab)) = images_and_lab("image healthcheck", "image-health") else {
        return;
    };
    let cmd = compose_healthcheck();
    let c = boot_drop_in(
        &lab,
        &images,
        "tsboot-health",
        &[
            "-e",
            "TS_ENABLE_HEALTH_CHECK=true",
            "--health-cmd",
            &cmd,
            // No timer (this machine has no systemd): the test runs the check itself.
            "--health-interval",
            "disable",
            // As docker/compose.yaml: a check that hangs counts as failed after 3 s.
            "--health-timeout",
            "3s",
        ],
    );
    wait_running(&c);
    // ts-health answers 200 once the node is Running and every watcher reconciled; podman
    // runs the check inside the container and exits 0 only when it passed.
    wait_for(
        REAL_PATIENCE,
        "`podman healthcheck run` to report healthy",
        || c.podman_in_netns(&["healthcheck", "run", &c.name]).ok(),
        || {
            format!(
                "{:?}\n{}",
                c.podman_in_netns(&["healthcheck", "run", &c.name]),
                c.logs()
            )
        },
    );
    assert!(
        c.logs().contains("/healthz"),
        "ts-health did not say where it listens:\n{}",
        c.logs()
    );
    podman_out(&["stop", "-t", "30", &c.name]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.wait_exit(), 0, "{}", c.logs());
}

#[test]
fn drop_in_image_reports_tailscaled_killed_by_sigkill_as_137() {
    let Some((images, lab)) = images_and_lab("image tailscaled SIGKILL", "image-kill") else {
        return;
    };
    let c = boot_drop_in(&lab, &images, "tsboot-kill", &[]);
    wait_running(&c);
    let tailscaled = child_running(&c, "tailscaled");
    let inner = pid_in_namespace(tailscaled);
    // From inside the container, as `docker exec ... kill -9` would.
    c.exec(&["sh", "-c", &format!("kill -KILL {inner}")])
        .unwrap_or_else(|e| panic!("{e}"));
    // The exit-status table: tailscaled killed by signal N -> 128+N.
    assert_eq!(c.wait_exit(), 137, "{}", c.logs());
    assert!(c.logs().contains("Exiting with status 137"), "{}", c.logs());
}

#[test]
fn prep_image_creates_tun_and_sysctls_of_its_own_network_namespace() {
    let Some(images) = images("image ts-prep") else {
        return;
    };
    let ns = lone_netns("prep");
    // A new namespace copies IPv4 settings from the host's; start from "off" so ts-prep has
    // something to do.
    for key in ["net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"] {
        let st = ns.command("sysctl").args(["-qw", key]).status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "sysctl -w {key} in the namespace"
        );
    }
    assert_eq!(sysctl_in(&ns, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl_in(&ns, "net.ipv6.conf.all.forwarding"), "0");
    // An empty /dev/net from the host, so the node ts-prep makes can be looked at afterwards.
    let devnet = temp_dir("img-devnet");
    let mount = format!("{}:/dev/net", devnet.display());
    let c = Container::run(
        &ns,
        &[
            "--privileged",
            "-v",
            &mount,
            "-e",
            "TS_USERSPACE=false",
            "-e",
            "TS_ROUTES=10.1.0.0/24,fd00:1::/64",
        ],
        images.get("ts-prep"),
        &[],
    );
    assert_eq!(c.wait_exit(), 0, "{}", c.logs());
    let meta = std::fs::metadata(devnet.join("tun"))
        .unwrap_or_else(|e| panic!("no tun node: {e}\n{}", c.logs()));
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(meta.file_type().is_char_device(), "{meta:?}");
    let rdev = meta.rdev();
    assert_eq!(
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)),
        (10, 200)
    );
    assert_eq!(sysctl_in(&ns, "net.ipv4.ip_forward"), "1", "{}", c.logs());
    assert_eq!(
        sysctl_in(&ns, "net.ipv6.conf.all.forwarding"),
        "1",
        "{}",
        c.logs()
    );
    let _ = std::fs::remove_dir_all(&devnet);
}

/// The fake tailscaled's directory as the container sees it.
const SOCK_DIR: &str = "/var/run/tailscale-sock";

fn fake_tailscaled_for_containers(tag: &str) -> FakeTailscaled {
    let tsd = FakeTailscaled::start(tag, Some(&fixture(HARNESS.login)), &[]);
    // As the real tailscaled does: any local user may connect (ts-kubestate runs as 65532).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tsd.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    std::fs::set_permissions(&tsd.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    tsd
}

fn nat_rules(ns: &Netns) -> Vec<String> {
    let out = ns
        .command("iptables-legacy")
        .args(["-t", "nat", "-S", "PREROUTING"])
        .output()
        .expect("iptables-legacy");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("DNAT"))
        .map(str::to_string)
        .collect()
}

#[test]
fn proxy_rules_image_keeps_the_dnat_rule_against_the_fake_tailscaled() {
    let Some(images) = images("image ts-proxy-rules") else {
        return;
    };
    let ns = lone_netns("pr");
    let tsd = fake_tailscaled_for_containers("img-pr");
    let mount = format!("{}:{SOCK_DIR}", tsd.dir.display());
    let socket = format!("TS_SOCKET={SOCK_DIR}/tailscaled.sock");
    let c = Container::run(
        &ns,
        &[
            // podman's default capability set, unlike Docker's, lacks NET_RAW, which the
            // legacy iptables backend needs.
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "NET_RAW",
            "-v",
            &mount,
            "-e",
            &socket,
            "-e",
            "TS_USERSPACE=false",
            "-e",
            "TS_DEST_IP=10.0.0.5",
        ],
        images.get("ts-proxy-rules"),
        &[],
    );
    let want = |ip: &str| {
        vec![format!(
            "-A PREROUTING -d {ip}/32 -j DNAT --to-destination 10.0.0.5"
        )]
    };
    wait_for(
        REAL_PATIENCE,
        "the DNAT rule in the namespace's nat table",
        || (nat_rules(&ns) == want(HARNESS.ipv4)).then_some(()),
        || format!("rules: {:?}\n{}", nat_rules(&ns), c.logs()),
    );
    // The node's address changes: the rule follows, still exactly one.
    let running = std::fs::read_to_string(fixture(HARNESS.login)).expect("fixture");
    let moved = running.replace("100.64.0.1/32", "100.64.0.9/32");
    tsd.control(&format!("notify {}", moved.trim()));
    wait_for(
        REAL_PATIENCE,
        "the DNAT rule for the new address",
        || (nat_rules(&ns) == want("100.64.0.9")).then_some(()),
        || format!("rules: {:?}\n{}", nat_rules(&ns), c.logs()),
    );
    podman_out(&["stop", "-t", "30", &c.name]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.wait_exit(), 0, "{}", c.logs());
}

#[test]
fn kubestate_image_preflights_and_writes_device_info_against_the_doubles() {
    let Some((images, lab)) = images_and_lab("image ts-kubestate", "image-kube") else {
        return;
    };
    let kube = lab.fake_apiserver(
        "c",
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key"}}]}"#,
    );
    let tsd = fake_tailscaled_for_containers("img-ks");
    let sa = format!(
        "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
        kube.service_account().display()
    );
    let sock = format!("{}:{SOCK_DIR}", tsd.dir.display());
    let mut args: Vec<String> = vec![
        "-v".into(),
        sa,
        "-v".into(),
        sock,
        "-e".into(),
        format!("TS_SOCKET={SOCK_DIR}/tailscaled.sock"),
    ];
    for (k, v) in &kube.env {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // preflight: RBAC self-check and the secret's authkey, as a nonroot container.
    let pre = Container::run(
        lab.node("c"),
        &args,
        images.get("ts-kubestate"),
        &["preflight"],
    );
    assert_eq!(pre.wait_exit(), 0, "{}", pre.logs());
    assert_eq!(pre.inspect("{{.Config.User}}"), "65532:65532");

    let w = Container::run(
        lab.node("c"),
        &args,
        images.get("ts-kubestate"),
        &["watch", "--can-patch", "true"],
    );
    wait_for(
        REAL_PATIENCE,
        "device_id and device_fqdn in the secret",
        || {
            let d = kube.secret("tailscale")?;
            (d.get("device_id").map(String::as_str) == Some(HARNESS.stable_id)
                && d.get("device_fqdn").map(String::as_str) == Some(HARNESS.fqdn))
            .then_some(())
        },
        || format!("secret: {:?}\n{}", kube.secret("tailscale"), w.logs()),
    );
    podman_out(&["stop", "-t", "30", &w.name]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.wait_exit(), 0, "{}", w.logs());
}

#[test]
fn serve_image_applies_the_serve_config_against_the_fake_tailscaled() {
    let Some(images) = images("image ts-serve") else {
        return;
    };
    let ns = lone_netns("sv");
    let tsd = fake_tailscaled_for_containers("img-sv");
    let config_dir = temp_dir("img-serve");
    let config = r#"{"TCP":{"80":{"HTTP":true}},"Web":{"tsboot-image:80":{"Handlers":{"/":{"Text":"hello from the image"}}}}}"#;
    std::fs::write(config_dir.join("serve.json"), config).expect("serve config");
    let sock = format!("{}:{SOCK_DIR}", tsd.dir.display());
    let conf = format!("{}:/config:ro", config_dir.display());
    let c = Container::run(
        &ns,
        &[
            "-v",
            &sock,
            "-v",
            &conf,
            "-e",
            &format!("TS_SOCKET={SOCK_DIR}/tailscaled.sock"),
            "-e",
            "TS_SERVE_CONFIG=/config/serve.json",
        ],
        images.get("ts-serve"),
        &[],
    );
    let want: serde_json::Value = serde_json::from_str(config).expect("json");
    wait_for(
        REAL_PATIENCE,
        "the serve config in the fake tailscaled",
        || {
            let answer = tsd.control("serve-config");
            let got: serde_json::Value =
                serde_json::from_str(answer.trim_start_matches("ok").trim()).ok()?;
            (got == want).then_some(())
        },
        || format!("{}\n{}", tsd.control("serve-config"), c.logs()),
    );
    podman_out(&["stop", "-t", "30", &c.name]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.wait_exit(), 0, "{}", c.logs());
    let _ = std::fs::remove_dir_all(&config_dir);
}
