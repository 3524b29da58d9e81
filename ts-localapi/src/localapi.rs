//! tailscaled's LocalAPI over its unix socket (docs/localapi.md §1-2): the IPN bus watch.
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

use crate::notify::{Notify, NotifyError};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri as UnixUri};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seed containerboot's first watch: InitialNetMap | InitialPrefs | InitialState.
pub const MASK_FIRST_WATCH: u64 = 14;
/// Re-watch / steady state: InitialNetMap | InitialState.
pub const MASK_STEADY: u64 = 10;

/// The only Host tailscaled accepts besides an empty one.
pub const HOST: &str = "local-tailscaled.sock";
/// Path of the bus endpoint.
pub const WATCH_PATH: &str = "/localapi/v0/watch-ipn-bus";
/// Path of tailscaled's user-facing metrics (Prometheus text exposition).
pub const USERMETRICS_PATH: &str = "/localapi/v0/usermetrics";

/// A bus message larger than this is refused instead of growing the buffer without bound.
/// Real netmaps of large tailnets reach a few MiB.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Error bodies are read up to this size.
const MAX_ERROR_BODY: usize = 64 << 10;
/// After a big message the buffer is shrunk back to this, so one large netmap does not pin
/// its memory for the life of a long-running watcher.
const KEEP_CAPACITY: usize = 64 << 10;

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
    #[error("tailscaled answered GET {path} with {code}: {body:?}{hint}")]
    Status {
        path: String,
        code: u16,
        body: String,
        /// What to check for well-known codes.
        hint: &'static str,
    },
    #[error("reading the IPN bus from {socket}: {source}")]
    Read {
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("an IPN bus message from {socket} exceeds {limit} bytes without a newline; is the socket really tailscaled's?")]
    TooLarge { socket: PathBuf, limit: usize },
    #[error("tailscaled at {socket} ended the IPN bus stream {times} times in a row without sending anything")]
    EmptyStreams { socket: PathBuf, times: u32 },
    #[error("decoding an IPN bus message from {socket}: {source}")]
    Decode {
        socket: PathBuf,
        #[source]
        source: NotifyError,
    },
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
    pub async fn watch_ipn_bus(&self, mask: u64) -> Result<BusWatch, LocalApiError> {
        // No idle pool: a watch is one endless request, and a finished one must close its
        // connection (that is how tailscaled learns the watcher is gone).
        let client: Client<UnixConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(UnixConnector);
        let path = format!("{WATCH_PATH}?mask={mask}");
        // hyperlocal's URI names the socket (hex-encoded in its authority) for the connector;
        // the request itself goes out in origin form with the Host tailscaled accepts, because
        // a real tailscaled answers 403 to the hex-encoded Host hyperlocal would otherwise send.
        let uri: http::Uri = UnixUri::new(&self.socket, &path).into();
        let request = http::Request::get(uri)
            .header(http::header::HOST, HOST)
            .body(Empty::<Bytes>::new())
            .map_err(|e| build_error(&path, e))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| self.client_error(e))?;
        let status = response.status();
        let mut body = response.into_body();
        if status != http::StatusCode::OK {
            let text = read_error_body(&mut body).await;
            return Err(LocalApiError::Status {
                path,
                code: status.as_u16(),
                body: text,
                hint: status_hint(status.as_u16()),
            });
        }
        Ok(BusWatch {
            socket: self.socket.clone(),
            body,
            buf: Vec::new(),
            scanned: 0,
            ended: false,
        })
    }
}

impl LocalApi {
    /// A failed request: `Connect` when the socket could not be reached, else `Request`.
    fn client_error(&self, e: hyper_util::client::legacy::Error) -> LocalApiError {
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
    }
}

/// A request that could not even be built (a header value the http crate refuses).
fn build_error(path: &str, e: http::Error) -> LocalApiError {
    LocalApiError::Status {
        path: path.to_string(),
        code: 0,
        body: e.to_string(),
        hint: "",
    }
}

/// The I/O error under a connect failure (what `connect(2)` said), for a precise message.
fn io_source(e: &hyper_util::client::legacy::Error) -> std::io::Error {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return std::io::Error::new(io.kind(), io.to_string());
        }
        source = err.source();
    }
    std::io::Error::other(e.to_string())
}

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
    String::from_utf8_lossy(&out).trim_end().to_string()
}

/// An open IPN bus stream. Dropping it closes the connection.
pub struct BusWatch {
    socket: PathBuf,
    body: Incoming,
    /// Bytes received but not yet returned as a message.
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    ended: bool,
}

impl BusWatch {
    /// The next message; `Ok(None)` once tailscaled ended the stream cleanly. A `Decode` error
    /// concerns one line only: the stream stays usable and the next call reads the next line.
    pub async fn next(&mut self) -> Result<Option<Notify>, LocalApiError> {
        Ok(self.next_with_line().await?.map(|(msg, _)| msg))
    }

    /// Like [`BusWatch::next`], also handing back the line, for a reader that needs fields
    /// [`Notify`] does not model (peers: [`crate::peers`]).
    pub async fn next_with_line(&mut self) -> Result<Option<(Notify, Vec<u8>)>, LocalApiError> {
        loop {
            if let Some(line) = self.take_line() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return match Notify::from_line(&line) {
                    Ok(msg) => Ok(Some((msg, line))),
                    Err(source) => Err(LocalApiError::Decode {
                        socket: self.socket.clone(),
                        source,
                    }),
                };
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    // Go's decoder accepts a last value without a newline; so do we.
                    if !self.buf.is_empty() {
                        self.buf.push(b'\n');
                    }
                }
                Some(Err(source)) => {
                    self.ended = true;
                    self.buf.clear();
                    return Err(LocalApiError::Read {
                        socket: self.socket.clone(),
                        source,
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                    if self.buf.len() > MAX_MESSAGE && !self.buf[self.scanned..].contains(&b'\n') {
                        self.ended = true;
                        self.buf = Vec::new();
                        return Err(LocalApiError::TooLarge {
                            socket: self.socket.clone(),
                            limit: MAX_MESSAGE,
                        });
                    }
                }
            }
        }
    }

    /// Removes and returns the first complete line (without its `\n`), if any.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        let Some(pos) = pos else {
            self.scanned = self.buf.len();
            return None;
        };
        let end = self.scanned + pos;
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        line.pop();
        self.scanned = 0;
        if self.buf.capacity() > KEEP_CAPACITY && self.buf.len() < KEEP_CAPACITY {
            self.buf.shrink_to(KEEP_CAPACITY);
        }
        Some(line)
    }
}

/// Follows the bus across stream ends.
///
/// When a stream ends or is cut (HEAD's "IPN bus consumer fell behind; closing watch" then EOF,
/// a read error), it watches again with the same mask — whose first message re-delivers the
/// full state, so nothing is missed for good — for as long as tailscaled accepts connections.
/// Once connecting fails (or tailscaled keeps closing streams without sending anything) it
/// returns [`LocalApiError::Gone`]: tailscaled is gone. One log line per re-watch.
pub struct Follower {
    api: LocalApi,
    mask: u64,
    watch: Option<BusWatch>,
    /// Re-watches since the last message.
    empty_rewatches: u32,
    /// Why the previous stream ended, for the re-watch log line.
    ended_because: Option<String>,
    started: bool,
    /// Watches opened again after a stream ended, over this follower's life.
    rewatches: u64,
}

impl Follower {
    pub fn new(api: LocalApi, mask: u64) -> Self {
        Follower {
            api,
            mask,
            watch: None,
            empty_rewatches: 0,
            ended_because: None,
            started: false,
            rewatches: 0,
        }
    }

    /// Watches opened again after a stream ended, so far.
    pub fn rewatches(&self) -> u64 {
        self.rewatches
    }

    pub fn api(&self) -> &LocalApi {
        &self.api
    }

    /// The next message. The first call opens the watch; a failure to connect then is a
    /// `Connect` error (tailscaled not there), a failure on a later re-watch is `Gone`.
    /// `Status` errors are returned as they are (re-watching would get the same answer), and
    /// `Decode` errors leave the follower usable.
    pub async fn next(&mut self) -> Result<Notify, LocalApiError> {
        Ok(self.next_with_line().await?.0)
    }

    /// Like [`Follower::next`], also handing back the message's line (see
    /// [`BusWatch::next_with_line`]).
    pub async fn next_with_line(&mut self) -> Result<(Notify, Vec<u8>), LocalApiError> {
        loop {
            let watch = match self.watch.as_mut() {
                Some(w) => w,
                None => {
                    if self.started {
                        self.rewatch_pause().await?;
                    }
                    let first = !self.started;
                    self.started = true;
                    match self.api.watch_ipn_bus(self.mask).await {
                        Ok(w) => self.watch.insert(w),
                        Err(e @ LocalApiError::Status { .. }) => return Err(e),
                        Err(e) if first => return Err(e),
                        Err(e) => return Err(self.gone(e)),
                    }
                }
            };
            match watch.next_with_line().await {
                Ok(Some((msg, line))) => {
                    self.empty_rewatches = 0;
                    if msg.is_fell_behind() {
                        self.ended_because =
                            Some("tailscaled cut the stream: the watcher fell behind".into());
                    }
                    return Ok((msg, line));
                }
                Ok(None) => {
                    self.watch = None;
                    if self.ended_because.is_none() {
                        self.ended_because = Some("tailscaled ended the stream".into());
                    }
                }
                Err(e @ LocalApiError::Decode { .. }) => return Err(e),
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
        bounded_text(&self.body, max)
    }
}

/// `bytes` as one printable line: lossy UTF-8, trimmed, control characters escaped, cut at
/// `max` characters (with an ellipsis).
pub fn bounded_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl LocalApi {
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
        let fut = self.call_inner(method.clone(), path, if_match, body);
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(LocalApiError::Timeout {
                socket: self.socket.clone(),
                method: method.to_string(),
                path: path.to_string(),
                timeout: CALL_TIMEOUT,
            }),
        }
    }

    async fn call_inner(
        &self,
        method: http::Method,
        path: &str,
        if_match: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, LocalApiError> {
        let client: Client<UnixConnector, http_body_util::Full<Bytes>> =
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(UnixConnector);
        // Same Host rule as the bus watch (see `watch_ipn_bus`).
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
            .body(http_body_util::Full::new(Bytes::from(
                body.unwrap_or_default(),
            )))
            .map_err(|e| build_error(path, e))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| self.client_error(e))?;
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| LocalApiError::Read {
                socket: self.socket.clone(),
                source,
            })?;
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
                if out.len() > MAX_REPLY {
                    return Err(LocalApiError::ReplyTooLarge {
                        socket: self.socket.clone(),
                        method: method.to_string(),
                        path: path.to_string(),
                        limit: MAX_REPLY,
                    });
                }
            }
        }
        Ok(Reply {
            status,
            etag,
            body: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_escapes_and_cuts() {
        assert_eq!(bounded_text(b"  etag mismatch\n", 100), "etag mismatch");
        assert_eq!(bounded_text(b"a\x1b[31mb", 100), "a\\u{1b}[31mb");
        assert_eq!(bounded_text(b"abcdef", 3), "abc…");
        assert_eq!(bounded_text(&[0xff, b'x'], 10), "\u{fffd}x");
    }

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
