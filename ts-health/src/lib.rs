//! ts-health: the local HTTP endpoint of a tsboot container (README "Health and metrics",
//! D20). `/healthz` answers from what it already knows, never by asking a phase: the node's
//! state and addresses come from its own IPN-bus watch, the watchers' reconcile status from
//! the reports in the status directory (`ts_common::status`). `/metrics` is tailscaled's
//! `/localapi/v0/usermetrics` followed by tsboot's own series.

pub mod metrics;
pub mod verdict;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use ts_common::settings::{ListenAddr, Settings};
use ts_common::status;
use ts_localapi::localapi::{
    Follower, LocalApi, LocalApiError, MASK_LEAN, STATUS_SELF_PATH, USERMETRICS_PATH,
};
use verdict::NodeView;

/// How long a scrape waits for tailscaled's user metrics before answering with tsboot's alone.
pub const USERMETRICS_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before watching the bus again when tailscaled is not (or no longer) there.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// A client that sends no complete request head within this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One listener and the handlers it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: ListenAddr,
    pub healthz: bool,
    pub metrics: bool,
    /// `TS_HEALTHCHECK_ADDR_PORT`'s listener.
    pub deprecated: bool,
}

/// What ts-health needs, taken from [`Settings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub socket: PathBuf,
    pub status_dir: PathBuf,
    pub ready_fd: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("nothing to serve: set TS_ENABLE_HEALTH_CHECK=true and/or TS_ENABLE_METRICS=true (or the deprecated TS_HEALTHCHECK_ADDR_PORT)")]
    NothingEnabled,
    #[error("cannot listen on {addr} ({var}): {source}; pick a free port or another address")]
    Bind {
        addr: String,
        var: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reporting readiness on TS_READY_FD={fd}: {source} (was the fd really passed to this process?)")]
    Ready {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Config, HealthError> {
        let local = &s.local;
        let mut listeners = Vec::new();
        if let Some(addr) = &local.addr {
            listeners.push(Listener {
                addr: addr.clone(),
                healthz: local.health_check,
                metrics: local.metrics,
                deprecated: false,
            });
        }
        if let Some(addr) = &local.deprecated_health_addr {
            listeners.push(Listener {
                addr: addr.clone(),
                healthz: true,
                metrics: false,
                deprecated: true,
            });
        }
        let status_dir = local
            .status_dir
            .clone()
            .ok_or(HealthError::NothingEnabled)?;
        if listeners.is_empty() {
            return Err(HealthError::NothingEnabled);
        }
        Ok(Config {
            listeners,
            socket: s.socket.clone(),
            status_dir,
            ready_fd: s.ready_fd,
        })
    }
}

/// State shared by the bus watch and the request handlers.
struct Shared {
    node: Mutex<NodeView>,
    /// The last verdict served, so changes are logged once.
    last_healthy: Mutex<Option<bool>>,
    api: LocalApi,
    status_dir: PathBuf,
}

impl Shared {
    fn node(&self) -> NodeView {
        self.node.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn verdict(&self) -> (Result<(), String>, Vec<status::Report>, NodeView, u64) {
        let node = self.node();
        let reports = status::read_all(&self.status_dir);
        let now = status::now_ms();
        let v = verdict::verdict(&node, &reports, now);
        let mut last = self.last_healthy.lock().unwrap_or_else(|p| p.into_inner());
        if *last != Some(v.is_ok()) {
            match &v {
                Ok(()) => tracing::info!("healthy: /healthz answers 200"),
                Err(why) => tracing::info!("unhealthy: /healthz answers 503: {why}"),
            }
            *last = Some(v.is_ok());
        }
        (v, reports, node, now)
    }
}

/// Binds every listener (falling back from `[::]` to `0.0.0.0` where IPv6 is unavailable).
pub fn bind_all(cfg: &Config) -> Result<Vec<(Listener, std::net::TcpListener)>, HealthError> {
    cfg.listeners
        .iter()
        .map(|l| bind(&l.addr, l.deprecated).map(|s| (l.clone(), s)))
        .collect()
}

fn bind(addr: &ListenAddr, deprecated: bool) -> Result<std::net::TcpListener, HealthError> {
    let var = if deprecated {
        "TS_HEALTHCHECK_ADDR_PORT"
    } else {
        "TS_LOCAL_ADDR_PORT"
    };
    let fail = |source| HealthError::Bind {
        addr: addr.to_string(),
        var,
        source,
    };
    let sockaddr = match addr.ip {
        IpAddr::V4(ip) => SocketAddr::from((ip, addr.port)),
        IpAddr::V6(ip) => {
            let scope = match &addr.zone {
                None => 0,
                Some(z) => z.parse::<u32>().or_else(|_| {
                    nix::net::if_::if_nametoindex(z.as_str()).map_err(|e| {
                        fail(std::io::Error::other(format!(
                            "unknown interface {z:?}: {e}"
                        )))
                    })
                })?,
            };
            SocketAddr::V6(SocketAddrV6::new(ip, addr.port, 0, scope))
        }
    };
    let listener = match std::net::TcpListener::bind(sockaddr) {
        Ok(l) => l,
        // A kernel without IPv6: like Go, serve the wildcard on IPv4.
        Err(e)
            if addr.ip.is_unspecified()
                && addr.ip.is_ipv6()
                && matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EAFNOSUPPORT) | Some(nix::libc::EADDRNOTAVAIL)
                ) =>
        {
            tracing::info!(
                "IPv6 is not available ({e}); listening on 0.0.0.0:{} instead",
                addr.port
            );
            std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port)))
                .map_err(fail)?
        }
        Err(e) => return Err(fail(e)),
    };
    listener.set_nonblocking(true).map_err(fail)?;
    Ok(listener)
}

fn display(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Serves until SIGTERM/SIGINT: binds, reports readiness, follows the bus, answers requests.
pub async fn run(cfg: &Config) -> Result<(), HealthError> {
    let mut stop = ts_localapi::signals::StopSignals::install();
    let bound = bind_all(cfg)?;
    let shared = Arc::new(Shared {
        node: Mutex::new(NodeView::default()),
        last_healthy: Mutex::new(None),
        api: LocalApi::new(&cfg.socket),
        status_dir: cfg.status_dir.clone(),
    });
    let mut tasks = Vec::new();
    for (listener, std_listener) in bound {
        let local = std_listener
            .local_addr()
            .map(|a| display(&a))
            .unwrap_or_else(|_| listener.addr.to_string());
        // containerboot's log lines, with the address actually bound.
        if listener.metrics {
            tracing::info!("Running metrics endpoint at {local}/metrics");
        }
        if listener.healthz {
            tracing::info!("Running healthcheck endpoint at {local}/healthz");
        }
        let tcp = TcpListener::from_std(std_listener).map_err(|source| HealthError::Bind {
            addr: listener.addr.to_string(),
            var: "TS_LOCAL_ADDR_PORT",
            source,
        })?;
        tasks.push(tokio::spawn(serve(tcp, listener, shared.clone())));
    }
    if let Some(fd) = cfg.ready_fd {
        ts_common::process::notify_ready(Some(fd))
            .map_err(|source| HealthError::Ready { fd, source })?;
    }
    let follow = tokio::spawn(follow_node(shared.clone()));
    let sig = stop.recv().await;
    tracing::info!("received {sig}, exiting");
    follow.abort();
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Keeps [`NodeView`] current from tailscaled's IPN bus, watching again (after a short pause)
/// whenever tailscaled is not there yet or went away.
async fn follow_node(shared: Arc<Shared>) {
    let mut first = true;
    loop {
        let mut follower = Follower::new(shared.api.clone(), MASK_LEAN).with_self_status();
        let why = loop {
            match follower.next().await {
                Ok(msg) => {
                    let mut node = shared.node.lock().unwrap_or_else(|p| p.into_inner());
                    node.connected = true;
                    node.not_connected.clear();
                    if let Some(state) = msg.backend_state() {
                        node.state = Some(state);
                    }
                    if let Some(me) = msg.self_identity() {
                        node.addresses = me.addresses;
                    }
                }
                Err(e) => break e,
            }
        };
        let was_connected = {
            let mut node = shared.node.lock().unwrap_or_else(|p| p.into_inner());
            let was_connected = std::mem::take(&mut node.connected);
            node.rewatches += follower.rewatches() + u64::from(was_connected);
            node.state = None;
            node.addresses.clear();
            node.not_connected = status::one_line(&short(&why));
            was_connected
        };
        if was_connected || first {
            tracing::info!("not watching tailscaled's IPN bus: {why}; trying again");
        }
        first = false;
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// The part of a LocalAPI error that fits a `/healthz` line.
fn short(e: &LocalApiError) -> String {
    match e {
        LocalApiError::Connect { socket, source } => {
            format!("no LocalAPI at {} ({source})", socket.display())
        }
        LocalApiError::Gone { socket, .. } => {
            format!("tailscaled's LocalAPI at {} went away", socket.display())
        }
        other => other.to_string(),
    }
}

async fn serve(tcp: TcpListener, listener: Listener, shared: Arc<Shared>) {
    let listener = Arc::new(listener);
    loop {
        let stream = match tcp.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds, say: do not spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let listener = listener.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let listener = listener.clone();
                async move { Ok::<_, Infallible>(handle(req, &listener, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static, valid headers")
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn handle(
    req: Request<Incoming>,
    listener: &Listener,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let served = match path {
        "/healthz" => listener.healthz,
        "/metrics" => listener.metrics,
        _ => false,
    };
    if !served {
        return text(StatusCode::NOT_FOUND, PLAIN, "404 page not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "Method Not Allowed\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/healthz" => match shared.verdict().0 {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        _ => {
            let usermetrics = tokio::time::timeout(
                USERMETRICS_TIMEOUT,
                shared.api.call(Method::GET, USERMETRICS_PATH, None, None),
            )
            .await;
            let mut body = match usermetrics {
                Ok(Ok(reply)) if reply.is_success() => {
                    Ok(String::from_utf8_lossy(&reply.body).into_owned())
                }
                Ok(Ok(reply)) => Err(format!("{} {}", reply.status, reply.body_excerpt(200))),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {USERMETRICS_TIMEOUT:?}")),
            }
            .unwrap_or_else(|why| {
                tracing::debug!("tailscaled's user metrics: {why}");
                String::new()
            });
            let up = !body.is_empty();
            if up && !body.ends_with('\n') {
                body.push('\n');
            }
            let (v, reports, node, now) = shared.verdict();
            body.push_str(&metrics::render(&metrics::Snapshot {
                node: &node,
                reports: &reports,
                healthy: v.is_ok(),
                usermetrics_up: up,
                now_ms: now,
            }));
            text(StatusCode::OK, metrics::CONTENT_TYPE, body)
        }
    }
}

/// The `--explain` plan: listeners, handlers, sources, and the verdict right now.
pub async fn explain(cfg: &Config) -> Vec<String> {
    let mut out = vec!["ts-health plan (--explain starts no listener):".to_string()];
    for l in &cfg.listeners {
        let paths: Vec<&str> = [(l.healthz, "/healthz"), (l.metrics, "/metrics")]
            .into_iter()
            .filter_map(|(on, path)| on.then_some(path))
            .collect();
        out.push(format!(
            "  listen on {} ({}): {}; anything else 404",
            l.addr,
            if l.deprecated {
                "TS_HEALTHCHECK_ADDR_PORT, deprecated"
            } else {
                "TS_LOCAL_ADDR_PORT"
            },
            paths.join(", ")
        ));
    }
    out.push(format!(
        "  node state and addresses: GET /localapi/v0/watch-ipn-bus?mask={MASK_LEAN} (and GET {STATUS_SELF_PATH} at each watch) on {}",
        cfg.socket.display()
    ));
    out.push(format!(
        "  watchers' reconcile status: the reports in {} (a reconcile running over {}ms counts as stuck)",
        cfg.status_dir.display(),
        status::STUCK_AFTER_MS
    ));
    out.push(format!(
        "  /metrics: GET {USERMETRICS_PATH} on the socket (at most {}s), then tsboot_* series",
        USERMETRICS_TIMEOUT.as_secs()
    ));
    out.push(match cfg.ready_fd {
        Some(fd) => format!("  readiness: write \"\\n\" to fd {fd} once listening, then close it"),
        None => "  readiness: none (TS_READY_FD / --ready-fd unset)".to_string(),
    });
    let reports = status::read_all(&cfg.status_dir);
    let node = tokio::time::timeout(Duration::from_secs(2), async {
        Follower::new(LocalApi::new(&cfg.socket), MASK_LEAN)
            .with_self_status()
            .next()
            .await
    })
    .await;
    let view = match node {
        Ok(Ok(msg)) => NodeView {
            connected: true,
            state: msg.backend_state(),
            addresses: msg
                .self_identity()
                .map(|me| me.addresses)
                .unwrap_or_default(),
            ..NodeView::default()
        },
        Ok(Err(e)) => NodeView {
            not_connected: short(&e),
            ..NodeView::default()
        },
        Err(_) => NodeView {
            not_connected: "tailscaled did not answer within 2s".into(),
            ..NodeView::default()
        },
    };
    out.push(match verdict::verdict(&view, &reports, status::now_ms()) {
        Ok(()) => "  now: /healthz would answer 200 ok".to_string(),
        Err(why) => format!("  now: /healthz would answer 503: {why}"),
    });
    out
}

impl ts_common::cli::Failure for HealthError {
    fn exit_code(&self) -> i32 {
        match self {
            HealthError::NothingEnabled => ts_common::exit::USAGE,
            _ => ts_common::exit::FAILURE,
        }
    }
}
