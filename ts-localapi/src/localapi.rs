//! tailscaled's LocalAPI over its unix socket (docs/tailscaled-protocol.md §1-2): the IPN bus watch.
//!
//! One HTTP/1.1 connection per watch, made by hyperlocal's unix-socket connector and hyper's
//! client, driven by a task on the caller's runtime (works on a `current_thread` runtime) and
//! torn down when the [`BusWatch`] is dropped (the client keeps no idle connections). A connect
//! failure ("tailscaled is not there") is told apart from a broken stream ("tailscaled went away
//! mid-stream"), which is what [`Follower`] needs to decide between watching again and giving up.
//!
//! Requests carry `Host: local-tailscaled.sock` and no `Referer`/`Origin`: tailscaled answers
//! 403 to any other Host (a hex-encoded socket path, as a generic unix-socket URI would put
//! there, included).

use crate::notify::{Notify, PeerMode, Status};
use crate::stream::{self, Parsed};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri as UnixUri};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ts_common::logging::{outside, outside_max};

/// `NotifyInitialState`: the first message carries the state (docs/tailscaled-protocol.md §2.3).
pub const NOTIFY_INITIAL_STATE: u64 = 1 << 1;
/// `NotifyInitialNetMap`: the first message carries the whole netmap, every peer included.
pub const NOTIFY_INITIAL_NETMAP: u64 = 1 << 3;
/// `NotifyNoNetMap` (v1.98+): no netmap on runtime messages (Linux daemons send none anyway;
/// older daemons ignore the bit and keep sending whole netmaps, which the parser streams).
pub const NOTIFY_NO_NETMAP: u64 = 1 << 13;

/// Seed containerboot's first watch: InitialNetMap | InitialPrefs | InitialState.
pub const MASK_FIRST_WATCH: u64 = 14;
/// Seed containerboot's re-watch: InitialNetMap | InitialState.
pub const MASK_STEADY: u64 = 10;
/// tsboot's watches (README D26): the state, and no netmap at all. This device comes from
/// `GET /localapi/v0/status?peers=false` read at the start of each watch
/// ([`Follower::with_self_status`]) and from the runtime messages (`SelfChange`, or a seed-era
/// netmap), so what tailscaled sends per watch does not grow with the tailnet.
pub const MASK_LEAN: u64 = NOTIFY_INITIAL_STATE | NOTIFY_NO_NETMAP;
/// `GET` this for the node's status without its peers.
pub const STATUS_SELF_PATH: &str = "/localapi/v0/status?peers=false";

/// The only Host tailscaled accepts besides an empty one.
pub const HOST: &str = "local-tailscaled.sock";
pub const WATCH_PATH: &str = "/localapi/v0/watch-ipn-bus";
/// Path of tailscaled's user-facing metrics (Prometheus text exposition).
pub const USERMETRICS_PATH: &str = "/localapi/v0/usermetrics";

/// Error bodies are read up to this size.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Malformed lines logged one by one before only every [`MALFORMED_LOG_EVERY`]th is.
const MALFORMED_LOG_FIRST: u64 = 5;
const MALFORMED_LOG_EVERY: u64 = 1000;

/// Consecutive re-watches that end without a single message before [`Follower`] decides the
/// daemon is going away (it still accepts connections but closes every stream).
const MAX_EMPTY_REWATCHES: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("cannot connect to tailscaled's LocalAPI at {socket}: {source} (is tailscaled running? does TS_SOCKET / --socket name the path tailscaled was started with?)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tailscaled is gone: its LocalAPI at {socket} stopped serving the IPN bus ({source}); check why tailscaled exited")]
    Gone {
        socket: PathBuf,
        #[source]
        source: Box<LocalApiError>,
    },
    #[error("HTTP request to tailscaled's LocalAPI at {socket} failed: {source} (is the socket really tailscaled's?)")]
    Request {
        socket: PathBuf,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("tailscaled answered GET {path} with {code}: \"{body}\"{}", status_hint(*code))]
    Status {
        path: String,
        code: u16,
        body: String,
    },
    /// The request could not be built (a header value the http crate refuses).
    #[error("building the LocalAPI request for {path}: {source}")]
    Build {
        path: String,
        #[source]
        source: http::Error,
    },
    #[error("reading the IPN bus from {socket}: {source}")]
    Read {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot start the IPN bus parser for {socket}: {source}")]
    Parser {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tailscaled at {socket} ended the IPN bus stream {times} times in a row without sending anything")]
    EmptyStreams { socket: PathBuf, times: u32 },
    #[error(
        "tailscaled at {socket} did not answer {method} {path} within {timeout:?}; is it stuck?"
    )]
    Timeout {
        socket: PathBuf,
        method: String,
        path: String,
        timeout: Duration,
    },
    #[error("tailscaled at {socket} answered {method} {path} with more than {limit} bytes; is the socket really tailscaled's?")]
    ReplyTooLarge {
        socket: PathBuf,
        method: String,
        path: String,
        limit: usize,
    },
}

/// A client of one tailscaled LocalAPI socket.
#[derive(Clone, Debug)]
pub struct LocalApi {
    socket: PathBuf,
}

impl LocalApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LocalApi {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens `GET /localapi/v0/watch-ipn-bus?mask=<mask>`. Returns once tailscaled has sent the
    /// response headers, i.e. once the watcher is registered: no event after this call is lost.
    /// Messages are parsed as [`Notify`] (peers skipped) while they stream in.
    pub async fn watch_ipn_bus(&self, mask: u64) -> Result<BusWatch, LocalApiError> {
        self.watch_ipn_bus_as(mask).await
    }

    /// [`LocalApi::watch_ipn_bus`], parsing messages as `T` (e.g. with their peers).
    pub async fn watch_ipn_bus_as<T: BusMessage>(
        &self,
        mask: u64,
    ) -> Result<BusWatch<T>, LocalApiError> {
        let path = format!("{WATCH_PATH}?mask={mask}");
        let response = self.send(&http::Method::GET, &path, None, None).await?;
        let code = response.status().as_u16();
        let mut body = response.into_body();
        if code != 200 {
            let body = read_error_body(&mut body).await;
            return Err(LocalApiError::Status { path, code, body });
        }
        let (chunks, messages) =
            stream::spawn_parser::<T>().map_err(|source| LocalApiError::Parser {
                socket: self.socket.clone(),
                source,
            })?;
        Ok(BusWatch {
            socket: self.socket.clone(),
            messages,
            pump: Some(tokio::spawn(pump(body, chunks))),
        })
    }

    /// Sends one request on a connection of its own, with an optional `If-Match` and JSON body.
    async fn send(
        &self,
        method: &http::Method,
        path: &str,
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Incoming>, LocalApiError> {
        // No idle pool: a watch is one endless request, and a finished one must close its
        // connection (that is how tailscaled learns the watcher is gone).
        let client: Client<UnixConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(UnixConnector);
        // hyperlocal's URI names the socket (hex-encoded in its authority) for the connector;
        // the request itself goes out in origin form with the Host tailscaled accepts, because
        // a real tailscaled answers 403 to the hex-encoded Host hyperlocal would otherwise send.
        let uri: http::Uri = UnixUri::new(&self.socket, path).into();
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(http::header::HOST, HOST);
        if let Some(tag) = if_match {
            builder = builder.header(http::header::IF_MATCH, tag);
        }
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| LocalApiError::Build {
                path: path.to_string(),
                source,
            })?;
        client.request(request).await.map_err(|e| {
            // `Connect` when the socket could not be reached.
            if e.is_connect() {
                LocalApiError::Connect {
                    socket: self.socket.clone(),
                    source: io_source(&e),
                }
            } else {
                LocalApiError::Request {
                    socket: self.socket.clone(),
                    source: e,
                }
            }
        })
    }

    /// One plain request: `method path` with an optional `If-Match` and JSON body, on its own
    /// connection, answered within [`CALL_TIMEOUT`]. Any HTTP status is an `Ok` [`Reply`]; only
    /// transport failures are errors (a connect failure is [`LocalApiError::Connect`]).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, LocalApiError> {
        let exchange = async {
            let response = self.send(&method, path, if_match, body).await?;
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get(http::header::ETAG)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = Limited::new(response.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(source) => LocalApiError::Read {
                        socket: self.socket.clone(),
                        source: *source,
                    },
                    // Limited's own error: the body went past the limit.
                    Err(_) => LocalApiError::ReplyTooLarge {
                        socket: self.socket.clone(),
                        method: method.to_string(),
                        path: path.to_string(),
                        limit: MAX_REPLY,
                    },
                })?;
            Ok(Reply {
                status,
                etag,
                body: body.to_bytes().to_vec(),
            })
        };
        match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(LocalApiError::Timeout {
                socket: self.socket.clone(),
                method: method.to_string(),
                path: path.to_string(),
                timeout: CALL_TIMEOUT,
            }),
        }
    }
}

/// The I/O error under a connect failure (what `connect(2)` said), for a precise message.
fn io_source(e: &hyper_util::client::legacy::Error) -> std::io::Error {
    std::iter::successors(std::error::Error::source(e), |err| err.source())
        .find_map(|err| err.downcast_ref::<std::io::Error>())
        .map_or_else(
            || std::io::Error::other(e.to_string()),
            |io| std::io::Error::new(io.kind(), io.to_string()),
        )
}

/// What to check for well-known codes.
fn status_hint(code: u16) -> &'static str {
    match code {
        403 => " (tailscaled refused the request: run as root or as tailscaled's operator user)",
        404 => " (this tailscaled does not know the endpoint; is it a tailscaled LocalAPI?)",
        _ => "",
    }
}

async fn read_error_body(body: &mut Incoming) -> String {
    let mut out = Vec::new();
    // A broken error body is reported as what arrived so far: the status is the news.
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() >= MAX_ERROR_BODY {
                out.truncate(MAX_ERROR_BODY);
                break;
            }
        }
    }
    outside(&String::from_utf8_lossy(&out))
}

/// What a bus watch can be parsed into: a [`Notify`] with or without its peers.
pub trait BusMessage: DeserializeOwned + Send + 'static {
    /// True for the last message of a stream the server cut because we lagged.
    fn is_fell_behind(&self) -> bool;
    /// Takes in the node's status (read with [`STATUS_SELF_PATH`]) unless the message has one.
    fn add_status(&mut self, status: &[u8]) -> Result<(), serde_json::Error>;
}

impl<M: PeerMode> BusMessage for Notify<M> {
    fn is_fell_behind(&self) -> bool {
        Notify::is_fell_behind(self)
    }

    fn add_status(&mut self, status: &[u8]) -> Result<(), serde_json::Error> {
        if self.initial_status.is_none() {
            self.initial_status = Some(serde_json::from_slice::<Status<M>>(status)?);
        }
        Ok(())
    }
}

/// Moves the body's bytes to the parser as they arrive; the parser's end closing ends it.
async fn pump(
    mut body: Incoming,
    chunks: tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if !data.is_empty() && chunks.send(data).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// The one rule for a line of the bus that is not a message, in every watcher (README
/// "Watching tailscaled"): skipped, counted, and logged without its content (a line may be
/// anything, of any size): each of the first few, then every thousandth.
fn skip_malformed(socket: &Path, len: u64, error: &serde_json::Error) {
    let n = MALFORMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n <= MALFORMED_LOG_FIRST || n.is_multiple_of(MALFORMED_LOG_EVERY) {
        tracing::warn!(
            "skipping a malformed IPN bus message from {} ({len} bytes: {}); {n} skipped so far",
            socket.display(),
            outside_max(&error.to_string(), 200)
        );
    }
}

static MALFORMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many malformed bus lines this process has skipped.
pub fn malformed_lines() -> u64 {
    MALFORMED.load(std::sync::atomic::Ordering::Relaxed)
}

/// An open IPN bus stream. Dropping it closes the connection.
pub struct BusWatch<T = Notify> {
    socket: PathBuf,
    messages: tokio::sync::mpsc::Receiver<Parsed<T>>,
    /// The task moving the body to the parser; taken once it has ended.
    pump: Option<tokio::task::JoinHandle<Result<(), hyper::Error>>>,
}

impl<T> Drop for BusWatch<T> {
    fn drop(&mut self) {
        if let Some(p) = &self.pump {
            p.abort();
        }
    }
}

impl<T: BusMessage> BusWatch<T> {
    /// The next message; `Ok(None)` once tailscaled ended the stream cleanly. A line that is
    /// not a message is skipped (see [`skip_malformed`]); only the stream failing is an error.
    pub async fn next(&mut self) -> Result<Option<T>, LocalApiError> {
        loop {
            match self.messages.recv().await {
                Some(Parsed::Message(msg)) => return Ok(Some(msg)),
                Some(Parsed::Malformed { len, error }) => {
                    // A line cut short by a broken connection is the connection's fault.
                    if self.pump.as_ref().is_some_and(|p| p.is_finished()) {
                        self.stream_result().await?;
                    }
                    skip_malformed(&self.socket, len, &error);
                }
                None => {
                    self.stream_result().await?;
                    return Ok(None);
                }
            }
        }
    }

    /// How the body ended (once: later calls say `Ok`).
    async fn stream_result(&mut self) -> Result<(), LocalApiError> {
        let Some(pump) = self.pump.take() else {
            return Ok(());
        };
        match pump.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(LocalApiError::Read {
                socket: self.socket.clone(),
                source,
            }),
            Err(e) => Err(LocalApiError::Parser {
                socket: self.socket.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

/// Follows the bus across stream ends.
///
/// When a stream ends or is cut (HEAD's "IPN bus consumer fell behind; closing watch" then EOF,
/// a read error), it watches again with the same mask — whose first message re-delivers the
/// full state, so nothing is missed for good — for as long as tailscaled accepts connections.
/// Once connecting fails (or tailscaled keeps closing streams without sending anything) it
/// returns [`LocalApiError::Gone`]: tailscaled is gone. One log line per re-watch.
pub struct Follower<T = Notify> {
    api: LocalApi,
    mask: u64,
    watch: Option<BusWatch<T>>,
    /// Read the node's status at the start of each watch (see [`Follower::with_self_status`]).
    self_status: bool,
    /// The current watch has not delivered its first message yet.
    first_of_watch: bool,
    /// Re-watches since the last message.
    empty_rewatches: u32,
    /// Why the previous stream ended, for the re-watch log line.
    ended_because: Option<String>,
    started: bool,
    /// Watches opened again after a stream ended, over this follower's life.
    rewatches: u64,
}

impl Follower {
    /// Follows with messages parsed as [`Notify`] (peers skipped).
    pub fn new(api: LocalApi, mask: u64) -> Self {
        Follower::of(api, mask)
    }
}

impl<T: BusMessage> Follower<T> {
    /// Follows with messages parsed as `T`.
    pub fn of(api: LocalApi, mask: u64) -> Self {
        Follower {
            api,
            mask,
            watch: None,
            self_status: false,
            first_of_watch: false,
            empty_rewatches: 0,
            ended_because: None,
            started: false,
            rewatches: 0,
        }
    }

    /// Goes on with a watch already open (its first message already read), e.g. the login
    /// watch of ts-auth becoming the guard's: one watch less.
    pub fn resume(api: LocalApi, mask: u64, watch: BusWatch<T>) -> Self {
        let mut f = Follower::of(api, mask);
        f.watch = Some(watch);
        f.started = true;
        f
    }

    /// With a mask that asks for no netmap ([`MASK_LEAN`]), this device is not in the first
    /// message: read `GET /localapi/v0/status?peers=false` once the first message of each watch
    /// has arrived (so the status is at least as new as the watch) and hand it back inside that
    /// message as its `InitialStatus`. A few KiB, whatever the tailnet's size.
    pub fn with_self_status(mut self) -> Self {
        self.self_status = true;
        self
    }

    /// Watches opened again after a stream ended, so far.
    pub fn rewatches(&self) -> u64 {
        self.rewatches
    }

    /// The next message. The first call opens the watch; a failure to connect then is a
    /// `Connect` error (tailscaled not there), a failure on a later re-watch is `Gone`.
    /// `Status` errors are returned as they are (re-watching would get the same answer).
    pub async fn next(&mut self) -> Result<T, LocalApiError> {
        loop {
            let watch = match self.watch.as_mut() {
                Some(w) => w,
                None => {
                    if self.started {
                        self.rewatch_pause().await?;
                    }
                    let first = !self.started;
                    self.started = true;
                    match self.api.watch_ipn_bus_as(self.mask).await {
                        Ok(w) => {
                            self.first_of_watch = true;
                            self.watch.insert(w)
                        }
                        Err(e @ LocalApiError::Status { .. }) => return Err(e),
                        Err(e) if first => return Err(e),
                        Err(e) => return Err(self.gone(e)),
                    }
                }
            };
            match watch.next().await {
                Ok(Some(mut msg)) => {
                    self.empty_rewatches = 0;
                    if msg.is_fell_behind() {
                        self.ended_because =
                            Some("tailscaled cut the stream: the watcher fell behind".into());
                    }
                    if std::mem::take(&mut self.first_of_watch) && self.self_status {
                        self.add_self_status(&mut msg).await;
                    }
                    return Ok(msg);
                }
                Ok(None) => {
                    self.watch = None;
                    if self.ended_because.is_none() {
                        self.ended_because = Some("tailscaled ended the stream".into());
                    }
                }
                Err(e) => {
                    self.watch = None;
                    self.ended_because = Some(e.to_string());
                }
            }
        }
    }

    /// Counts a re-watch, backs off a little when streams keep ending empty (a daemon shutting
    /// down still accepts connections for a moment), and gives up after a few.
    async fn rewatch_pause(&mut self) -> Result<(), LocalApiError> {
        let why = self
            .ended_because
            .take()
            .unwrap_or_else(|| "stream ended".into());
        if self.empty_rewatches >= MAX_EMPTY_REWATCHES {
            let times = self.empty_rewatches;
            return Err(self.gone(LocalApiError::EmptyStreams {
                socket: self.api.socket.clone(),
                times,
            }));
        }
        if self.empty_rewatches > 0 {
            let ms = 25u64 << self.empty_rewatches.min(5);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.empty_rewatches += 1;
        self.rewatches += 1;
        ts_common::status::note_rewatch();
        tracing::info!(
            "IPN bus watch ended ({why}); watching again with mask={}",
            self.mask
        );
        Ok(())
    }

    /// See [`Follower::with_self_status`]. Without an answer the watcher still learns this
    /// device from the next self change; one line says why it could not now.
    async fn add_self_status(&self, msg: &mut T) {
        let why = match self
            .api
            .call(http::Method::GET, STATUS_SELF_PATH, None, None)
            .await
        {
            Ok(reply) if reply.is_success() => match msg.add_status(&reply.body) {
                Ok(()) => return,
                Err(e) => format!("not a status: {}", outside_max(&e.to_string(), 200)),
            },
            Ok(reply) => format!("{} {}", reply.status, reply.body_excerpt(200)),
            Err(e) => e.to_string(),
        };
        tracing::warn!("reading this node's status from tailscaled (GET {STATUS_SELF_PATH}): {why}; waiting for the next self change");
    }

    fn gone(&self, source: LocalApiError) -> LocalApiError {
        LocalApiError::Gone {
            socket: self.api.socket.clone(),
            source: Box::new(source),
        }
    }
}

/// How long a plain LocalAPI call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Plain replies (serve config, prefs, DNS config) are read up to this size.
const MAX_REPLY: usize = 8 << 20;

/// The answer to a plain (non-streaming) LocalAPI call, whatever its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// The `Etag` header (tailscaled sends it on `GET serve-config`), verbatim.
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text for an error message: lossy UTF-8, at most `max` characters, control
    /// characters escaped, so a daemon's answer can go into one log line safely.
    pub fn body_excerpt(&self, max: usize) -> String {
        outside_max(&String::from_utf8_lossy(&self.body), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_the_references() {
        // InitialNetMap (8) | InitialPrefs (4) | InitialState (2), and without prefs.
        assert_eq!(MASK_FIRST_WATCH, 8 | 4 | 2);
        assert_eq!(MASK_STEADY, 8 | 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_error_names_the_socket_and_what_to_check() {
        let api = LocalApi::new("/nonexistent/tsboot-test/tailscaled.sock");
        let err = match api.watch_ipn_bus(MASK_STEADY).await {
            Err(e) => e,
            Ok(_) => panic!("connected to a nonexistent socket"),
        };
        let msg = err.to_string();
        assert!(matches!(err, LocalApiError::Connect { .. }), "{msg}");
        assert!(
            msg.contains("/nonexistent/tsboot-test/tailscaled.sock"),
            "{msg}"
        );
        assert!(msg.contains("is tailscaled running?"), "{msg}");
        assert!(msg.contains("TS_SOCKET"), "{msg}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn follower_first_failure_is_connect_not_gone() {
        let mut f = Follower::new(
            LocalApi::new("/nonexistent/tsboot-test/x.sock"),
            MASK_STEADY,
        );
        assert!(matches!(f.next().await, Err(LocalApiError::Connect { .. })));
    }
}
