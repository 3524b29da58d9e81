//! Unit tests of the plan/apply split against a recording fake host.

use super::*;
use std::cell::RefCell;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File(String),
    Dir,
    CharDev { major: u64, minor: u64, mode: u32 },
}

/// What the fake host was asked to do, in order (reads included, to prove what was touched).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Stat(PathBuf),
    Read(PathBuf),
    CreateDir(PathBuf, u32),
    Mknod(PathBuf, u64, u64, u32),
    Write(PathBuf, String),
}

#[derive(Default)]
struct FakeHost {
    nodes: BTreeMap<PathBuf, Node>,
    /// Paths whose stat/read fail with this error kind (other than not-found).
    broken: BTreeMap<PathBuf, io::ErrorKind>,
    /// Paths whose mutation fails with this error kind.
    refuse: BTreeMap<PathBuf, io::ErrorKind>,
    ops: RefCell<Vec<Op>>,
}

impl FakeHost {
    fn file(mut self, path: &str, content: &str) -> Self {
        self.nodes.insert(path.into(), Node::File(content.into()));
        self
    }
    fn node(mut self, path: &str, node: Node) -> Self {
        self.nodes.insert(path.into(), node);
        self
    }
    fn broken(mut self, path: &str, kind: io::ErrorKind) -> Self {
        self.broken.insert(path.into(), kind);
        self
    }
    fn refuse(mut self, path: &str, kind: io::ErrorKind) -> Self {
        self.refuse.insert(path.into(), kind);
        self
    }
    fn content(&self, path: &str) -> Option<&Node> {
        self.nodes.get(Path::new(path))
    }
    fn mutations(&self) -> Vec<Op> {
        self.ops
            .borrow()
            .iter()
            .filter(|op| !matches!(op, Op::Stat(_) | Op::Read(_)))
            .cloned()
            .collect()
    }
    fn reads(&self) -> Vec<PathBuf> {
        self.ops
            .borrow()
            .iter()
            .filter_map(|op| match op {
                Op::Read(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
    fn check(&self, path: &Path) -> io::Result<()> {
        match self.broken.get(path) {
            Some(kind) => Err(io::Error::from(*kind)),
            None => Ok(()),
        }
    }
    fn check_mutation(&self, path: &Path) -> io::Result<()> {
        match self.refuse.get(path) {
            Some(kind) => Err(io::Error::from(*kind)),
            None => Ok(()),
        }
    }
}

impl Probe for FakeHost {
    fn stat(&self, path: &Path) -> io::Result<()> {
        self.ops.borrow_mut().push(Op::Stat(path.into()));
        self.check(path)?;
        match self.nodes.get(path) {
            Some(_) => Ok(()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        self.ops.borrow_mut().push(Op::Read(path.into()));
        self.check(path)?;
        match self.nodes.get(path) {
            Some(Node::File(c)) => Ok(c.clone()),
            Some(_) => Err(io::ErrorKind::IsADirectory.into()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

impl Host for FakeHost {
    fn create_dir_all(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        self.ops.borrow_mut().push(Op::CreateDir(path.into(), mode));
        self.check_mutation(path)?;
        self.nodes.insert(path.into(), Node::Dir);
        Ok(())
    }
    fn mknod_char(&mut self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()> {
        self.ops
            .borrow_mut()
            .push(Op::Mknod(path.into(), major, minor, mode));
        self.check_mutation(path)?;
        self.nodes
            .insert(path.into(), Node::CharDev { major, minor, mode });
        Ok(())
    }
    fn write_existing(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        self.ops
            .borrow_mut()
            .push(Op::Write(path.into(), contents.into()));
        self.check_mutation(path)?;
        match self.nodes.get_mut(path) {
            Some(Node::File(c)) => {
                *c = contents.into();
                Ok(())
            }
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

const V4: &str = "/r/proc/sys/net/ipv4/ip_forward";
const V6: &str = "/r/proc/sys/net/ipv6/conf/all/forwarding";
const DIR: &str = "/r/dev/net";
const TUN: &str = "/r/dev/net/tun";

fn settings(vars: &[(&str, &str)]) -> Settings {
    let mut all = vec![("TS_TEST_ONLY_ROOT", "/r")];
    all.extend_from_slice(vars);
    Settings::from_vars(all).unwrap_or_else(|e| panic!("{vars:?}: {e}"))
}

fn kernel(routes: &str) -> Settings {
    settings(&[("TS_USERSPACE", "false"), ("TS_ROUTES", routes)])
}

/// A host where the tun device exists and both sysctls read `0`.
fn ready_host() -> FakeHost {
    FakeHost::default()
        .node(DIR, Node::Dir)
        .node(
            TUN,
            Node::CharDev {
                major: 10,
                minor: 200,
                mode: 0o600,
            },
        )
        .file(V4, "0\n")
        .file(V6, "0\n")
}

fn write(path: &str) -> Op {
    Op::Write(path.into(), "1".into())
}

#[test]
fn userspace_touches_nothing() {
    let mut host = ready_host();
    let report = run(
        &settings(&[("TS_ROUTES", "10.0.0.0/8,fd00::/64")]),
        &mut host,
    )
    .expect("userspace succeeds");
    assert_eq!(report, Report::default());
    assert!(host.ops.borrow().is_empty(), "{:?}", host.ops.borrow());
}

#[test]
fn kernel_without_routes_only_ensures_tun() {
    let mut host = FakeHost::default();
    let report = run(&kernel(""), &mut host).expect("ok");
    assert_eq!(
        host.mutations(),
        vec![
            Op::CreateDir(DIR.into(), 0o755),
            Op::Mknod(TUN.into(), 10, 200, 0o600)
        ]
    );
    assert!(host.reads().is_empty(), "no sysctl read without routes");
    assert_eq!(report.created_dir, Some(PathBuf::from(DIR)));
    assert_eq!(report.created_node, Some(PathBuf::from(TUN)));
}

#[test]
fn existing_dir_only_gets_the_node() {
    let mut host = FakeHost::default().node(DIR, Node::Dir);
    run(&kernel(""), &mut host).expect("ok");
    assert_eq!(
        host.mutations(),
        vec![Op::Mknod(TUN.into(), 10, 200, 0o600)]
    );
}

#[test]
fn existing_tun_of_any_kind_is_left_alone() {
    // Only "not exist" triggers creation, as in the reference (a bind-mounted file is fine).
    let mut host = FakeHost::default().node(DIR, Node::Dir).file(TUN, "");
    let report = run(&kernel(""), &mut host).expect("ok");
    assert!(host.mutations().is_empty());
    assert_eq!(report, Report::default());
}

#[test]
fn tun_stat_error_other_than_not_found_is_left_alone() {
    let mut host = FakeHost::default()
        .node(DIR, Node::Dir)
        .broken(TUN, io::ErrorKind::PermissionDenied);
    let plan = plan(&kernel(""), &host);
    let tun = plan.tun.as_ref().expect("kernel mode");
    assert!(matches!(tun.node_presence, Presence::Unknown(_)));
    assert!(!tun.creates_node());
    assert!(plan
        .explain()
        .iter()
        .any(|l| l.contains("cannot be checked") && l.contains(TUN)));
    plan.apply(&mut host).expect("ok");
    assert!(host.mutations().is_empty());
}

#[test]
fn routes_kernel_ipv4_writes_only_ipv4() {
    let mut host = ready_host();
    let report = run(&kernel("1.2.3.0/24,10.20.30.0/24"), &mut host).expect("ok");
    assert_eq!(host.reads(), vec![PathBuf::from(V4)]);
    assert_eq!(host.mutations(), vec![write(V4)]);
    assert_eq!(host.content(V4), Some(&Node::File("1".into())));
    assert_eq!(host.content(V6), Some(&Node::File("0\n".into())));
    assert_eq!(report.enabled, vec![PathBuf::from(V4)]);
}

#[test]
fn routes_kernel_ipv6_writes_only_ipv6() {
    let mut host = ready_host();
    run(&kernel("::/64,1::/64"), &mut host).expect("ok");
    assert_eq!(host.reads(), vec![PathBuf::from(V6)]);
    assert_eq!(host.mutations(), vec![write(V6)]);
}

#[test]
fn routes_kernel_all_families_writes_ipv4_first() {
    let mut host = ready_host();
    run(&kernel("::/64,1.2.3.0/24"), &mut host).expect("ok");
    assert_eq!(host.reads(), vec![PathBuf::from(V4), PathBuf::from(V6)]);
    assert_eq!(host.mutations(), vec![write(V4), write(V6)]);
}

#[test]
fn dest_ip_picks_its_family() {
    for (ip, path) in [("1.2.3.4", V4), ("fd00::1", V6), ("::ffff:1.2.3.4", V6)] {
        let mut host = ready_host();
        run(
            &settings(&[("TS_USERSPACE", "false"), ("TS_DEST_IP", ip)]),
            &mut host,
        )
        .expect("ok");
        assert_eq!(host.mutations(), vec![write(path)], "TS_DEST_IP={ip}");
    }
}

#[test]
fn tailnet_target_picks_its_family() {
    for (var, value, path) in [
        ("TS_TAILNET_TARGET_IP", "100.64.0.7", V4),
        ("TS_TAILNET_TARGET_IP", "fd7a:115c:a1e0::7", V6),
        ("TS_TAILNET_TARGET_FQDN", "db.tail1234.ts.net", V4),
    ] {
        let mut host = ready_host();
        run(
            &settings(&[("TS_USERSPACE", "false"), (var, value)]),
            &mut host,
        )
        .expect("ok");
        assert_eq!(host.mutations(), vec![write(path)], "{var}={value}");
    }
}

#[test]
fn already_one_is_not_rewritten() {
    for content in ["1", "1\n", " 1 \n", "\t1"] {
        let mut host = ready_host().file(V4, content).file(V6, "0");
        let report = run(&kernel("10.0.0.0/8,fd00::/64"), &mut host).expect("ok");
        assert_eq!(host.mutations(), vec![write(V6)], "content {content:?}");
        assert_eq!(report.already, vec![PathBuf::from(V4)]);
    }
}

#[test]
fn anything_but_one_is_rewritten() {
    for content in ["0", "", "2", "10", "01", "1 1", "true"] {
        let mut host = ready_host().file(V4, content);
        run(&kernel("10.0.0.0/8"), &mut host).expect("ok");
        assert_eq!(host.mutations(), vec![write(V4)], "content {content:?}");
    }
}

#[test]
fn unreadable_sysctl_fails_before_any_change() {
    // IPv6 disabled in the kernel: the v6 file does not exist. Nothing at all may change,
    // not the (readable) v4 file and not the tun device.
    let mut host = FakeHost::default().file(V4, "0");
    let err = run(&kernel("10.0.0.0/8,fd00::/64"), &mut host).expect_err("v6 unreadable");
    assert!(host.mutations().is_empty(), "{:?}", host.mutations());
    assert!(
        matches!(&err, PrepError::Forwarding { source: ForwardingError::Read { path, .. }, .. } if path == Path::new(V6)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "Failed to enable IP forwarding: reading \"{V6}\": {}",
            io::Error::from(io::ErrorKind::NotFound)
        )
    );
}

#[test]
fn refused_write_fails_with_reference_lines() {
    let mut host = ready_host().refuse(V4, io::ErrorKind::ReadOnlyFilesystem);
    let err = run(&kernel("10.0.0.0/8"), &mut host).expect_err("read-only");
    assert!(
        err.to_string().starts_with(&format!(
            "Failed to enable IP forwarding: enabling \"{V4}\": "
        )),
        "{err}"
    );
    assert_eq!(
        err.log_lines()[1..],
        [FORWARDING_NEEDED.to_string(), ADVICE_CONTAINER.to_string()]
    );
    assert_eq!(host.content(V4), Some(&Node::File("0\n".into())));
}

#[test]
fn kubernetes_gets_the_init_container_advice() {
    let s = settings(&[
        ("TS_USERSPACE", "false"),
        ("TS_ROUTES", "10.0.0.0/8"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
    ]);
    let mut host = ready_host().refuse(V4, io::ErrorKind::PermissionDenied);
    let err = run(&s, &mut host).expect_err("refused");
    let lines = err.log_lines();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("Failed to enable IP forwarding: enabling "));
    assert_eq!(lines[1], FORWARDING_NEEDED);
    assert_eq!(lines[2], ADVICE_KUBERNETES);
}

#[test]
fn failed_second_write_restores_the_first() {
    let mut host = ready_host().refuse(V6, io::ErrorKind::PermissionDenied);
    let err = run(&kernel("10.0.0.0/8,fd00::/64"), &mut host).expect_err("v6 refused");
    assert!(matches!(
        err,
        PrepError::Forwarding {
            source: ForwardingError::Enable { .. },
            ..
        }
    ));
    assert_eq!(
        host.mutations(),
        vec![write(V4), write(V6), Op::Write(V4.into(), "0\n".into())]
    );
    assert_eq!(host.content(V4), Some(&Node::File("0\n".into())));
}

#[test]
fn tun_failure_stops_before_sysctls() {
    for (refused, want_op) in [(DIR, "mkdir"), (TUN, "mknod")] {
        let mut host = FakeHost::default()
            .file(V4, "0")
            .refuse(refused, io::ErrorKind::PermissionDenied);
        let err = run(&kernel("10.0.0.0/8"), &mut host).expect_err("tun refused");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "Unable to create tuntap device file: {want_op} \"{refused}\": "
            )),
            "{msg}"
        );
        assert_eq!(err.log_lines(), vec![msg, TUN_ADVICE.to_string()]);
        assert!(
            !host
                .mutations()
                .iter()
                .any(|op| matches!(op, Op::Write(..))),
            "{:?}",
            host.mutations()
        );
    }
}

#[test]
fn explain_describes_exactly_what_apply_does() {
    let host = FakeHost::default().file(V4, "0\n").file(V6, "1\n");
    let plan = plan(&kernel("10.0.0.0/8,fd00::/64"), &host);
    let lines = plan.explain();
    let text = lines.join("\n");
    assert!(text.contains("mode: kernel networking"), "{text}");
    assert!(
        text.contains(&format!("tun: {DIR} missing: would create it (mode 0755)")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tun: {TUN} missing: would create it (char device 10,200, mode 0600)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("forwarding: IPv4 {V4} = \"0\": would write 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "forwarding: IPv6 {V6} = \"1\": already 1, no write"
        )),
        "{text}"
    );

    // The same plan, applied, does what it said.
    let mut host = host;
    plan.apply(&mut host).expect("ok");
    assert_eq!(
        host.mutations(),
        vec![
            Op::CreateDir(DIR.into(), 0o755),
            Op::Mknod(TUN.into(), 10, 200, 0o600),
            write(V4)
        ]
    );
}

#[test]
fn explain_shows_unreadable_and_userspace_and_no_forwarding() {
    let host = ready_host();
    let text = plan(&kernel(""), &host).explain().join("\n");
    assert!(text.contains(&format!("tun: {TUN} exists")), "{text}");
    assert!(text.contains("forwarding: not needed"), "{text}");

    let text = plan(&settings(&[("TS_ROUTES", "10.0.0.0/8")]), &host)
        .explain()
        .join("\n");
    assert!(text.contains("mode: userspace networking"), "{text}");
    assert!(!text.contains("forwarding:"), "{text}");

    let host = FakeHost::default();
    let text = plan(&kernel("fd00::/64"), &host).explain().join("\n");
    assert!(
        text.contains(&format!("forwarding: IPv6 {V6} unreadable (")),
        "{text}"
    );
    assert!(text.contains("would fail"), "{text}");
}

#[test]
fn real_host_roundtrip_in_a_temp_dir() {
    // RealHost against plain files (no privileges needed for these operations).
    let dir = std::env::temp_dir().join(format!("ts-prep-unit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let file = dir.join("a/b/value");
    let mut host = RealHost;
    host.create_dir_all(&dir.join("a/b"), 0o755).expect("mkdir");
    assert!(host.stat(&dir.join("a/b")).is_ok());
    assert_eq!(
        host.stat(&file).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    // write_existing never creates a file.
    assert!(host.write_existing(&file, "1").is_err());
    assert!(host.stat(&file).is_err());
    fs::write(&file, "0\n").expect("seed");
    host.write_existing(&file, "1").expect("write");
    assert_eq!(host.read(&file).expect("read"), "1");
    let mode = fs::metadata(dir.join("a/b"))
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    fs::remove_dir_all(&dir).expect("cleanup");
}
