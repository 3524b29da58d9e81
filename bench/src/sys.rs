//! The little of Linux the bench needs beyond std and the harness (inotify, through nix),
//! `/proc` readers, and the timestamping of a child's stderr lines as they arrive.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use nix::sys::inotify::AddWatchFlags as Mask;
pub const IN_MODIFY: Mask = AddWatchFlags::IN_MODIFY;
pub const IN_CLOSE_WRITE: Mask = AddWatchFlags::IN_CLOSE_WRITE;
pub const IN_MOVED_TO: Mask = AddWatchFlags::IN_MOVED_TO;
pub const IN_CREATE: Mask = AddWatchFlags::IN_CREATE;

pub fn signal(pid: i32, sig: Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Stamped values with a condition variable to wait on.
type Stamped<T> = Arc<(Mutex<T>, Condvar)>;

/// Watches one directory with inotify and, after every event for `file`, stamps the moment and
/// records `measure(path)` when it changed: e.g. how many PATCH requests the fake apiserver's
/// log holds, or how many commands the recording fakes have written.
pub struct FileCounter {
    shared: Stamped<Vec<(Instant, usize)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileCounter {
    pub fn start(
        dir: &Path,
        file: &str,
        mask: Mask,
        measure: fn(&Path) -> usize,
    ) -> Result<FileCounter, String> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("inotify_init1: {e}"))?;
        inotify
            .add_watch(dir, mask)
            .map_err(|e| format!("inotify_add_watch {}: {e}", dir.display()))?;
        let path = dir.join(file);
        let name = std::ffi::OsString::from(file);
        let shared = Arc::new((
            Mutex::new(vec![(Instant::now(), measure(&path))]),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            while !stop2.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) <= 0 {
                    continue;
                }
                let Ok(events) = inotify.read_events() else {
                    continue;
                };
                let at = Instant::now();
                if events.iter().any(|e| e.name.as_ref() == Some(&name)) {
                    let value = measure(&path);
                    let (lock, cv) = &*s2;
                    let mut v = lock.lock().unwrap();
                    if v.last().map(|(_, c)| *c) != Some(value) {
                        v.push((at, value));
                        cv.notify_all();
                    }
                }
            }
        });
        Ok(FileCounter {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Like [`FileCounter::wait_at_least`], without waiting.
    pub fn at_least(&self, want: usize, after: Instant) -> Option<Instant> {
        first_at_least(&self.shared.0.lock().unwrap(), want, after)
    }

    /// The first moment at or after `after` the count was at least `want`.
    pub fn wait_at_least(&self, want: usize, after: Instant, timeout: Duration) -> Option<Instant> {
        let (lock, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut v = lock.lock().unwrap();
        loop {
            if let Some(t) = first_at_least(&v, want, after) {
                return Some(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            v = cv.wait_timeout(v, left).unwrap().0;
        }
    }
}

fn first_at_least(counts: &[(Instant, usize)], want: usize, after: Instant) -> Option<Instant> {
    let mut hits = counts.iter().filter(|(t, c)| *c >= want && *t >= after);
    hits.next().map(|(t, _)| *t)
}

impl Drop for FileCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child's stderr (or stdout), line by line, each line stamped when it was read.
#[derive(Clone)]
pub struct Lines {
    /// The lines so far, and whether the stream ended.
    shared: Stamped<(Vec<(Instant, String)>, bool)>,
}

impl Lines {
    pub fn spawn(reader: impl Read + Send + 'static) -> Lines {
        let shared = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let s2 = shared.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(64 * 1024, reader);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let at = Instant::now();
                        let (lock, cv) = &*s2;
                        lock.lock()
                            .unwrap()
                            .0
                            .push((at, line.trim_end().to_string()));
                        cv.notify_all();
                    }
                }
            }
            let (lock, cv) = &*s2;
            lock.lock().unwrap().1 = true;
            cv.notify_all();
        });
        Lines { shared }
    }

    pub fn len(&self) -> usize {
        self.shared.0.lock().unwrap().0.len()
    }

    /// The first line from index `from` on containing `needle`: (index, stamp).
    pub fn find(&self, from: usize, needle: &str) -> Option<(usize, Instant)> {
        find_line(&self.shared.0.lock().unwrap().0, from, needle)
    }

    /// Waits for [`Lines::find`]; gives up at EOF or after `timeout`.
    pub fn wait(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<(usize, Instant), String> {
        let (lock, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut v = lock.lock().unwrap();
        loop {
            if let Some(found) = find_line(&v.0, from, needle) {
                return Ok(found);
            }
            if v.1 {
                return Err(format!("output ended before a line containing {needle:?}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no line containing {needle:?} within {timeout:?}"));
            }
            v = cv.wait_timeout(v, left).unwrap().0;
        }
    }

    pub fn text(&self) -> String {
        let v = self.shared.0.lock().unwrap();
        v.0.iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

fn find_line(lines: &[(Instant, String)], from: usize, needle: &str) -> Option<(usize, Instant)> {
    let mut hits = lines.iter().enumerate().skip(from);
    let (i, (t, _)) = hits.find(|(_, (_, l))| l.contains(needle))?;
    Some((i, *t))
}

/// `VmRSS`, `VmHWM` and `/proc/<pid>/smaps_rollup`, in kB.
#[derive(Clone, Debug, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
    /// smaps_rollup fields: Rss, Pss, Shared_Clean, Private_Clean, Private_Dirty, Anonymous...
    pub rollup: BTreeMap<String, u64>,
}

impl Mem {
    pub fn of(pid: i32) -> Option<Mem> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        let mut rollup = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            for l in text.lines().skip(1) {
                let mut it = l.split_whitespace();
                if let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let Ok(v) = v.parse::<u64>() {
                        rollup.insert(k.trim_end_matches(':').to_string(), v);
                    }
                }
            }
        }
        Some(Mem {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
            rollup,
        })
    }

    pub fn get(&self, k: &str) -> u64 {
        self.rollup.get(k).copied().unwrap_or(0)
    }
}

/// Direct children of `pid` (`/proc/<pid>/task/<pid>/children`; zombies included), reading at
/// most `limit` bytes of the list.
pub fn children(pid: i32, limit: usize) -> Vec<i32> {
    let Ok(mut f) = File::open(format!("/proc/{pid}/task/{pid}/children")) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; limit];
    let mut n = 0;
    while n < limit {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Time on CPU and time waiting for a CPU, in ns, of `pid`'s main thread
/// (`/proc/<pid>/schedstat`).
pub fn schedstat(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Sends one line command to the fake tailscaled's control socket; returns its answer.
pub fn control(socket: &Path, command: &str) -> Result<String, String> {
    match tsboot_tests::fake_cli::control_command(socket, command) {
        Ok(line) if line.starts_with("ok") => Ok(line),
        Ok(line) => Err(format!(
            "control {:?} answered {line:?}",
            command.split(' ').next().unwrap_or("")
        )),
        Err(e) => Err(format!("control socket {}: {e}", socket.display())),
    }
}

/// Waits for a child to exit, SIGKILLing it after `grace`; returns its status code if any.
pub fn reap(child: &mut std::process::Child, grace: Duration) -> Option<i32> {
    let end = Instant::now() + grace;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        if Instant::now() >= end {
            signal(child.id() as i32, Signal::SIGKILL);
            return child.wait().ok().and_then(|s| s.code());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
