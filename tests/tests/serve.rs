//! TS_SERVE_CONFIG end to end: ts-init starts ts-serve against the fake tailscaled, which
//! serves `serve-config` / `prefs` / `dns-config` like the real daemon (ETag / If-Match
//! included) and records every write (`FAKE_TAILSCALED_SERVE_LOG`).

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tsboot_tests::harness::{Root, HARNESS, HEAD, PATIENCE, SEED};

const STARTUP: &str = " Startup complete, waiting for shutdown signal";
/// Long enough for the 5 s poll to come round twice.
const POLL_PATIENCE: Duration = Duration::from_secs(25);

const HTTPS_CONFIG: &str = r#"{
  "TCP": {"443": {"HTTPS": true}},
  "Web": {"${TS_CERT_DOMAIN}:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}}}
}"#;

fn http_config(text: &str) -> String {
    format!(
        r#"{{"TCP":{{"80":{{"HTTP":true}}}},"Web":{{"${{TS_CERT_DOMAIN}}:80":{{"Handlers":{{"/":{{"Text":"{text}"}}}}}}}}}}"#
    )
}

struct Serve {
    root: Root,
    file: PathBuf,
}

impl Serve {
    /// A root whose serve config lives at `serve/serve.json` (or `rel`).
    fn new(test: &str, rel: &str) -> Serve {
        let root = Root::new(test);
        let file = root.dir.join(rel);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("serve dir");
        Serve { root, file }
    }

    fn env(
        &self,
        era: &tsboot_tests::harness::Era,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env = self.root.era_env(era);
        env.push(("TS_SERVE_CONFIG".into(), self.file.display().to_string()));
        env.push((
            "FAKE_TAILSCALED_SERVE_LOG".into(),
            self.log_path().display().to_string(),
        ));
        env.push(("RUST_LOG".into(), "info,ts_serve=debug".into()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn log_path(&self) -> PathBuf {
        self.root.dir.join("serve-writes.log")
    }

    /// What the fake recorded: `POST serve-config if-match=… <status> <body>` and
    /// `PATCH prefs <status> <body>`.
    fn writes(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn posts(&self) -> Vec<String> {
        self.writes()
            .into_iter()
            .filter(|l| l.starts_with("POST serve-config"))
            .collect()
    }

    /// The config the fake tailscaled holds now.
    fn current(&self) -> serde_json::Value {
        let answer = self.root.control("serve-config");
        serde_json::from_str(answer.trim_start_matches("ok").trim()).expect("stored config JSON")
    }

    fn wait_current(
        &self,
        init: &tsboot_tests::harness::Proc,
        want: &serde_json::Value,
        within: Duration,
    ) {
        let start = Instant::now();
        loop {
            let got = self.current();
            if got == *want {
                return;
            }
            if start.elapsed() > within {
                panic!(
                    "serve config never became\n{want}\nlast seen:\n{got}\nwrites: {:#?}\nstderr:\n{}",
                    self.writes(),
                    init.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write(&self, content: &str) {
        std::fs::write(&self.file, content).expect("write serve config");
    }

    /// An editor's save: a new file beside the old one, renamed over it.
    fn write_and_rename(&self, content: &str) {
        let tmp = self.file.with_extension("json.swp");
        std::fs::write(&tmp, content).expect("write temp");
        std::fs::rename(&tmp, &self.file).expect("rename over");
    }
}

fn http_applied(domain: &str, text: &str) -> serde_json::Value {
    serde_json::from_str(&http_config(text).replace("${TS_CERT_DOMAIN}", domain)).expect("json")
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Waits until at least `n` log lines contain `needle`.
fn wait_lines(init: &mut tsboot_tests::harness::Proc, needle: &str, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let log = init.log();
        if count_lines(&log, needle) >= n {
            return;
        }
        if let Some(status) = init.try_status() {
            panic!("exited ({status:?}) before {n}× {needle:?}\nstderr:\n{log}");
        }
        if start.elapsed() > within {
            panic!("fewer than {n} lines with {needle:?}\nstderr:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const UNCHANGED: &str = "unchanged, nothing sent";

#[test]
fn first_apply_clears_once_then_applies_the_file_with_the_cert_domain() {
    let s = Serve::new("serve-first", "serve/serve.json");
    s.write(HTTPS_CONFIG);
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    let want: serde_json::Value = serde_json::from_str(
        &HTTPS_CONFIG.replace("${TS_CERT_DOMAIN}", "test-node.tail1234.ts.net"),
    )
    .expect("json");
    // Readiness waits for the first reconcile: applied before "Startup complete".
    assert_eq!(s.current(), want, "stderr:\n{}", init.log());
    let posts = s.posts();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert_eq!(
        posts[0], "POST serve-config if-match=- 200 {}",
        "the clear comes first, once"
    );
    let (head, body) = posts[1].split_at(posts[1].find(" 200 ").expect("status"));
    assert!(
        head.starts_with("POST serve-config if-match=") && !head.ends_with("if-match=-"),
        "the apply carries the ETag it read: {head}"
    );
    let body: serde_json::Value = serde_json::from_str(&body[5..]).expect("posted JSON");
    assert_eq!(body, want);
    let log = init.log();
    assert_eq!(
        count_lines(&log, "serve proxy: unsetting previous config"),
        1,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, "serve proxy: applying serve config"),
        1,
        "{log}"
    );
    // No svc: services, nothing advertised: no prefs write at all.
    assert!(
        s.writes().iter().all(|w| !w.starts_with("PATCH")),
        "{:#?}",
        s.writes()
    );
}

#[test]
fn an_unchanged_result_sends_nothing() {
    let s = Serve::new("serve-noop", "serve/serve.json");
    s.write(&http_config("one"));
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    let before = s.root.read("serve-writes.log");
    // The same content again, then the same config spelled differently (whitespace, key case):
    // each is read (the debug line says so) and neither is sent.
    s.write(&http_config("one"));
    wait_lines(&mut init, UNCHANGED, 1, PATIENCE);
    let value: serde_json::Value = serde_json::from_str(&http_config("one")).expect("json");
    let respelled = serde_json::to_string_pretty(&value)
        .expect("json")
        .replace("\"TCP\"", "\"tcp\"");
    s.write(&respelled);
    wait_lines(&mut init, UNCHANGED, 2, PATIENCE);
    assert_eq!(
        s.root.read("serve-writes.log"),
        before,
        "nothing may be sent"
    );
    // A real change still goes out.
    s.write(&http_config("two"));
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "two"),
        PATIENCE,
    );
    assert_eq!(s.posts().len(), 3, "{:#?}", s.posts());
}

#[test]
fn a_file_replaced_by_rename_is_applied() {
    let s = Serve::new("serve-rename", "serve/serve.json");
    s.write(&http_config("old"));
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    s.write_and_rename(&http_config("renamed"));
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "renamed"),
        PATIENCE,
    );
    // And again: the watch is on the directory, so it survives the old inode's removal.
    s.write_and_rename(&http_config("renamed-again"));
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "renamed-again"),
        PATIENCE,
    );
    assert!(
        init.log().contains("inotify on directory"),
        "{}",
        init.log()
    );
}

/// A Kubernetes ConfigMap volume: `serve.json -> ..data/serve.json`, `..data -> ..<timestamp>`;
/// an update writes a new timestamped directory and renames a new `..data` link over the old.
#[test]
fn a_configmap_symlink_swap_is_applied() {
    let s = Serve::new("serve-configmap", "cm/serve.json");
    let dir = s.file.parent().expect("dir").to_path_buf();
    let version = |name: &str, content: &str| {
        std::fs::create_dir_all(dir.join(name)).expect("version dir");
        std::fs::write(dir.join(name).join("serve.json"), content).expect("version file");
    };
    version("..2026_01_01_00_00_00.1", &http_config("v1"));
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/serve.json", &s.file).expect("serve.json link");
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    assert_eq!(s.current(), http_applied("test-node.tail1234.ts.net", "v1"));

    version("..2026_01_01_00_05_00.2", &http_config("v2"));
    std::os::unix::fs::symlink("..2026_01_01_00_05_00.2", dir.join("..data_tmp")).expect("tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    std::fs::remove_dir_all(dir.join("..2026_01_01_00_00_00.1")).expect("old version");
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "v2"),
        PATIENCE,
    );
}

#[test]
fn an_invalid_or_missing_file_keeps_the_last_good_config_until_fixed() {
    let s = Serve::new("serve-invalid", "serve/serve.json");
    s.write(&http_config("good"));
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    let good = http_applied("test-node.tail1234.ts.net", "good");
    assert_eq!(s.current(), good);

    s.write("{\"TCP\": {\"80\": {\"HTTP\": true}");
    wait_lines(&mut init, "is not valid: not valid JSON", 1, PATIENCE);
    // The same problem again is not logged again.
    s.write("{\"TCP\": {\"80\": {\"HTTP\": true}");
    s.write(r#"{"TCP":{"80":{"HTTP":"yes"}}}"#);
    wait_lines(
        &mut init,
        "is not valid: not an ipn.ServeConfig",
        1,
        PATIENCE,
    );
    std::fs::remove_file(&s.file).expect("remove");
    wait_lines(&mut init, "no serve config at", 1, PATIENCE);
    assert_eq!(s.current(), good, "the last good config stays");
    assert!(
        init.try_status().is_none(),
        "a bad file never ends the container"
    );

    s.write(&http_config("fixed"));
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "fixed"),
        PATIENCE,
    );
    wait_lines(&mut init, "applied again, problem solved", 1, PATIENCE);
    let log = init.log();
    assert_eq!(
        count_lines(&log, "is not valid: not valid JSON"),
        1,
        "{log}"
    );
    assert_eq!(s.posts().len(), 3, "clear, good, fixed: {:#?}", s.posts());
}

#[test]
fn a_file_missing_at_start_is_applied_when_it_appears() {
    let s = Serve::new("serve-late", "serve/serve.json");
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    // Readiness does not wait for the file.
    init.expect_log(STARTUP);
    assert!(init.log().contains("no serve config at"), "{}", init.log());
    assert_eq!(
        s.posts(),
        vec!["POST serve-config if-match=- 200 {}".to_string()]
    );
    s.write_and_rename(&http_config("late"));
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "late"),
        PATIENCE,
    );
}

#[test]
fn without_inotify_a_5s_poll_applies_changes() {
    let s = Serve::new("serve-poll", "serve/serve.json");
    s.write(&http_config("before"));
    let mut init = s.root.start_init(
        &s.env(&SEED, &[("TS_TEST_ONLY_SERVE_NO_INOTIFY", "true")]),
        &[],
    );
    init.expect_log(STARTUP);
    assert!(
        init.log().contains("timer-only mode") && init.log().contains("every 5s"),
        "{}",
        init.log()
    );
    s.write(&http_config("polled"));
    s.wait_current(
        &init,
        &http_applied("test-node.tail1234.ts.net", "polled"),
        POLL_PATIENCE,
    );
    // Unchanged polls send nothing.
    wait_lines(&mut init, UNCHANGED, 1, POLL_PATIENCE);
    assert_eq!(s.posts().len(), 3, "{:#?}", s.posts());
}

#[test]
fn a_new_cert_domain_from_a_netmap_is_applied() {
    let s = Serve::new("serve-domain-seed", "serve/serve.json");
    s.write(HTTPS_CONFIG);
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    // The seed fixture renames the node: its netmap carries the new certificate domain.
    s.root.notify_file(SEED.identity_change);
    let want: serde_json::Value = serde_json::from_str(
        &HTTPS_CONFIG.replace("${TS_CERT_DOMAIN}", "new-name.tail1234.ts.net"),
    )
    .expect("json");
    s.wait_current(&init, &want, PATIENCE);
    assert!(init
        .log()
        .contains("certificate domain is now new-name.tail1234.ts.net"));
}

#[test]
fn head_without_cert_domain_drops_https_then_applies_it_when_a_domain_appears() {
    let s = Serve::new("serve-domain-head", "serve/serve.json");
    let both = r#"{
      "TCP": {"443": {"HTTPS": true}, "80": {"HTTP": true}},
      "Web": {"${TS_CERT_DOMAIN}:443": {"Handlers": {"/": {"Text": "tls"}}},
              "${TS_CERT_DOMAIN}:80": {"Handlers": {"/": {"Text": "plain"}}}}
    }"#;
    s.write(both);
    let mut init = s.root.start_init(&s.env(&HEAD, &[]), &[]);
    init.expect_log(STARTUP);
    // The HEAD login fixtures give the node no certificate domain: HTTPS is left out.
    let http_only = serde_json::json!({
        "TCP": {"80": {"HTTP": true}},
        "Web": {"no-https:80": {"Handlers": {"/": {"Text": "plain"}}}}
    });
    assert_eq!(s.current(), http_only, "{}", init.log());
    assert!(
        init.log()
            .contains("these HTTPS listeners of the serve config are left out: HTTPS port 443"),
        "{}",
        init.log()
    );
    // HTTPS gets enabled: a HEAD daemon sends only SelfChange; the domains come from dns-config.
    s.root.control("cert-domains test-node.tail1234.ts.net");
    s.root.notify_file(HEAD.identity_change);
    let full: serde_json::Value =
        serde_json::from_str(&both.replace("${TS_CERT_DOMAIN}", "test-node.tail1234.ts.net"))
            .expect("json");
    s.wait_current(&init, &full, PATIENCE);
}

#[test]
fn a_port_changing_its_kind_is_unset_first_then_applied() {
    let s = Serve::new("serve-kind", "serve/serve.json");
    s.write(&http_config("web"));
    let mut init = s.root.start_init(&s.env(&SEED, &[]), &[]);
    init.expect_log(STARTUP);
    let tcp = r#"{"TCP":{"80":{"TCPForward":"127.0.0.1:8080"}}}"#;
    s.write(tcp);
    s.wait_current(&init, &serde_json::from_str(tcp).expect("json"), PATIENCE);
    let posts = s.posts();
    assert_eq!(posts.len(), 4, "clear, http, unset, tcp: {posts:#?}");
    assert!(posts[2].ends_with(" 200 {}"), "{posts:#?}");
    assert!(
        posts.iter().all(|p| p.contains(" 200 ")),
        "tailscaled never refused: {posts:#?}"
    );
}

const SERVICE_CONFIG: &str = r#"{
  "Services": {
    "svc:web": {"TCP": {"80": {"HTTP": true}}, "Web": {"web.tail1234.ts.net:80": {"Handlers": {"/": {"Text": "svc"}}}}},
    "svc:db": {"TCP": {"5432": {"TCPForward": "127.0.0.1:5432"}}}
  }
}"#;

#[test]
fn services_are_advertised_once_applied_and_withdrawn_at_shutdown() {
    let s = Serve::new("serve-services", "serve/serve.json");
    s.write(SERVICE_CONFIG);
    let mut init = s
        .root
        .start_init(&s.env(&SEED, &[("TS_SHUTDOWN_GRACE", "4s")]), &[]);
    init.expect_log(STARTUP);
    assert_eq!(s.root.control("advertised"), "ok svc:db svc:web");
    let writes = s.writes();
    let patch = writes
        .iter()
        .position(|w| w.starts_with("PATCH prefs"))
        .expect("advertised");
    let last_post = writes
        .iter()
        .rposition(|w| w.starts_with("POST serve-config"))
        .expect("applied");
    assert!(
        last_post < patch,
        "advertised after the config is applied: {writes:#?}"
    );
    assert_eq!(
        writes[patch],
        r#"PATCH prefs 200 {"AdvertiseServices":["svc:db","svc:web"],"AdvertiseServicesSet":true}"#
    );

    init.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(init.wait_code(Duration::from_secs(15)), 0, "{}", init.log());
    assert_eq!(
        s.root.read("serve-writes.log").lines().last(),
        Some(r#"PATCH prefs 200 {"AdvertiseServices":null,"AdvertiseServicesSet":true}"#)
    );
    let log = init.log();
    assert!(
        log.contains("unadvertising services: [svc:db svc:web]"),
        "{log}"
    );
    // ts-init waited for ts-serve's drain (half the 4 s grace) before stopping tailscaled.
    assert!(log.contains("waiting 2s for control to move"), "{log}");
    assert!(!log.contains("SIGKILL"), "{log}");
}

#[test]
fn auto_advertisement_off_leaves_the_prefs_alone() {
    let s = Serve::new("serve-noadvertise", "serve/serve.json");
    s.write(SERVICE_CONFIG);
    let mut init = s.root.start_init(
        &s.env(
            &SEED,
            &[("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT", "false")],
        ),
        &[],
    );
    init.expect_log(STARTUP);
    assert_eq!(s.root.control("advertised").trim(), "ok");
    assert!(
        !s.writes().iter().any(|w| w.starts_with("PATCH")),
        "{:#?}",
        s.writes()
    );
    assert!(
        !init
            .log()
            .contains("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT is set but not supported"),
        "{}",
        init.log()
    );
}

#[test]
fn ts_serve_alone_explains_and_refuses_a_missing_variable() {
    let s = Serve::new("serve-alone", "serve/serve.json");
    s.write(HTTPS_CONFIG);
    let bin = tsboot_tests::bin_path("ts-serve");
    let run = |env: &[(String, String)], args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run ts-serve")
    };
    let env = s.env(&HARNESS, &[]);
    let out = run(&env, &["--explain"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "serve config file: ",
        "POST /localapi/v0/serve-config {}",
        "inotify on directory",
        "now: the file is valid: 1 TCP port(s), 1 web host(s)",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let help = run(&env, &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for var in [
        "TS_SERVE_CONFIG",
        "TS_SOCKET",
        "TS_READY_FD",
        "TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT",
    ] {
        assert!(help.contains(var), "{var} in --help:\n{help}");
    }
    let no_var: Vec<_> = env
        .iter()
        .filter(|(k, _)| k != "TS_SERVE_CONFIG")
        .cloned()
        .collect();
    let out = run(&no_var, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("TS_SERVE_CONFIG is not set"));
    let bad = [
        no_var.clone(),
        vec![
            ("TS_SERVE_CONFIG".into(), "/x".into()),
            (
                "TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT".into(),
                "sometimes".into(),
            ),
        ],
    ]
    .concat();
    let out = run(&bad, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT=\"sometimes\""));
}

/// With only ts-serve as a watcher, it guards the Running state (ts-auth does not stay), and
/// ts-init's plan says so.
#[test]
fn ts_serve_guards_running_and_the_plan_names_it() {
    use tsboot_tests::harness::{cmdline_contains, processes};
    let s = Serve::new("serve-guard", "serve/serve.json");
    s.write(&http_config("x"));
    let env = s.env(&SEED, &[]);
    let plan = std::process::Command::new(tsboot_tests::bin_path("ts-init"))
        .arg("--explain")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("ts-init --explain");
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("start watcher ts-serve (serve config from TS_SERVE_CONFIG)"),
        "{plan}"
    );
    assert!(
        plan.contains("Running state (exit 1 when tailscaled leaves it): ts-serve (--guard)"),
        "{plan}"
    );
    assert!(
        !plan.contains("TS_SERVE_CONFIG is set but not supported"),
        "{plan}"
    );

    let mut init = s.root.start_init(&env, &[]);
    init.expect_log(STARTUP);
    let alive = |name: &str| {
        processes().into_iter().any(|(pid, ppid, state)| {
            ppid == init.pid() && state != 'Z' && cmdline_contains(pid, name)
        })
    };
    let start = Instant::now();
    while alive("ts-auth") {
        assert!(start.elapsed() < PATIENCE, "ts-auth stays resident");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(alive("ts-serve"), "{}", init.log());
    s.root.control("state 2");
    assert_eq!(init.wait_code(Duration::from_secs(15)), 1, "{}", init.log());
    let log = init.log();
    assert!(
        log.contains("tailscaled left running state (now in state \"NeedsLogin\"), exiting"),
        "{log}"
    );
    assert!(log.contains("watcher ts-serve failed"), "{log}");
}

/// The fake's serve-config endpoint keeps tailscaled's contract, so tests against it mean
/// something: ETag on GET, 412 on a stale If-Match, 500 without a netmap or for a port that
/// changes its kind, and the shared LocalAPI client sees exactly those answers.
#[test]
fn the_fake_serve_config_endpoint_behaves_like_tailscaleds() {
    use http::Method;
    use ts_localapi::localapi::LocalApi;
    use tsboot_tests::fake_tailscaled_ctl::{fixture, FakeTailscaled};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Logged out: no netmap, so tailscaled refuses any serve config.
    let fake = FakeTailscaled::start("serve-endpoint-nonetmap", None, &[]);
    let api = LocalApi::new(&fake.socket);
    let r = rt
        .block_on(api.call(
            Method::POST,
            "/localapi/v0/serve-config",
            None,
            Some(b"{}".to_vec()),
        ))
        .expect("call");
    assert_eq!(r.status, 500);
    assert!(r.body_excerpt(200).contains("netMap is nil"), "{r:?}");
    drop(fake);

    let fake = FakeTailscaled::start(
        "serve-endpoint",
        Some(&fixture(
            "head-era-13-initial-running-with-netmap-mask10.json",
        )),
        &[],
    );
    let api = LocalApi::new(&fake.socket);
    let call = |m: Method, tag: Option<&str>, body: Option<&str>| {
        rt.block_on(api.call(
            m,
            "/localapi/v0/serve-config",
            tag,
            body.map(|b| b.as_bytes().to_vec()),
        ))
        .expect("call")
    };
    let first = call(Method::GET, None, None);
    assert_eq!((first.status, first.body.as_slice()), (200, &b"null"[..]));
    let tag = first.etag.clone().expect("Etag header");
    let http = r#"{"TCP":{"80":{"HTTP":true}}}"#;
    assert_eq!(call(Method::POST, Some("stale"), Some(http)).status, 412);
    assert_eq!(call(Method::POST, Some(&tag), Some(http)).status, 200);
    // The tag it was written with is stale now.
    assert_eq!(call(Method::POST, Some(&tag), Some("{}")).status, 412);
    let second = call(Method::GET, None, None);
    assert_ne!(second.etag, first.etag);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&second.body).expect("json"),
        serde_json::from_str::<serde_json::Value>(http).expect("json")
    );
    let r = call(
        Method::POST,
        None,
        Some(r#"{"TCP":{"80":{"TCPForward":"127.0.0.1:1"}}}"#),
    );
    assert_eq!(r.status, 500);
    assert!(
        r.body_excerpt(200).contains("port 80 is already serving"),
        "{r:?}"
    );
    assert_eq!(call(Method::POST, None, Some("[]")).status, 500);
    assert_eq!(call(Method::PUT, None, None).status, 405);
}
