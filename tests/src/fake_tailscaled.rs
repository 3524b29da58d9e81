//! The fake `tailscaled` (binary `fake-tailscaled`): a realistic LocalAPI IPN bus over a unix
//! socket, driven by the test through a control socket.
//!
//! Started as `tailscaled --socket=PATH ...` (or `--socket PATH`), it:
//! * appends `"$0 $@"` to `TS_TEST_RECORD_ARGS` (see [`crate::fake_cli::record_args`]);
//! * serves HTTP/1.1 on PATH (a stale file there is removed first), after
//!   `FAKE_TAILSCALED_SOCKET_DELAY_MS` if set; with `TS_TEST_SOCKET` set, also makes that path a
//!   symlink to PATH (the reference harness's variable);
//! * answers `GET /localapi/v0/status` (`?peers=false` as the daemon's `StatusWithoutPeers`),
//!   `GET /localapi/v0/usermetrics` with a v1.102 daemon's Prometheus text
//!   (`FAKE_TAILSCALED_USERMETRICS=<file>` replaces it) and `GET /localapi/v0/watch-ipn-bus`
//!   (other paths: 404, text body), enforcing the
//!   daemon's Host rule (empty or exactly `local-tailscaled.sock`) and refusing any
//!   `Referer`/`Origin`, both with `403 invalid localapi request` (docs/tailscaled-protocol.md §1);
//! * streams `200`, `Content-Type: application/json`, chunked, one compact JSON object per
//!   line, flushed per message. The first message is built from the current state according to
//!   the mask and the era (docs/tailscaled-protocol.md §2.3); later events go to every watcher verbatim and are
//!   folded into the state (State, Prefs, NetMap, SelfChange, InitialStatus, BrowseToURL,
//!   Health), so a new watcher sees where things stand. A broadcast HEAD "fell behind"
//!   `ErrMessage` also ends every stream, as the real daemon does for a lagging watcher.
//!
//! Environment:
//! * `FAKE_TAILSCALED_INITIAL=<Notify JSON file>`: the initial state (default: the seed test
//!   harness's NeedsLogin notify);
//! * `FAKE_TAILSCALED_ERA=seed|head`: message shapes (default: HEAD when the initial message has
//!   `DriveShares` or `SessionID`, else seed);
//! * `FAKE_TAILSCALED_IGNORE_SIGTERM=<secs>`: SIGTERM is ignored for that long after start
//!   (default: SIGTERM/SIGINT remove the socket and exit 0);
//! * `FAKE_TAILSCALED_REQUEST_LOG=<file>`: one line per request, `METHOD PATH?QUERY host=<Host>`;
//! * `FAKE_TAILSCALED_SIGNAL_LOG=<file>`: one line per received signal (`SIGHUP`, `SIGUSR1`,
//!   `SIGUSR2`, `SIGQUIT`, `SIGTERM`, `SIGINT`); HUP/USR1/USR2/QUIT are caught only then;
//! * `FAKE_TAILSCALED_READY_STDOUT=1`: print `ready` on stdout once both sockets listen;
//! * `FAKE_TAILSCALED_CONTROL=<path>`: the control socket (below);
//! * `FAKE_TAILSCALED_SERVE_LOG=<file>`: serve-config POSTs and prefs PATCHes (see [`serve`]).
//!
//! Besides the bus it serves `serve-config`, `prefs` and `dns-config` (see [`serve`]).
//!
//! Control protocol: line commands, each answered `ok[ <detail>]\n` or `err <why>\n` when done:
//! `notify <one-line JSON>`, `replay <ndjson path>`, `raw <text>` (one line sent verbatim to
//! every watcher, not folded: malformed input), `state <n>`, `drop` (end every watch stream), `exit <code>`, `signal <NAME>` (default disposition, then raise it on itself),
//! `orphans <N>` (N zombies re-parented to the nearest subreaper), `ignore-sigterm <secs>`,
//! `watchers` (`ok <open watch streams>`), `sent` (`ok <pid>=<bytes> ...`: what each client
//! process was sent over the LocalAPI socket, headers included), `serve-config` (`ok <stored JSON>`), `advertised`
//! (`ok <services>`), `cert-domains <a,b>` (set the netmap's certificate domains quietly).
#![allow(
    unsafe_code,
    reason = "orphans are made with raw fork, signal dispositions with sigaction"
)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

pub mod serve;

/// One peer as a netmap lists it (`tailcfg.Node`, about 700 bytes; a real one is 1–2 KiB), the
/// `n`th of a synthetic tailnet: for large netmaps in tests and benchmarks.
pub fn synthetic_peer(n: u32) -> String {
    format!(
        concat!(
            r#"{{"ID":{n},"StableID":"nPeer{n}CNTRL","Name":"peer-{n}.tail1234.ts.net.","#,
            r#""User":{u},"Key":"nodekey:{k:064x}","KeyExpiry":"2027-01-01T00:00:00Z","#,
            r#""Machine":"mkey:{k:064x}","DiscoKey":"discokey:{k:064x}","#,
            r#""Addresses":["100.80.{a}.{b}/32","fd7a:115c:a1e0::{n:x}/128"],"#,
            r#""AllowedIPs":["100.80.{a}.{b}/32","fd7a:115c:a1e0::{n:x}/128"],"#,
            r#""Endpoints":["198.51.100.{b}:41641","[2001:db8::{n:x}]:41641"],"HomeDERP":1,"#,
            r#""Hostinfo":{{"OS":"linux","Hostname":"peer-{n}","Services":[{{"Proto":"tcp","Port":22}}]}},"#,
            r#""Created":"2026-01-01T00:00:00Z","Online":true,"MachineAuthorized":true}}"#
        ),
        n = n,
        u = n % 97,
        k = u64::from(n) * 0x9e37_79b9,
        a = (n >> 8) & 0xff,
        b = n & 0xff,
    )
}

/// The seed test harness's NeedsLogin notify (fixture `seed-era-testharness-needslogin.json`).
pub const DEFAULT_INITIAL: &str =
    include_str!("../fixtures/ipn-bus/seed-era-testharness-needslogin.json");

pub use ts_localapi::notify::FELL_BEHIND;

const VERSION_SEED: &str = "1.36.0-fake";
const VERSION_HEAD: &str = "1.102.3-fake";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Era {
    #[default]
    Seed,
    Head,
}

impl Era {
    /// HEAD-era messages always carry `DriveShares`; first messages carry `SessionID`.
    pub fn detect(msg: &Value) -> Era {
        match msg {
            Value::Object(m) if m.contains_key("DriveShares") || m.contains_key("SessionID") => {
                Era::Head
            }
            _ => Era::Seed,
        }
    }

    /// Mask bits that make the daemon send a first message.
    fn initial_bits(self) -> u64 {
        match self {
            Era::Seed => 2 | 4 | 8,
            Era::Head => 2 | 4 | 8 | 32 | 1024 | 2048 | 16384 | 131072 | 262144,
        }
    }
}

/// What a watcher's body receives.
enum Msg {
    Line(Bytes),
    Close,
}

/// The daemon state a new watcher's first message is built from.
#[derive(Default)]
pub struct BusState {
    pub era: Era,
    version: String,
    state: Option<i64>,
    prefs: Option<Value>,
    netmap: Option<Value>,
    self_node: Option<Value>,
    initial_status: Option<Value>,
    browse_url: Option<String>,
    health: Option<Value>,
    /// Open watch streams with the mask each asked for.
    watchers: Vec<(u64, mpsc::UnboundedSender<Msg>)>,
}

fn non_null<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).filter(|v| !v.is_null())
}

impl BusState {
    pub fn new(era: Era, initial: &Value) -> BusState {
        let mut s = BusState {
            era,
            version: match era {
                Era::Seed => VERSION_SEED.into(),
                Era::Head => VERSION_HEAD.into(),
            },
            ..BusState::default()
        };
        s.fold(initial);
        s
    }

    /// Applies an event's non-null fields to the state.
    pub fn fold(&mut self, msg: &Value) {
        let Value::Object(m) = msg else { return };
        if let Some(Value::String(v)) = non_null(m, "Version") {
            if !v.is_empty() {
                self.version = v.clone();
            }
        }
        if let Some(n) = non_null(m, "State").and_then(Value::as_i64) {
            self.state = Some(n);
            if n == 6 {
                self.browse_url = None;
            }
        }
        if let Some(p) = non_null(m, "Prefs") {
            self.prefs = Some(p.clone());
        }
        if let Some(nm) = non_null(m, "NetMap") {
            self.netmap = Some(nm.clone());
            if let Some(node) = nm.get("SelfNode").filter(|v| !v.is_null()) {
                self.self_node = Some(node.clone());
            }
        }
        if let Some(node) = non_null(m, "SelfChange") {
            self.self_node = Some(node.clone());
            if let Some(Value::Object(nm)) = self.netmap.as_mut() {
                nm.insert("SelfNode".into(), node.clone());
            }
        }
        if let Some(st) = non_null(m, "InitialStatus") {
            self.initial_status = Some(st.clone());
        }
        if let Some(Value::String(u)) = non_null(m, "BrowseToURL") {
            self.browse_url = Some(u.clone());
        }
        if let Some(h) = non_null(m, "Health") {
            self.health = Some(h.clone());
        }
    }

    fn has_netmap(&self) -> bool {
        self.netmap.is_some() || self.self_node.is_some()
    }

    fn netmap_value(&self) -> Value {
        match (&self.netmap, &self.self_node) {
            (Some(nm), _) => nm.clone(),
            // Runtime HEAD events carry only SelfChange; the daemon still has a netmap.
            (None, Some(node)) => json!({ "SelfNode": node }),
            (None, None) => Value::Null,
        }
    }

    /// `ipnstate.Status` as of now: the stored one (or a skeleton) with state and self patched.
    fn status_value(&self) -> Value {
        let mut st = match &self.initial_status {
            Some(Value::Object(m)) => m.clone(),
            _ => {
                let mut m = Map::new();
                m.insert("Version".into(), json!(self.version));
                m.insert("AuthURL".into(), json!(""));
                m.insert("TailscaleIPs".into(), Value::Null);
                m.insert("Self".into(), Value::Null);
                m.insert("Peer".into(), Value::Null);
                m.insert("User".into(), Value::Null);
                m
            }
        };
        if let Some(n) = self.state {
            let name = ts_localapi::notify::BackendState::from_code(n).name();
            st.insert("BackendState".into(), json!(name));
        }
        if let Some(node) = &self.self_node {
            let bare = |list: Option<&Value>| -> Vec<Value> {
                list.and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(|p| json!(p.split('/').next().unwrap_or(p)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            // Seed daemons (before v1.50) keep the addresses in the netmap's top level only.
            let mut ips = bare(node.get("Addresses"));
            if ips.is_empty() {
                ips = bare(self.netmap.as_ref().and_then(|nm| nm.get("Addresses")));
            }
            let mut me = match st.get("Self") {
                Some(Value::Object(m)) => m.clone(),
                _ => Map::new(),
            };
            me.insert(
                "ID".into(),
                node.get("StableID").cloned().unwrap_or(json!("")),
            );
            me.insert(
                "DNSName".into(),
                node.get("Name").cloned().unwrap_or(json!("")),
            );
            me.insert("TailscaleIPs".into(), json!(ips));
            st.insert("Self".into(), Value::Object(me));
            st.insert("TailscaleIPs".into(), json!(ips));
        }
        Value::Object(st)
    }

    /// The first message for a watch with `mask`, in the era's field order, or `None` when the
    /// mask has no "initial" bit.
    pub fn initial_message(&self, mask: u64) -> Option<String> {
        if mask & self.era.initial_bits() == 0 {
            return None;
        }
        let bit = |b: u64| mask & b != 0;
        let if_bit = |b: u64, v: Value| if bit(b) { v } else { Value::Null };
        let needs_login = self.state == Some(2);
        let state = if_bit(2, json!(self.state));
        let prefs = if_bit(4, json!(self.prefs));
        let netmap = if_bit(8, self.netmap_value());
        let mut fields: Vec<(&str, Value)> = vec![("Version", json!(self.version))];
        match self.era {
            Era::Seed => {
                let url = if bit(2) && needs_login {
                    json!(self.browse_url.clone().unwrap_or_default())
                } else {
                    Value::Null
                };
                fields.extend([
                    ("ErrMessage", Value::Null),
                    ("LoginFinished", Value::Null),
                    ("State", state),
                    ("Prefs", prefs),
                    ("NetMap", netmap),
                    ("Engine", Value::Null),
                    ("BrowseToURL", url),
                    ("BackendLogID", Value::Null),
                ]);
            }
            Era::Head => {
                if bit(2) {
                    fields.push(("SessionID", json!(session_id())));
                }
                fields.extend([
                    ("ErrMessage", Value::Null),
                    ("LoginFinished", Value::Null),
                    ("State", state),
                    ("Prefs", prefs),
                ]);
                if bit(8) && self.has_netmap() {
                    if let Some(node) = &self.self_node {
                        fields.push(("SelfChange", node.clone()));
                    }
                }
                if bit(16384) {
                    fields.push(("InitialStatus", self.status_value()));
                }
                let url = match &self.browse_url {
                    Some(u) if bit(2) && needs_login && !u.is_empty() => json!(u),
                    _ => Value::Null,
                };
                fields.extend([
                    ("NetMap", netmap),
                    ("Engine", Value::Null),
                    ("BrowseToURL", url),
                    ("DriveShares", Value::Null),
                ]);
                if bit(128) {
                    if let Some(h) = &self.health {
                        fields.push(("Health", h.clone()));
                    }
                }
            }
        }
        Some(render(fields.iter().map(|(k, v)| (*k, v))))
    }

    /// The era's minimal `{State:n}` event.
    pub fn state_message(&self, n: i64) -> String {
        let last = match self.era {
            Era::Seed => "BackendLogID",
            Era::Head => "DriveShares",
        };
        let fields = [
            ("Version", json!(self.version)),
            ("ErrMessage", Value::Null),
            ("LoginFinished", Value::Null),
            ("State", json!(n)),
            ("Prefs", Value::Null),
            ("NetMap", Value::Null),
            ("Engine", Value::Null),
            ("BrowseToURL", Value::Null),
            (last, Value::Null),
        ];
        render(fields.iter().map(|(k, v)| (*k, v)))
    }

    /// Sends `line` to every open watch and folds it. Returns an error for non-objects.
    /// A HEAD daemon leaves out what a watcher's mask did not ask for (docs/tailscaled-protocol.md §2.3):
    /// peer changes without bit 12 (or 15), patches without bit 15, and a runtime `NetMap`
    /// with bit 13. The seed knew none of these bits and sent every event whole.
    pub fn broadcast(&mut self, line: &str) -> Result<(), String> {
        let msg: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(fields) = &msg else {
            return Err("not a JSON object".into());
        };
        self.fold(&msg);
        let whole = Bytes::from(format!("{}\n", line.trim_end()));
        let era = self.era;
        self.watchers.retain(|(mask, w)| {
            let bytes = match era {
                Era::Seed => whole.clone(),
                Era::Head => match strip_for_mask(fields, *mask) {
                    Some(stripped) => Bytes::from(format!("{stripped}\n")),
                    None => whole.clone(),
                },
            };
            w.send(Msg::Line(bytes)).is_ok()
        });
        if msg.get("ErrMessage").and_then(Value::as_str) == Some(FELL_BEHIND) {
            self.drop_watchers();
        }
        Ok(())
    }

    /// Sends `line` verbatim to every open watch, folding nothing: a line no daemon would send
    /// (malformed JSON, a wrong type), for the watchers' malformed-line rule.
    pub fn broadcast_raw(&mut self, line: &str) {
        let bytes = Bytes::from(format!("{line}\n"));
        self.watchers
            .retain(|(_, w)| w.send(Msg::Line(bytes.clone())).is_ok());
    }

    pub fn drop_watchers(&mut self) {
        for (_, w) in self.watchers.drain(..) {
            let _ = w.send(Msg::Close);
        }
    }

    pub fn open_watchers(&mut self) -> usize {
        self.watchers.retain(|(_, w)| !w.is_closed());
        self.watchers.len()
    }

    /// `GET /localapi/v0/status`: `ipnstate.Status` now, with `CertDomains` from the netmap's
    /// DNS; `peers=false` (the daemon's `StatusWithoutPeers`) leaves `Peer` null.
    pub fn status_reply(&self, peers: bool) -> Value {
        let mut st = self.status_value();
        if let Value::Object(m) = &mut st {
            if !peers {
                m.insert("Peer".into(), Value::Null);
            }
            let domains = self
                .netmap
                .as_ref()
                .and_then(|nm| nm.get("DNS"))
                .and_then(|d| d.get("CertDomains"))
                .cloned()
                .unwrap_or(Value::Null);
            m.insert("CertDomains".into(), domains);
        }
        st
    }
}

/// HEAD's per-watcher view of a runtime event (`notifyForSessionLocked`): `None` when the
/// watcher gets it unchanged.
fn strip_for_mask(fields: &Map<String, Value>, mask: u64) -> Option<String> {
    const PEER_CHANGES: u64 = 1 << 12;
    const NO_NETMAP: u64 = 1 << 13;
    const PEER_PATCHES: u64 = 1 << 15;
    let wants_changes = mask & (PEER_CHANGES | PEER_PATCHES) != 0;
    let mut drop: Vec<&str> = Vec::new();
    if mask & NO_NETMAP != 0 {
        drop.push("NetMap");
    }
    if !wants_changes {
        drop.extend(["PeersChanged", "PeersRemoved", "UserProfiles"]);
    }
    if mask & PEER_PATCHES == 0 {
        drop.push("PeerChangedPatch");
    }
    if !drop.iter().any(|k| non_null(fields, k).is_some()) {
        return None;
    }
    let kept = fields.iter().filter(|(k, _)| !drop.contains(&k.as_str()));
    Some(render(kept.map(|(k, v)| (k.as_str(), v))))
}

/// A JSON object with its fields in the given order (serde_json's map would sort them).
fn render<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let parts: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}:{}", json!(k), v))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn session_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

/// A response body: fixed bytes, or a watch stream fed by broadcasts.
enum FakeBody {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Msg>),
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Msg::Line(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Msg::Close)) | Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FakeBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => SizeHint::with_exact(0),
            FakeBody::Stream(_) => SizeHint::default(),
        }
    }
}

struct Shared {
    bus: Mutex<BusState>,
    socket: PathBuf,
    test_link: Option<PathBuf>,
    request_log: Option<PathBuf>,
    signal_log: Option<PathBuf>,
    ignore_sigterm_until: Mutex<Option<Instant>>,
    serve: Mutex<serve::ServeState>,
    serve_log: Option<PathBuf>,
    /// Bytes written to each client process (by pid) over the LocalAPI socket.
    sent: Mutex<std::collections::BTreeMap<i32, Arc<std::sync::atomic::AtomicU64>>>,
}

impl Shared {
    fn sent_counter(&self, pid: i32) -> Arc<std::sync::atomic::AtomicU64> {
        locked(&self.sent).entry(pid).or_default().clone()
    }

    /// `pid=bytes` for every client so far.
    fn sent_report(&self) -> String {
        locked(&self.sent)
            .iter()
            .map(|(pid, n)| format!("{pid}={}", n.load(std::sync::atomic::Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn bus(&self) -> MutexGuard<'_, BusState> {
        locked(&self.bus)
    }

    fn serve(&self) -> MutexGuard<'_, serve::ServeState> {
        locked(&self.serve)
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some(link) = &self.test_link {
            let _ = std::fs::remove_file(link);
        }
    }

    fn log_signal(&self, name: &str) {
        if let Some(f) = &self.signal_log {
            append_line(f, name);
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is already a test failure; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn append_line(file: &Path, line: &str) {
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = r {
        eprintln!("fake tailscaled: appending to {}: {e}", file.display());
    }
}

fn text(code: StatusCode, body: &str) -> Response<FakeBody> {
    let r = Response::new(FakeBody::Full(Some(Bytes::from(format!("{body}\n")))));
    let mut r = typed(r, "text/plain; charset=utf-8");
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

/// `r` with `Content-Type: content_type`.
fn typed(mut r: Response<FakeBody>, content_type: &'static str) -> Response<FakeBody> {
    let value = http::HeaderValue::from_static(content_type);
    r.headers_mut().insert(http::header::CONTENT_TYPE, value);
    r
}

/// tailscaled's status endpoint (`?peers=false`: without the peer map).
pub const STATUS_PATH: &str = "/localapi/v0/status";

/// A JSON answer indented with tabs, as the daemon's status handler writes it.
fn pretty_json(v: &Value) -> Response<FakeBody> {
    use serde::Serialize as _;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if v.serialize(&mut ser).is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding status");
    }
    out.push(b'\n');
    typed(
        Response::new(FakeBody::Full(Some(Bytes::from(out)))),
        "application/json",
    )
}

/// tailscaled's user-facing metrics endpoint.
pub const USERMETRICS_PATH: &str = "/localapi/v0/usermetrics";

/// What a real v1.102.5 tailscaled answered on [`USERMETRICS_PATH`] (captured verbatim from a
/// fresh daemon, userspace networking, not logged in): families sorted by name, `# TYPE` before
/// `# HELP`, some families without samples, as tailscaled's varz writer emits them.
pub const USERMETRICS: &str = include_str!("../fixtures/usermetrics/head-v1.102.txt");

/// The user-metrics answer: `FAKE_TAILSCALED_USERMETRICS=<file>` if set (read per request, so a
/// test can change it), else [`USERMETRICS`]; any method, as the daemon's handler does.
fn usermetrics() -> Response<FakeBody> {
    let body = std::env::var_os("FAKE_TAILSCALED_USERMETRICS")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| USERMETRICS.to_string());
    let r = text(StatusCode::OK, body.trim_end_matches('\n'));
    typed(r, "text/plain;version=0.0.4;charset=utf-8")
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<FakeBody>, Infallible> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    if let Some(log) = &shared.request_log {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        append_line(
            log,
            &format!(
                "{} {pq} host={}",
                req.method(),
                host.as_deref().unwrap_or("")
            ),
        );
    }
    // The daemon's checks, before routing (ipn/localapi ServeHTTP).
    let host_ok = matches!(
        host.as_deref(),
        None | Some("") | Some("local-tailscaled.sock")
    );
    let referer = req
        .headers()
        .get(http::header::REFERER)
        .is_some_and(|r| !r.is_empty());
    let origin = req.headers().contains_key(http::header::ORIGIN);
    if !host_ok || referer || origin {
        return Ok(text(StatusCode::FORBIDDEN, "invalid localapi request"));
    }
    if req.uri().path() == USERMETRICS_PATH {
        return Ok(usermetrics());
    }
    if req.uri().path() == STATUS_PATH {
        let peers = !req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv == "peers=false" || kv == "peers=0");
        let st = shared.bus().status_reply(peers);
        return Ok(pretty_json(&st));
    }
    if serve::is_ours(req.uri().path()) {
        return Ok(serve::handle(req, &shared).await);
    }
    if req.uri().path() != "/localapi/v0/watch-ipn-bus" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            &format!(
                "404 not found: fake-tailscaled implements only /localapi/v0/watch-ipn-bus, {STATUS_PATH}, {USERMETRICS_PATH}, serve-config, prefs and dns-config, not {}",
                req.uri().path()
            ),
        ));
    }
    if req.method() != http::Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "want GET"));
    }
    let raw_mask = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("mask="))
        .unwrap_or("")
        .to_string();
    let mut bus = shared.bus();
    let mask = if raw_mask.is_empty() {
        Ok(0)
    } else {
        raw_mask.parse::<u64>()
    };
    let mask = match (mask, bus.era) {
        (Ok(m), Era::Head) if m & 65536 != 0 => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "NotifyInProcessNoDisconnect is not allowed over LocalAPI",
            ));
        }
        (Ok(m), Era::Head) if m & 256 != 0 && m & (0xf << 12) != 0 => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "NotifyRateLimit cannot be combined with peer-change bits",
            ));
        }
        (Ok(m), _) => m,
        (Err(_), Era::Head) => return Ok(text(StatusCode::BAD_REQUEST, "bad mask")),
        // The seed flushed 200 before parsing the mask.
        (Err(_), Era::Seed) => {
            return Ok(typed(text(StatusCode::OK, "bad mask"), "application/json"))
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // First message and registration under one lock: no event can fall between them.
    if let Some(first) = bus.initial_message(mask) {
        let _ = tx.send(Msg::Line(Bytes::from(first + "\n")));
    }
    bus.watchers.push((mask, tx));
    let version = bus.version.clone();
    drop(bus);
    let mut r = typed(Response::new(FakeBody::Stream(rx)), "application/json");
    let h = r.headers_mut();
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&version) {
        h.insert("Tailscale-Version", v);
    }
    Ok(r)
}

async fn serve_localapi(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("fake tailscaled: accept: {e}");
                continue;
            }
        };
        let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
        let counter = shared.sent_counter(pid);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    hyper_util::rt::TokioIo::new(Counted {
                        inner: stream,
                        sent: counter,
                    }),
                    svc,
                )
                .await;
        });
    }
}

/// A LocalAPI connection whose written bytes (headers, framing and bodies) are added to the
/// total of the client process (`sent` control command: what each process received).
struct Counted {
    inner: UnixStream,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_control(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(control_connection(stream, shared));
    }
}

async fn control_connection(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let arg = arg.trim();
        let answer = match cmd {
            "exit" => {
                let code = arg.parse::<i32>().unwrap_or(0);
                shared.cleanup();
                let _ = write.write_all(b"ok\n").await;
                let _ = write.flush().await;
                std::process::exit(code);
            }
            "signal" => {
                let sig = parse_signal(arg);
                match sig {
                    Ok(sig) => {
                        let _ = write.write_all(b"ok\n").await;
                        let _ = write.flush().await;
                        raise_default(sig);
                        format!("err {} did not end the process", sig.as_str())
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            "orphans" => match arg.parse::<usize>() {
                Ok(n) => match tokio::task::spawn_blocking(move || make_orphans(n)).await {
                    Ok(Ok(())) => "ok".to_string(),
                    Ok(Err(e)) => format!("err {e}"),
                    Err(e) => format!("err {e}"),
                },
                Err(_) => format!("err orphans wants a count, got {arg:?}"),
            },
            other => run_command(&shared, other, arg),
        };
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The control commands that need no I/O on the connection.
fn run_command(shared: &Shared, cmd: &str, arg: &str) -> String {
    let result = match cmd {
        "notify" => shared.bus().broadcast(arg).map(|()| String::new()),
        "replay" => std::fs::read_to_string(arg)
            .map_err(|e| format!("reading {arg}: {e}"))
            .and_then(|text| {
                let mut bus = shared.bus();
                for (no, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    bus.broadcast(line)
                        .map_err(|e| format!("{arg}:{}: {e}", no + 1))?;
                }
                Ok(String::new())
            }),
        "state" => match arg.parse::<i64>() {
            Ok(n) => {
                let mut bus = shared.bus();
                let msg = bus.state_message(n);
                bus.broadcast(&msg).map(|()| String::new())
            }
            Err(_) => Err(format!("state wants an integer, got {arg:?}")),
        },
        "drop" => {
            shared.bus().drop_watchers();
            Ok(String::new())
        }
        "raw" => {
            shared.bus().broadcast_raw(arg);
            Ok(String::new())
        }
        "watchers" => Ok(format!(" {}", shared.bus().open_watchers())),
        "sent" => Ok(format!(" {}", shared.sent_report())),
        "serve-config" => Ok(format!(" {}", serve::control_show(shared))),
        "advertised" => Ok(format!(" {}", serve::control_advertised(shared))),
        "cert-domains" => serve::control_cert_domains(shared, arg).map(|()| String::new()),
        "ignore-sigterm" => match arg.parse::<f64>() {
            Ok(secs) if secs >= 0.0 => {
                *locked(&shared.ignore_sigterm_until) =
                    Some(Instant::now() + Duration::from_secs_f64(secs));
                Ok(String::new())
            }
            _ => Err(format!("ignore-sigterm wants seconds, got {arg:?}")),
        },
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(detail) => format!("ok{detail}"),
        Err(e) => format!("err {e}"),
    }
}

fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
    use std::str::FromStr as _;
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&full).map_err(|_| format!("unknown signal {name:?}"))
}

/// Restores the default disposition of `sig`, unblocks it and sends it to ourselves.
fn raise_default(sig: nix::sys::signal::Signal) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
    if sig != nix::sys::signal::Signal::SIGKILL && sig != nix::sys::signal::Signal::SIGSTOP {
        let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { sigaction(sig, &dfl) };
    }
    let mut set = SigSet::empty();
    set.add(sig);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), sig);
}

/// Forks a child that forks `n` grandchildren which exit at once; the child waits until they
/// are all zombies without reaping them (WNOWAIT), then exits, so they are re-parented — still
/// zombies — to the nearest subreaper or PID 1. Returns once the child has exited.
fn make_orphans(n: usize) -> Result<(), String> {
    use nix::libc;
    use nix::unistd::ForkResult;
    // Allocated before fork: the child may only make async-signal-safe calls.
    let mut pids: Vec<libc::pid_t> = Vec::with_capacity(n);
    // SAFETY: the child below only calls fork, waitid and _exit, and writes into `pids`
    // within its pre-allocated capacity.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        // SAFETY: in the forked child only fork, waitid and _exit run (async-signal-safe), and
        // `pids` is written within the capacity allocated before the fork.
        Ok(ForkResult::Child) => unsafe {
            let mut failed = 0;
            for _ in 0..n {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 {
                    failed = 1;
                    break;
                }
                pids.push(pid);
            }
            for &pid in &pids {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                while libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                ) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            libc::_exit(failed);
        },
        Ok(ForkResult::Parent { child }) => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(nix::sys::wait::WaitStatus::Exited(_, _)) => {
                    return Err(
                        "the orphan maker could not fork every grandchild (process limit?)".into(),
                    )
                }
                Ok(other) => return Err(format!("orphan maker ended as {other:?}")),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("waiting for the orphan maker: {e}")),
            }
        },
    }
}

/// `--socket=X` or `--socket X`; the last one wins, like Go's flag package.
pub fn socket_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut socket = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if let Some(v) = s
            .strip_prefix("--socket=")
            .or_else(|| s.strip_prefix("-socket="))
        {
            socket = Some(PathBuf::from(v));
        } else if s == "--socket" || s == "-socket" {
            socket = it.next().map(PathBuf::from);
        }
    }
    socket
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| format!("listening on {}: {e}", path.display()))
}

/// `main` of `fake-tailscaled`; returns the exit code.
pub fn main() -> i32 {
    crate::fake_cli::record_args();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(socket) = socket_arg(&args) else {
        eprintln!("fake tailscaled: didn't find socket path in args");
        return 1;
    };
    let initial_text = match env_path("FAKE_TAILSCALED_INITIAL") {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "fake tailscaled: FAKE_TAILSCALED_INITIAL={}: {e}",
                    p.display()
                );
                return 1;
            }
        },
        None => DEFAULT_INITIAL.to_string(),
    };
    let initial: Value = match serde_json::from_str(initial_text.trim()) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            eprintln!("fake tailscaled: the initial state is not one JSON object");
            return 1;
        }
    };
    let era = match std::env::var("FAKE_TAILSCALED_ERA").as_deref() {
        Ok("seed") => Era::Seed,
        Ok("head") => Era::Head,
        Ok("") | Err(_) => Era::detect(&initial),
        Ok(other) => {
            eprintln!("fake tailscaled: FAKE_TAILSCALED_ERA={other:?}: use seed or head");
            return 1;
        }
    };
    let ignore_secs = std::env::var("FAKE_TAILSCALED_IGNORE_SIGTERM")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s >= 0.0);
    let shared = Arc::new(Shared {
        bus: Mutex::new(BusState::new(era, &initial)),
        socket: socket.clone(),
        test_link: env_path("TS_TEST_SOCKET").filter(|l| *l != socket),
        request_log: env_path("FAKE_TAILSCALED_REQUEST_LOG"),
        signal_log: env_path("FAKE_TAILSCALED_SIGNAL_LOG"),
        ignore_sigterm_until: Mutex::new(
            ignore_secs.map(|s| Instant::now() + Duration::from_secs_f64(s)),
        ),
        serve: Mutex::new(serve::ServeState::default()),
        serve_log: env_path("FAKE_TAILSCALED_SERVE_LOG"),
        sent: Mutex::new(Default::default()),
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake tailscaled: tokio runtime: {e}");
            return 1;
        }
    };
    rt.block_on(run(shared))
}

async fn run(shared: Arc<Shared>) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    // Signal intake first, so a SIGTERM during the socket delay is handled, not fatal.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fake tailscaled: cannot install signal handlers");
        return 1;
    };
    // Like the Go runtime of the real tailscaled, SIGUSR1/SIGUSR2 are survivable (Go ignores
    // signals nobody asked for unless they are fatal ones like SIGHUP); SIGHUP and SIGQUIT are
    // only caught when a test wants them recorded.
    let mut kinds = vec![SignalKind::user_defined1(), SignalKind::user_defined2()];
    if shared.signal_log.is_some() {
        kinds.extend([SignalKind::hangup(), SignalKind::quit()]);
    }
    for kind in kinds {
        let mut s = match signal(kind) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fake tailscaled: signal handler: {e}");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let name = match kind.as_raw_value() {
                nix::libc::SIGHUP => "SIGHUP",
                nix::libc::SIGUSR1 => "SIGUSR1",
                nix::libc::SIGUSR2 => "SIGUSR2",
                _ => "SIGQUIT",
            };
            while s.recv().await.is_some() {
                shared.log_signal(name);
            }
        });
    }

    let start_serving = {
        let shared = shared.clone();
        async move {
            if let Some(ms) = std::env::var("FAKE_TAILSCALED_SOCKET_DELAY_MS")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            // The control socket first: once the LocalAPI socket exists (what ts-init waits
            // for) a fake `tailscale up` may ask for a replay at once.
            let control = match env_path("FAKE_TAILSCALED_CONTROL") {
                Some(p) => Some(bind(&p)?),
                None => None,
            };
            let api = bind(&shared.socket)?;
            if let Some(link) = &shared.test_link {
                if std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()) {
                    let _ = std::fs::remove_file(link);
                }
                if let Err(e) = std::os::unix::fs::symlink(&shared.socket, link) {
                    eprintln!(
                        "fake tailscaled: symlink TS_TEST_SOCKET {}: {e}",
                        link.display()
                    );
                }
            }
            tokio::spawn(serve_localapi(api, shared.clone()));
            if let Some(c) = control {
                tokio::spawn(serve_control(c, shared.clone()));
            }
            if std::env::var("FAKE_TAILSCALED_READY_STDOUT").is_ok_and(|v| v == "1") {
                println!("ready");
            }
            Ok::<(), String>(())
        }
    };
    let mut serving = tokio::spawn(start_serving);
    let mut serving_done = false;

    loop {
        tokio::select! {
            r = &mut serving, if !serving_done => {
                serving_done = true;
                if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
                    eprintln!("fake tailscaled: {e}");
                    return 1;
                }
            }
            _ = term.recv() => {
                shared.log_signal("SIGTERM");
                let until = *locked(&shared.ignore_sigterm_until);
                if until.is_some_and(|u| Instant::now() < u) {
                    eprintln!("fake tailscaled: ignoring SIGTERM (FAKE_TAILSCALED_IGNORE_SIGTERM)");
                    continue;
                }
                shared.cleanup();
                return 0;
            }
            _ = int.recv() => {
                shared.log_signal("SIGINT");
                shared.cleanup();
                return 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/ipn-bus")
            .join(name);
        serde_json::from_str(std::fs::read_to_string(p).expect("fixture").trim()).expect("json")
    }

    fn keys(line: &str) -> Vec<String> {
        // serde_json's map is sorted, so read the key order from the text itself.
        let v: Value = serde_json::from_str(line).expect("initial message is JSON");
        let mut ks: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        ks.sort_by_key(|k| line.find(&format!("\"{k}\":")).expect("key in text"));
        ks
    }

    #[test]
    fn era_detection() {
        assert_eq!(
            Era::detect(&serde_json::from_str(DEFAULT_INITIAL).unwrap()),
            Era::Seed
        );
        assert_eq!(
            Era::detect(&fixture("head-era-01-initial-needslogin-mask14.json")),
            Era::Head
        );
        assert_eq!(
            Era::detect(&fixture("head-era-11-state-running.json")),
            Era::Head
        );
        assert_eq!(
            Era::detect(&fixture("seed-era-11-state-running.json")),
            Era::Seed
        );
    }

    #[test]
    fn seed_initial_message_shapes() {
        let bus = BusState::new(
            Era::Seed,
            &fixture("seed-era-01-initial-needslogin-mask14.json"),
        );
        let m14 = bus.initial_message(14).unwrap();
        assert_eq!(
            keys(&m14),
            [
                "Version",
                "ErrMessage",
                "LoginFinished",
                "State",
                "Prefs",
                "NetMap",
                "Engine",
                "BrowseToURL",
                "BackendLogID"
            ]
        );
        let v: Value = serde_json::from_str(&m14).unwrap();
        assert_eq!(v["State"], 2);
        assert!(v["Prefs"].is_object());
        assert!(v["NetMap"].is_null());
        assert_eq!(
            v["BrowseToURL"], "",
            "seed sends the sticky URL, even empty"
        );
        let m10: Value = serde_json::from_str(&bus.initial_message(10).unwrap()).unwrap();
        assert!(m10["Prefs"].is_null());
        assert_eq!(bus.initial_message(0), None);
        assert_eq!(
            bus.initial_message(1 | 16 | 16384),
            None,
            "seed knows no bit 14"
        );
    }

    #[test]
    fn head_initial_message_shapes_and_folding() {
        let mut bus = BusState::new(
            Era::Head,
            &fixture("head-era-01-initial-needslogin-mask14.json"),
        );
        let v: Value = serde_json::from_str(&bus.initial_message(14).unwrap()).unwrap();
        assert!(v["SessionID"].is_string());
        assert!(v["BrowseToURL"].is_null(), "HEAD omits an empty URL");
        assert!(v.get("SelfChange").is_none());
        bus.broadcast(&serde_json::to_string(&fixture("head-era-08-selfchange.json")).unwrap())
            .unwrap();
        bus.broadcast(&bus.state_message(6)).unwrap();
        let m = bus.initial_message(10).unwrap();
        assert_eq!(
            keys(&m),
            [
                "Version",
                "SessionID",
                "ErrMessage",
                "LoginFinished",
                "State",
                "Prefs",
                "SelfChange",
                "NetMap",
                "Engine",
                "BrowseToURL",
                "DriveShares"
            ]
        );
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["State"], 6);
        assert_eq!(v["SelfChange"]["StableID"], "n5Ez6W7CNTRL");
        assert_eq!(v["NetMap"]["SelfNode"]["StableID"], "n5Ez6W7CNTRL");
        // Bit 14 without bit 1: InitialStatus carries the state name and self.
        let v: Value = serde_json::from_str(&bus.initial_message(16384 | 4).unwrap()).unwrap();
        assert!(v["State"].is_null() && v.get("SessionID").is_none());
        assert_eq!(v["InitialStatus"]["BackendState"], "Running");
        assert_eq!(v["InitialStatus"]["Self"]["ID"], "n5Ez6W7CNTRL");
        assert_eq!(
            v["InitialStatus"]["Self"]["TailscaleIPs"][0],
            "100.101.102.103"
        );
        // An address change arrives as SelfChange and shows in the next first message.
        bus.broadcast(
            &serde_json::to_string(&fixture("head-era-15-selfchange-address-change.json")).unwrap(),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&bus.initial_message(10).unwrap()).unwrap();
        assert_eq!(v["NetMap"]["SelfNode"]["Addresses"][0], "100.88.77.66/32");
    }

    #[test]
    fn broadcast_rejects_non_objects() {
        let mut bus = BusState::new(Era::Seed, &Value::Object(Map::new()));
        assert!(bus.broadcast("[1]").is_err());
        assert!(bus.broadcast("{").is_err());
        assert!(bus.broadcast(r#"{"State":3}"#).is_ok());
        assert_eq!(bus.state, Some(3));
    }

    #[test]
    fn socket_args() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            socket_arg(&a(&["--socket=/x", "--state=mem:"])),
            Some("/x".into())
        );
        assert_eq!(
            socket_arg(&a(&["--state=mem:", "--socket", "/y"])),
            Some("/y".into())
        );
        assert_eq!(socket_arg(&a(&["--state=mem:"])), None);
    }
}
