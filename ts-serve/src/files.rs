//! Noticing changes of the serve configuration file.
//!
//! The directory holding the file is watched with inotify, not the file itself: editors replace
//! a file by writing a new one and renaming it over the old (the old inode, and a watch on it,
//! go away), and a Kubernetes ConfigMap volume updates by swapping its `..data` symlink to a new
//! timestamped directory, so the path's target changes without the file ever being written.
//! Any change in the directory is a reason to read the file again; reading an unchanged file
//! costs nothing further (nothing is sent when the result is unchanged).
//!
//! Where inotify cannot be had (no instances left, the directory missing at start, the watch
//! removed because the directory went away) a 5 s poll takes over, as the reference does.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// The reference's poll interval when inotify is unavailable.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Events closer together than this are one change (a write is open, write, close; a swap is
/// create, rename, delete), so the file is read once, after the writer is done.
const SETTLE: Duration = Duration::from_millis(100);

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

enum Mode {
    Inotify(AsyncFd<InotifyFd>),
    Poll(tokio::time::Interval),
}

/// Resolves [`FileWatch::changed`] whenever the file may have changed.
pub struct FileWatch {
    dir: PathBuf,
    mode: Mode,
}

/// How the file is watched, for the log and `--explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    Inotify(PathBuf),
    Poll { why: String },
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            How::Inotify(dir) => write!(f, "inotify on directory {}", dir.display()),
            How::Poll { why } => write!(
                f,
                "re-reading it every {}s ({why})",
                POLL_INTERVAL.as_secs()
            ),
        }
    }
}

/// The directory that holds `path` (`.` for a bare file name).
pub fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl FileWatch {
    /// Watches the directory of `path` with inotify, or polls when `no_inotify` is set or
    /// inotify fails. Must be called inside a tokio runtime.
    pub fn new(path: &Path, no_inotify: bool) -> (FileWatch, How) {
        let dir = directory_of(path);
        let inotify = if no_inotify {
            Err("inotify disabled by TS_TEST_ONLY_SERVE_NO_INOTIFY".to_string())
        } else {
            watch_dir(&dir)
        };
        let (mode, how) = match inotify {
            Ok(fd) => (Mode::Inotify(fd), How::Inotify(dir.clone())),
            Err(why) => (Mode::Poll(poll_timer()), How::Poll { why }),
        };
        (FileWatch { dir, mode }, how)
    }

    /// Waits for the next possible change. Never fails: a broken inotify turns into polling
    /// (logged once).
    pub async fn changed(&mut self) {
        let fd = match &mut self.mode {
            Mode::Poll(timer) => {
                timer.tick().await;
                return;
            }
            Mode::Inotify(fd) => fd,
        };
        let mut events = read_events(fd).await;
        // Let the writer finish: more events within SETTLE extend the wait.
        while events == Ok(true) {
            match tokio::time::timeout(SETTLE, read_events(fd)).await {
                Ok(next) => events = next,
                Err(_) => return,
            }
        }
        // Ok(false): the watch was removed (directory deleted or unmounted).
        let why = events.err();
        self.fall_back(why.as_deref().unwrap_or("the watched directory went away"));
    }

    fn fall_back(&mut self, why: &str) {
        tracing::warn!(
            "serve proxy: watching {} with inotify stopped working ({why}); re-reading the config every {}s instead",
            self.dir.display(),
            POLL_INTERVAL.as_secs()
        );
        self.mode = Mode::Poll(poll_timer());
    }
}

fn poll_timer() -> tokio::time::Interval {
    let mut t =
        tokio::time::interval_at(tokio::time::Instant::now() + POLL_INTERVAL, POLL_INTERVAL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

#[allow(
    unsafe_code,
    reason = "registering the inotify descriptor with the runtime is an unsafe call"
)]
fn watch_dir(dir: &Path) -> Result<AsyncFd<InotifyFd>, String> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| format!("cannot create an inotify instance: {e}"))?;
    let mask = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    inotify
        .add_watch(dir, mask)
        .map_err(|e| format!("cannot watch directory {}: {e}", dir.display()))?;
    // SAFETY: `Inotify` owns its descriptor and closes it only when dropped, which happens
    // with the AsyncFd that owns it; `as_raw_fd` always returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| format!("cannot register the inotify descriptor: {e}"))
}

/// Waits for and drains pending events. `Ok(true)`: something changed; `Ok(false)`: the watch
/// is gone (`IN_IGNORED`).
async fn read_events(fd: &mut AsyncFd<InotifyFd>) -> Result<bool, String> {
    loop {
        let mut guard = fd
            .readable()
            .await
            .map_err(|e| format!("waiting for inotify events: {e}"))?;
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                return Ok(!events
                    .iter()
                    .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)))
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => return Err(format!("reading inotify events: {e}")),
        }
    }
}
