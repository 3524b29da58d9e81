//! Every IPN bus fixture (each `.json`, every line of each `.ndjson`) parsed with
//! `ts_localapi::notify`, each with its own expectation: state, identity, addresses, errors,
//! login URL, prefs. A fixture without an expectation fails the test, so new fixtures cannot
//! slip in untested.

use std::collections::BTreeMap;
use std::path::PathBuf;
use ts_localapi::notify::{BackendState, Notify, SelfIdentity, FELL_BEHIND};

const A4: &str = "100.101.102.103/32";
const A6: &str = "fd7a:115c:a1e0:ab12:4843:cd96:6265:6667/128";
const B4: &str = "100.88.77.66/32";
const B6: &str = "fd7a:115c:a1e0:ab12:4843:cd96:6258:4d42/128";
const ID1: (&str, &str) = ("n5Ez6W7CNTRL", "test-node.tail1234.ts.net.");
const ID2: (&str, &str) = ("nQ9xR2tCNTRL", "new-name.tail1234.ts.net.");
const URL: &str = "https://login.tailscale.com/a/1f2e3d4c5b6a7";
const BAD_KEY: &str = "invalid key: unable to validate API key";

/// What one message must parse to. Unlisted fields must be absent.
#[derive(Clone, Debug, Default)]
struct E {
    state: Option<i64>,
    id: Option<(&'static str, &'static str, Vec<&'static str>)>,
    err: Option<&'static str>,
    url: Option<&'static str>,
    login: bool,
    prefs: bool,
}

fn n() -> E {
    E::default()
}
fn s(code: i64) -> E {
    E {
        state: Some(code),
        ..E::default()
    }
}
fn p() -> E {
    n().prefs()
}
fn lf() -> E {
    E {
        login: true,
        ..E::default()
    }
}
fn u(url: &'static str) -> E {
    E {
        url: Some(url),
        ..E::default()
    }
}
fn e(msg: &'static str) -> E {
    E {
        err: Some(msg),
        ..E::default()
    }
}
fn i(who: (&'static str, &'static str), addrs: &[&'static str]) -> E {
    n().id(who, addrs)
}

impl E {
    fn prefs(mut self) -> E {
        self.prefs = true;
        self
    }
    fn id(mut self, who: (&'static str, &'static str), addrs: &[&'static str]) -> E {
        self.id = Some((who.0, who.1, addrs.to_vec()));
        self
    }
    fn url(mut self, url: &'static str) -> E {
        self.url = Some(url);
        self
    }

    fn check(&self, what: &str, msg: &Notify) {
        assert_eq!(
            msg.backend_state().map(|s| s.code()),
            self.state,
            "{what}: state"
        );
        let want_id = self.id.as_ref().map(|(stable, name, addrs)| SelfIdentity {
            stable_id: stable.to_string(),
            name: name.to_string(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        });
        assert_eq!(msg.self_identity(), want_id, "{what}: identity");
        assert_eq!(msg.err_message.as_deref(), self.err, "{what}: ErrMessage");
        assert_eq!(
            msg.browse_to_url.as_deref(),
            self.url,
            "{what}: BrowseToURL"
        );
        assert_eq!(msg.login_finished, self.login, "{what}: LoginFinished");
        assert_eq!(msg.prefs.is_some(), self.prefs, "{what}: Prefs");
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ipn-bus")
}

fn expectations() -> BTreeMap<&'static str, Vec<E>> {
    let head_login_start = || vec![s(2).prefs(), n(), p(), s(2)];
    let seed_login_start = || vec![s(2).prefs().url(""), n(), p(), s(2)];
    let mut m: BTreeMap<&'static str, Vec<E>> = BTreeMap::new();
    let mut one = |f: &'static str, x: E| {
        m.insert(f, vec![x]);
    };
    one("head-era-01-initial-needslogin-mask14.json", s(2).prefs());
    one("head-era-02-health-logged-out.json", n());
    one("head-era-03-prefs-after-start.json", p());
    one("head-era-04-state-needslogin.json", s(2));
    one("head-era-05-browsetourl.json", u(URL));
    one("head-era-06-loginfinished.json", lf());
    one("head-era-07-prefs-logged-in.json", p());
    one("head-era-08-selfchange.json", i(ID1, &[A4, A6]));
    one("head-era-09-state-starting.json", s(5));
    one("head-era-10-engine.json", n());
    one("head-era-11-state-running.json", s(6));
    one("head-era-12-health-ok.json", n());
    one(
        "head-era-13-initial-running-with-netmap-mask10.json",
        s(6).id(ID1, &[A4, A6]),
    );
    one(
        "head-era-14-selfchange-new-stableid-and-name.json",
        i(ID2, &[A4, A6]),
    );
    one(
        "head-era-15-selfchange-address-change.json",
        i(ID1, &[B4, B6]),
    );
    one(
        "head-era-16-selfchange-machine-unauthorized.json",
        i(ID1, &[A4, A6]),
    );
    one("head-era-17-state-needsmachineauth.json", s(3));
    one("head-era-18-errmessage.json", e(BAD_KEY));
    one("head-era-19-errmessage-fell-behind.json", e(FELL_BEHIND));
    // State comes from InitialStatus.BackendState; addresses gain their prefix length.
    one(
        "head-era-20-initial-status-headmask28804.json",
        s(6).prefs().id(ID1, &[A4, A6]),
    );
    one(
        "seed-era-01-initial-needslogin-mask14.json",
        s(2).prefs().url(""),
    );
    one("seed-era-02-backendlogid.json", n());
    one("seed-era-03-prefs-after-start.json", p());
    one("seed-era-04-state-needslogin.json", s(2));
    one("seed-era-05-browsetourl.json", u(URL));
    one("seed-era-06-loginfinished.json", lf());
    one("seed-era-07-prefs-logged-in.json", p());
    one("seed-era-08-netmap.json", i(ID1, &[A4, A6]));
    one("seed-era-09-state-starting.json", s(5));
    one("seed-era-10-engine.json", n());
    one("seed-era-11-state-running.json", s(6));
    one(
        "seed-era-12-initial-running-with-netmap-mask10.json",
        s(6).id(ID1, &[A4, A6]),
    );
    one(
        "seed-era-13-netmap-new-stableid-and-name.json",
        i(ID2, &[A4, A6]),
    );
    one("seed-era-14-netmap-address-change.json", i(ID1, &[B4, B6]));
    one(
        "seed-era-15-netmap-machine-unauthorized.json",
        i(ID1, &[A4, A6]),
    );
    one("seed-era-16-state-needsmachineauth.json", s(3));
    one("seed-era-17-errmessage.json", e(BAD_KEY));
    one("seed-era-testharness-needslogin.json", s(2));
    // The seed test fake: SelfNode.Addresses is null, the IP is only top-level, names dot-less.
    one(
        "seed-era-testharness-running.json",
        s(6).id(("myID", "test-node.test.ts.net"), &["100.64.0.1/32"]),
    );
    one(
        "seed-era-testharness-running-newid.json",
        s(6).id(("newID", "new-name.test.ts.net"), &["100.64.0.1/32"]),
    );

    let mut stream = |f: &'static str, lines: Vec<E>| {
        m.insert(f, lines);
    };
    let mut v = head_login_start();
    v.extend([lf(), p(), i(ID1, &[A4, A6]), s(5), s(6), n(), n()]);
    stream("head-era-stream-authkey-login-mask14.ndjson", v);
    let mut v = head_login_start();
    v.push(e(BAD_KEY));
    stream("head-era-stream-errmessage-mask14.ndjson", v);
    stream(
        "head-era-stream-fell-behind-mask10.ndjson",
        vec![s(6).id(ID1, &[A4, A6]), n(), e(FELL_BEHIND)],
    );
    let mut v = head_login_start();
    v.extend([u(URL), lf(), p(), i(ID1, &[A4, A6]), s(5), s(6), n(), n()]);
    stream("head-era-stream-interactive-login-mask14.ndjson", v);
    let mut v = head_login_start();
    v.extend([
        lf(),
        p(),
        i(ID1, &[A4, A6]),
        s(3),
        i(ID1, &[A4, A6]),
        s(5),
        s(6),
        n(),
        n(),
    ]);
    stream("head-era-stream-machineauth-mask14.ndjson", v);
    stream(
        "head-era-stream-steady-state-mask10.ndjson",
        vec![
            s(6).id(ID1, &[A4, A6]),
            n(),
            i(ID2, &[A4, A6]),
            i(ID1, &[B4, B6]),
            n(),
            s(2),
        ],
    );
    let mut v = seed_login_start();
    v.extend([lf(), p(), i(ID1, &[A4, A6]), s(5), s(6), n()]);
    stream("seed-era-stream-authkey-login-mask14.ndjson", v);
    let mut v = seed_login_start();
    v.push(e(BAD_KEY));
    stream("seed-era-stream-errmessage-mask14.ndjson", v);
    let mut v = seed_login_start();
    v.extend([u(URL), lf(), p(), i(ID1, &[A4, A6]), s(5), s(6), n()]);
    stream("seed-era-stream-interactive-login-mask14.ndjson", v);
    let mut v = seed_login_start();
    v.extend([
        lf(),
        p(),
        i(ID1, &[A4, A6]),
        s(3),
        i(ID1, &[A4, A6]),
        s(5),
        s(6),
        n(),
    ]);
    stream("seed-era-stream-machineauth-mask14.ndjson", v);
    stream(
        "seed-era-stream-steady-state-mask10.ndjson",
        vec![
            s(6).id(ID1, &[A4, A6]),
            n(),
            i(ID2, &[A4, A6]),
            i(ID1, &[B4, B6]),
            s(2),
        ],
    );
    m
}

#[test]
fn every_fixture_line_parses_to_its_expectation() {
    let want = expectations();
    let mut seen = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .filter(|n| n.ends_with(".json") || n.ends_with(".ndjson"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 50, "fixtures missing? {entries:?}");
    for name in &entries {
        let text = std::fs::read_to_string(fixtures_dir().join(name)).expect("read fixture");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let exp = want
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no expectation for fixture {name}: add one"));
        assert_eq!(lines.len(), exp.len(), "{name}: line count");
        for (no, (line, e)) in lines.iter().zip(exp).enumerate() {
            let what = format!("{name}:{}", no + 1);
            let msg =
                Notify::from_line(line.as_bytes()).unwrap_or_else(|err| panic!("{what}: {err}"));
            e.check(&what, &msg);
        }
        seen.push(name.as_str());
    }
    let unused: Vec<_> = want.keys().filter(|k| !seen.contains(k)).collect();
    assert!(
        unused.is_empty(),
        "expectations without fixture: {unused:?}"
    );
}

#[test]
fn details_the_table_does_not_cover() {
    let read = |f: &str| {
        let text = std::fs::read(fixtures_dir().join(f)).unwrap();
        Notify::from_line(&text).unwrap()
    };
    let head1 = read("head-era-01-initial-needslogin-mask14.json");
    assert_eq!(head1.session_id.as_deref(), Some("84097828fc31a8c8"));
    let prefs = head1.prefs.unwrap();
    assert!(prefs.logged_out && !prefs.want_running);
    assert_eq!(prefs.control_url, "");
    assert_eq!(
        read("seed-era-01-initial-needslogin-mask14.json")
            .version
            .as_deref(),
        Some("1.36.0-t2d9b13a4f-g7a11bc28e")
    );
    let logged_in = read("seed-era-07-prefs-logged-in.json").prefs.unwrap();
    assert!(logged_in.want_running && !logged_in.logged_out);
    assert_eq!(logged_in.control_url, "https://controlplane.tailscale.com");

    // Machine approval is visible in both eras.
    let seed_unauth = read("seed-era-15-netmap-machine-unauthorized.json");
    let nm = seed_unauth.net_map.unwrap();
    assert_eq!(nm.machine_status, "machine-unauthorized");
    assert!(!nm.self_node.unwrap().machine_authorized);
    assert!(
        !read("head-era-16-selfchange-machine-unauthorized.json")
            .self_change
            .unwrap()
            .machine_authorized
    );
    assert!(
        read("head-era-08-selfchange.json")
            .self_change
            .unwrap()
            .machine_authorized
    );

    // HEAD's initial netmap has neither top-level Addresses nor Name: SelfNode carries them.
    let head13 = read("head-era-13-initial-running-with-netmap-mask10.json");
    let nm = head13.net_map.as_ref().unwrap();
    assert!(nm.addresses.is_empty() && nm.name.is_empty());
    assert_eq!(nm.self_node.as_ref().unwrap().id, 4711234567890);

    let head20 = read("head-era-20-initial-status-headmask28804.json");
    assert_eq!(head20.state, None);
    assert_eq!(head20.backend_state(), Some(BackendState::Running));
    let st = head20.initial_status.unwrap();
    assert_eq!(st.self_status.unwrap().host_name, "test-node");

    assert!(read("head-era-19-errmessage-fell-behind.json").is_fell_behind());
    assert!(!read("head-era-18-errmessage.json").is_fell_behind());
}

/// The messages a real tailscaled v1.102.5 sent (captured in the real-peer lab): every line
/// parses, the login stream reaches Running, and the self identity is where the real daemon
/// puts it (`SelfChange` only), before and after a rename.
#[test]
fn captured_real_daemon_messages_parse() {
    let dir = fixtures_dir().join("real-v1.102");
    let lines = |name: &str| -> Vec<Notify> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .lines()
            .map(|l| Notify::from_line(l.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
            .collect()
    };
    let login = lines("login-mask14.ndjson");
    assert_eq!(login[0].backend_state(), Some(BackendState::NeedsLogin));
    assert!(
        login.iter().all(|n| n.net_map.is_none()),
        "real daemon sent a NetMap"
    );
    let running = login
        .iter()
        .position(|n| n.backend_state() == Some(BackendState::Running))
        .expect("Running in the login stream");
    let before_running = login[..running]
        .iter()
        .filter_map(|n| n.self_identity())
        .next_back()
        .expect("the self node before Running");
    assert_eq!(before_running.stable_id, "1");
    assert_eq!(before_running.name, "a.lab.tsboot.test.");
    assert_eq!(
        before_running
            .addresses
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    );
    let steady = lines("steady-rename-mask10.ndjson");
    assert_eq!(steady[0].backend_state(), Some(BackendState::Running));
    let renamed = steady
        .iter()
        .filter_map(|n| n.self_identity())
        .next_back()
        .expect("the renamed self node");
    assert_eq!(renamed.stable_id, "1");
    assert_eq!(renamed.name, "renamed-a.lab.tsboot.test.");
    // The derived files are exact cuts of the raw captures.
    let raw = std::fs::read_to_string(dir.join("login-mask14.ndjson")).expect("raw");
    let (first, rest) = raw.split_once('\n').expect("two lines");
    assert_eq!(
        std::fs::read_to_string(dir.join("01-initial-needslogin-mask14.json")).expect("cut"),
        format!("{first}\n")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("stream-authkey-login-mask14.ndjson")).expect("cut"),
        rest
    );
}
