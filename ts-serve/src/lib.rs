//! ts-serve: applies `TS_SERVE_CONFIG` (an `ipn.ServeConfig` JSON file: Tailscale Serve and
//! Funnel) to tailscaled and keeps it applied (README D21).
//!
//! Once the node is Running it clears whatever serve config an earlier run left (one `POST
//! serve-config` with `{}`), then applies the file with every `${TS_CERT_DOMAIN}` replaced by
//! the node's first certificate domain. Without one (HTTPS not enabled for the tailnet) the
//! placeholder becomes `no-https`, as in the reference, and HTTPS listeners are left out with a
//! warning while the rest is applied. The file is applied again whenever it or the certificate
//! domain changes; a result equal to what was last applied sends nothing.
//!
//! A file that is missing, unreadable or not a valid serve config never ends the watcher: the
//! last good config stays in tailscaled, one line says what is wrong (once per distinct
//! problem), the watcher reports itself unhealthy, and the next valid version is applied.
//! tailscaled refusing a config is handled the same way, with a retry every 5 s.
//!
//! With `TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT` (default true) the config's `svc:`
//! services are advertised once it is applied; at shutdown advertised services are withdrawn
//! and ts-serve waits a while (see [`ts_common::settings::ServeSettings::drain`]) so control
//! can move their clients to another node before this one goes away.

pub mod daemon;
pub mod files;
pub mod serve_config;

use daemon::{Applied, Daemon, DaemonError};
use serve_config::{Desired, ServeConfig};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use ts_common::settings::{ServeSettings, Settings};
use ts_localapi::localapi::{LocalApi, LocalApiError, MASK_LEAN, STATUS_SELF_PATH};
use ts_localapi::node::{NodeState, NodeWatch, Options, WatchEnd};
use ts_localapi::notify::BackendState;

/// After tailscaled refused a config (or could not be asked), try again this much later.
pub const RETRY: Duration = Duration::from_secs(5);

/// What the watcher needs, taken from [`Settings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `TS_SERVE_CONFIG`.
    pub path: PathBuf,
    pub socket: PathBuf,
    pub ready_fd: Option<i32>,
    pub auto_advertise: bool,
    pub no_inotify: bool,
    /// Wait after withdrawing services at shutdown.
    pub drain: Duration,
    /// Also guard the Running state: exit 1 when tailscaled leaves it.
    pub guard: bool,
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Config, ServeError> {
        let path = s.serve.config.clone().ok_or(ServeError::NoConfig)?;
        Ok(Config {
            path,
            socket: s.socket.clone(),
            ready_fd: s.ready_fd,
            auto_advertise: s.serve.auto_advertise,
            no_inotify: s.serve.no_inotify,
            drain: ServeSettings::drain(s.shutdown_grace),
            guard: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TS_SERVE_CONFIG is not set, so there is no serve config to apply: set TS_SERVE_CONFIG (or --config) to the path of an ipn.ServeConfig JSON file")]
    NoConfig,
    #[error(transparent)]
    LeftRunning(#[from] ts_localapi::notify::LeftRunning),
    #[error("watching tailscaled: {0}")]
    Bus(#[source] LocalApiError),
    #[error("serve proxy: failed to unset the previous serve config: {0}")]
    Clear(#[source] DaemonError),
    #[error("reporting readiness on TS_READY_FD={fd}: {source} (was the fd really passed to this process?)")]
    Ready {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

impl From<WatchEnd> for ServeError {
    fn from(end: WatchEnd) -> Self {
        match end {
            WatchEnd::LeftRunning(left) => ServeError::LeftRunning(left),
            WatchEnd::Bus(e) => ServeError::Bus(e),
        }
    }
}

/// Why the serve config is not (fully) what the file asks for; the health verdict's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Unreadable(String),
    Invalid(String),
    Daemon(String),
}

impl Problem {
    /// The one log line (and health reason) for this problem.
    pub fn describe(&self, cfg: &Config) -> String {
        let path = cfg.path.display();
        match self {
            Problem::Missing => format!(
                "serve proxy: no serve config at {path:?} (TS_SERVE_CONFIG); keeping the last applied config until the file appears"
            ),
            Problem::Unreadable(e) => format!(
                "serve proxy: cannot read serve config {path:?}: {e}; keeping the last applied config"
            ),
            Problem::Invalid(e) => format!(
                "serve proxy: serve config {path:?} is not valid: {e}; keeping the last applied config until the file is fixed"
            ),
            Problem::Daemon(e) => format!(
                "serve proxy: applying serve config {path:?} failed: {e}; keeping the last applied config, retrying in {}s",
                RETRY.as_secs()
            ),
        }
    }
}

/// Reads and decodes the file for this node.
pub fn read_desired(cfg: &Config, cert_domain: Option<&str>) -> Result<Desired, Problem> {
    let raw = match std::fs::read(&cfg.path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::Missing),
        Err(e) => return Err(Problem::Unreadable(e.to_string())),
    };
    serve_config::desired(&raw, cert_domain).map_err(|e| Problem::Invalid(e.to_string()))
}

/// The watcher's state between events.
struct Watcher<'a> {
    cfg: &'a Config,
    daemon: Daemon,
    running: bool,
    /// `None` until tailscaled told us; `Some(None)` when the node has no certificate domain.
    cert_domain: Option<Option<String>>,
    /// The certificate domains and the self-change count of the last state seen.
    seen_domains: Option<Vec<String>>,
    seen_self_changes: u64,
    cleared: bool,
    /// What tailscaled was last made to serve (by this process).
    applied: Option<ServeConfig>,
    /// The services last advertised by this process.
    advertised: Option<Vec<String>>,
    /// The current problem, logged once when it appears.
    problem: Option<Problem>,
    /// The HTTPS listeners last reported as dropped, so the warning is not repeated.
    dropped_warned: Vec<String>,
    retry: Option<tokio::time::Instant>,
    ready_fd: Option<i32>,
}

impl Watcher<'_> {
    /// The node's latest state: running, certificate domain. Returns whether a reconcile is
    /// due.
    async fn on_state(&mut self, st: &NodeState) -> bool {
        let mut due = false;
        if let Some(state) = st.state {
            let now = state == BackendState::Running;
            due |= now && !self.running;
            self.running = now;
        }
        let self_changed = st.self_changes != self.seen_self_changes;
        self.seen_self_changes = st.self_changes;
        let domains = if st.cert_domains.is_some() && st.cert_domains != self.seen_domains {
            self.seen_domains.clone_from(&st.cert_domains);
            st.cert_domains.clone()
        } else if self_changed && self.cert_domain.is_some() {
            // A HEAD daemon sends only the self node at runtime; the domains may have changed
            // with it, and the dns-config endpoint has them.
            self.daemon.cert_domains().await.unwrap_or_else(|e| {
                tracing::warn!("serve proxy: reading the certificate domains: {e}");
                None
            })
        } else {
            None
        };
        if let Some(domains) = domains {
            let first = domains.first().cloned();
            if self.cert_domain.as_ref() != Some(&first) {
                if self.cert_domain.is_some() {
                    tracing::info!(
                        "serve proxy: certificate domain is now {}",
                        first.as_deref().unwrap_or("(none)")
                    );
                }
                self.cert_domain = Some(first);
                due = true;
            }
        }
        due
    }

    fn can_reconcile(&self) -> bool {
        self.running && self.cert_domain.is_some()
    }

    /// Makes tailscaled serve what the file says, as far as possible. Only a failure to clear
    /// the previous config at the very start is fatal (as in the reference).
    async fn reconcile(&mut self) -> Result<(), ServeError> {
        if !self.can_reconcile() {
            return Ok(());
        }
        self.retry = None;
        if !self.cleared {
            tracing::info!("serve proxy: unsetting previous config");
            self.daemon
                .post_serve_config(&ServeConfig::default(), None)
                .await
                .map_err(ServeError::Clear)?;
            self.cleared = true;
            self.applied = Some(ServeConfig::default());
        }
        let cert_domain = self.cert_domain.clone().flatten();
        ts_common::status::reconcile_started();
        let outcome = match read_desired(self.cfg, cert_domain.as_deref()) {
            Err(p) => Err(p),
            Ok(desired) => {
                self.warn_dropped(&desired.dropped_https);
                self.apply(desired.config).await
            }
        };
        match outcome {
            Ok(()) => {
                ts_common::status::reconcile_succeeded();
                if self.problem.take().is_some() {
                    tracing::info!(
                        "serve proxy: serve config {:?} applied again, problem solved",
                        self.cfg.path
                    );
                }
            }
            Err(p) => {
                ts_common::status::reconcile_failed(&p.describe(self.cfg));
                if matches!(p, Problem::Daemon(_)) {
                    self.retry = Some(tokio::time::Instant::now() + RETRY);
                }
                if self.problem.as_ref() != Some(&p) {
                    tracing::error!("{}", p.describe(self.cfg));
                    self.problem = Some(p);
                }
            }
        }
        self.report_ready()
    }

    fn warn_dropped(&mut self, dropped: &[String]) {
        if !dropped.is_empty() && dropped != self.dropped_warned.as_slice() {
            tracing::warn!(
                "serve proxy: this node has no certificate domain (HTTPS is not enabled for the tailnet, see https://tailscale.com/kb/1153/enabling-https), so these HTTPS listeners of the serve config are left out: {}",
                dropped.join(", ")
            );
        }
        self.dropped_warned = dropped.to_vec();
    }

    async fn apply(&mut self, desired: ServeConfig) -> Result<(), Problem> {
        if self.applied.as_ref() == Some(&desired) {
            tracing::debug!(
                "serve proxy: {} read, unchanged, nothing sent",
                self.cfg.path.display()
            );
            return self.advertise(&desired).await;
        }
        tracing::info!("serve proxy: applying serve config");
        match self.daemon.apply(&desired).await {
            Ok(Applied::Posted) => {}
            Ok(Applied::AlreadyThere) => {
                tracing::info!("serve proxy: tailscaled already has this serve config");
            }
            Err(e) => return Err(Problem::Daemon(e.to_string())),
        }
        self.applied = Some(desired.clone());
        self.advertise(&desired).await
    }

    /// Advertises exactly the config's services, when auto-advertisement is on and they differ
    /// from what this process last advertised.
    async fn advertise(&mut self, config: &ServeConfig) -> Result<(), Problem> {
        if !self.cfg.auto_advertise {
            return Ok(());
        }
        let want = config.service_names();
        if self.advertised.as_ref() == Some(&want) {
            return Ok(());
        }
        let failed = |e: DaemonError| Problem::Daemon(format!("advertising services: {e}"));
        let have = self.daemon.advertised_services().await.map_err(failed)?;
        if have != want {
            tracing::info!("serve proxy: advertising services: [{}]", want.join(" "));
            self.daemon
                .set_advertised_services(&want)
                .await
                .map_err(failed)?;
        }
        self.advertised = Some(want);
        Ok(())
    }

    fn report_ready(&mut self) -> Result<(), ServeError> {
        if let Some(fd) = self.ready_fd.take() {
            ts_common::process::notify_ready(Some(fd))
                .map_err(|source| ServeError::Ready { fd, source })?;
            tracing::info!("first reconcile done, readiness reported on fd {fd}");
        }
        Ok(())
    }

    /// Withdraws advertised services and gives control time to move their clients (the
    /// reference does this at every shutdown, whatever auto-advertisement says).
    async fn unadvertise(&self) {
        let have = match self.daemon.advertised_services().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(
                    "serve proxy: cannot read the advertised services to withdraw them: {e}"
                );
                return;
            }
        };
        if have.is_empty() {
            return;
        }
        tracing::info!("unadvertising services: [{}]", have.join(" "));
        if let Err(e) = self.daemon.set_advertised_services(&[]).await {
            tracing::warn!("Error ensuring services are not advertised: {e}");
            return;
        }
        tracing::info!(
            "waiting {:?} for control to move the services' clients to another node",
            self.cfg.drain
        );
        tokio::time::sleep(self.cfg.drain).await;
    }
}

/// Watches the file in a task of its own; each possible change is one message (coalesced).
fn spawn_files(cfg: &Config) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let (mut watch, how) = files::FileWatch::new(&cfg.path, cfg.no_inotify);
    match &how {
        files::How::Inotify(_) => tracing::info!(
            "serve proxy: watching {} for changes ({how})",
            cfg.path.display()
        ),
        files::How::Poll { .. } => tracing::warn!(
            "serve proxy: failed to create fsnotify watcher, timer-only mode: watching {} by {how}",
            cfg.path.display()
        ),
    }
    tokio::spawn(async move {
        loop {
            watch.changed().await;
            if tx.is_closed() {
                return;
            }
            let _ = tx.try_send(());
        }
    });
    rx
}

/// Runs until SIGTERM/SIGINT (then withdraws services and returns `Ok`) or a fatal error.
pub async fn run_until_signal(cfg: &Config) -> Result<(), ServeError> {
    let mut stop = ts_localapi::signals::StopSignals::install();
    // The bus is read by a task of its own: the guard never waits for a reconcile, and changes
    // that arrive during one are coalesced into the next.
    let mut node = NodeWatch::spawn(
        LocalApi::new(&cfg.socket),
        Options {
            mask: MASK_LEAN,
            guard: cfg.guard,
            resolve: None,
        },
    );
    let mut files = spawn_files(cfg);
    let mut w = Watcher {
        cfg,
        daemon: Daemon::new(LocalApi::new(&cfg.socket)),
        running: false,
        cert_domain: None,
        seen_domains: None,
        seen_self_changes: 0,
        cleared: false,
        applied: None,
        advertised: None,
        problem: None,
        dropped_warned: Vec::new(),
        retry: None,
        ready_fd: cfg.ready_fd,
    };
    tracing::info!(
        "serve proxy: waiting for tailscaled at {} to be Running to apply {}",
        cfg.socket.display(),
        cfg.path.display()
    );
    loop {
        let retry_at = w.retry;
        let due = tokio::select! {
            sig = stop.recv() => {
                tracing::info!("received {sig}, exiting");
                if w.cleared {
                    w.unadvertise().await;
                }
                return Ok(());
            }
            st = node.changed() => {
                let st = st?;
                node.guarded(w.on_state(&st)).await?
            }
            Some(()) = files.recv() => true,
            _ = sleep_until(retry_at) => true,
        };
        if due {
            node.guarded(w.reconcile()).await??;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The `--explain` plan: what would be done, and what the file gives now. Reads the file and,
/// if tailscaled answers, its current serve config; changes nothing.
pub async fn explain(cfg: &Config) -> Vec<String> {
    let (_, how) = files::FileWatch::new(&cfg.path, cfg.no_inotify);
    let mut out = vec![
        "ts-serve plan (nothing is changed by --explain):".to_string(),
        format!("  serve config file: {} (TS_SERVE_CONFIG)", cfg.path.display()),
        format!(
            "  wait for Running on GET /localapi/v0/watch-ipn-bus?mask={MASK_LEAN} (certificate domains from GET {STATUS_SELF_PATH}) at {}",
            cfg.socket.display()
        ),
        "  then once: POST /localapi/v0/serve-config {} (unset the previous config)".to_string(),
        format!(
            "  then apply the file with {} replaced by the node's first certificate domain: GET /localapi/v0/serve-config, POST it with If-Match only when it differs",
            serve_config::CERT_DOMAIN_PLACEHOLDER
        ),
        format!("  again whenever the file or the certificate domain changes: {how}"),
        "  a missing, unreadable or invalid file: logged once, the last applied config stays, the watcher reports unhealthy".to_string(),
        if cfg.auto_advertise {
            "  services (svc:...) in the config: advertised after it is applied (PATCH /localapi/v0/prefs AdvertiseServices); TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT=false turns this off".to_string()
        } else {
            "  services: not advertised (TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT=false)".to_string()
        },
        format!(
            "  at SIGTERM/SIGINT: withdraw advertised services, then wait {:?} before exiting",
            cfg.drain
        ),
        match cfg.ready_fd {
            Some(fd) => format!("  readiness: write \"\\n\" to fd {fd} after the first reconcile, then close it"),
            None => "  readiness: none (TS_READY_FD / --ready-fd unset)".to_string(),
        },
        "  exit: 0 on SIGTERM/SIGINT; 1 when tailscaled is gone or refuses to unset the previous config; 2 on invalid configuration".to_string(),
    ];
    out.push(match read_desired(cfg, Some("<cert domain>")) {
        Ok(d) => format!(
            "  now: the file is valid: {} TCP port(s), {} web host(s), services [{}]",
            d.config.tcp.len(),
            d.config.web.len(),
            d.config.service_names().join(" ")
        ),
        Err(p) => format!("  now: {}", p.describe(cfg)),
    });
    let daemon = Daemon::new(LocalApi::new(&cfg.socket));
    out.push(match daemon.serve_config().await {
        Ok((current, _)) => format!(
            "  now: tailscaled serves {}",
            String::from_utf8_lossy(&current.to_json())
        ),
        Err(e) => format!("  now: {e}"),
    });
    out
}

#[cfg(test)]
mod tests;

impl ts_common::cli::Failure for ServeError {
    /// 2 for configuration problems (nothing was changed), 1 for everything else.
    fn exit_code(&self) -> i32 {
        match self {
            ServeError::NoConfig => ts_common::exit::USAGE,
            _ => ts_common::exit::FAILURE,
        }
    }
}
