//! The ts-prep phase: prepare the host (or pod) for kernel-mode tailscaled.
//!
//! Boot step one (README "Phases"): in kernel mode make sure `<root>/dev/net/tun` exists and turn
//! on IP forwarding for the families `TS_ROUTES` / `TS_DEST_IP` / the tailnet target need; in userspace mode do
//! nothing. The work is split in two so `--explain` cannot drift from a real run:
//!
//! 1. [`plan`] only *looks* (stat, read) through a [`Probe`] and records what it saw;
//! 2. [`Plan::apply`] changes exactly what the plan says through a [`Host`], after checking that
//!    every sysctl file could be read — so a missing or unreadable file fails the run before
//!    anything at all was changed.
//!
//! `--explain` prints [`Plan::explain`] and never gets a [`Host`], so it cannot write.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use ts_common::settings::Settings;

/// Directory of the tun device, relative to `TS_TEST_ONLY_ROOT`.
pub const TUN_DIR: &str = "dev/net";
/// The tun device node, relative to `TS_TEST_ONLY_ROOT`.
pub const TUN_NODE: &str = "dev/net/tun";
/// Mode of a created `dev/net`.
pub const TUN_DIR_MODE: u32 = 0o755;
/// Mode of a created `dev/net/tun`.
pub const TUN_NODE_MODE: u32 = 0o600;
/// The tuntap character device is 10,200 on every Linux.
pub const TUN_MAJOR: u64 = 10;
pub const TUN_MINOR: u64 = 200;

/// IPv4 forwarding sysctl, relative to `TS_TEST_ONLY_ROOT`.
pub const IPV4_FORWARDING: &str = "proc/sys/net/ipv4/ip_forward";
/// IPv6 forwarding sysctl, relative to `TS_TEST_ONLY_ROOT`.
pub const IPV6_FORWARDING: &str = "proc/sys/net/ipv6/conf/all/forwarding";

/// Reference message prefixes and advice lines, word for word (operators grep for them).
pub const FORWARDING_FAILED: &str = "Failed to enable IP forwarding";
pub const FORWARDING_NEEDED: &str =
    "To run tailscale as a proxy or router container, IP forwarding must be enabled.";
pub const ADVICE_KUBERNETES: &str = "You can either set the sysctls as a privileged initContainer, or run the tailscale container with privileged=true.";
pub const ADVICE_CONTAINER: &str = "You can fix this by running the container with privileged=true, or the equivalent in your container runtime that permits access to sysctls.";
/// Our addition after the reference's tun fatal line: the reference says nothing about the fix.
pub const TUN_ADVICE: &str = "Creating the tun device needs CAP_MKNOD (run ts-prep as a privileged initContainer, or the container with privileged=true), or mount /dev/net/tun into the container (e.g. docker run --device /dev/net/tun); TS_USERSPACE=true needs no tun device.";

/// The read-only half of the host: all that planning (and so `--explain`) may touch.
pub trait Probe {
    /// `Ok` if `path` exists (following symlinks, like Go's `os.Stat`).
    fn stat(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// The changes ts-prep can make. Kept this narrow so tests can record every one of them.
pub trait Host: Probe {
    /// `mkdir -p path`, the last component with exactly `mode`.
    fn create_dir_all(&mut self, path: &Path, mode: u32) -> io::Result<()>;
    /// `mknod path c major minor` with exactly `mode`.
    fn mknod_char(&mut self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()>;
    /// Overwrites an existing file; never creates one (a sysctl that vanished is an error).
    fn write_existing(&mut self, path: &Path, contents: &str) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default)]
pub struct RealHost;

impl Probe for RealHost {
    fn stat(&self, path: &Path) -> io::Result<()> {
        fs::metadata(path).map(drop)
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }
}

impl Host for RealHost {
    fn create_dir_all(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)?;
        // The mode passed to mkdir is masked by the umask; set it so the reference's 0755 holds
        // whatever umask the container runtime gave us.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn mknod_char(&mut self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(io::Error::from)?;
        // Same umask reasoning as for the directory.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn write_existing(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        // One write of the whole value: procfs takes a sysctl value in a single write(2).
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        file.write_all(contents.as_bytes())
    }
}

/// Creating `dev/net` or `dev/net/tun` failed.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("mkdir {path:?}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mknod {path:?}: {source}")]
    Mknod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reading or writing a forwarding sysctl failed (messages as the reference's).
#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error("reading {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("enabling {path:?}: {source}")]
    Enable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why the phase failed; every variant means exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error("Unable to create tuntap device file: {0}")]
    Tun(#[source] TunError),
    #[error("Failed to enable IP forwarding: {source}")]
    Forwarding {
        #[source]
        source: ForwardingError,
        /// Picks the advice line, as the reference does.
        in_kubernetes: bool,
    },
}

impl PrepError {
    /// The lines to log, in order: the reference's messages, then what to do about it.
    pub fn log_lines(&self) -> Vec<String> {
        match self {
            PrepError::Tun(_) => vec![self.to_string(), TUN_ADVICE.to_string()],
            PrepError::Forwarding { in_kubernetes, .. } => vec![
                self.to_string(),
                FORWARDING_NEEDED.to_string(),
                if *in_kubernetes {
                    ADVICE_KUBERNETES
                } else {
                    ADVICE_CONTAINER
                }
                .to_string(),
            ],
        }
    }
}

/// What a stat said about a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Presence {
    Exists,
    Missing,
    /// The stat failed for another reason. The reference only creates on "not exist" and
    /// silently goes on otherwise; we do the same, but say so.
    Unknown(String),
}

impl Presence {
    fn of(probe: &dyn Probe, path: &Path) -> Presence {
        match probe.stat(path) {
            Ok(()) => Presence::Exists,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Presence::Missing,
            Err(e) => Presence::Unknown(e.to_string()),
        }
    }
}

/// The tun device check (kernel mode only).
#[derive(Debug)]
pub struct TunPlan {
    pub dir: PathBuf,
    pub dir_presence: Presence,
    pub node: PathBuf,
    pub node_presence: Presence,
}

impl TunPlan {
    /// The directory, then the node, each with what its stat said.
    fn paths(&self) -> [(&PathBuf, &Presence); 2] {
        [
            (&self.dir, &self.dir_presence),
            (&self.node, &self.node_presence),
        ]
    }

    pub fn creates_dir(&self) -> bool {
        self.dir_presence == Presence::Missing
    }
    pub fn creates_node(&self) -> bool {
        self.node_presence == Presence::Missing
    }
}

/// One forwarding sysctl and what it read.
#[derive(Debug)]
pub struct SysctlPlan {
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    pub path: PathBuf,
    /// The file's content, or why it could not be read.
    pub current: io::Result<String>,
}

impl SysctlPlan {
    /// Reference rule: write unless the whitespace-trimmed content is exactly `1`. Only
    /// meaningful for a readable file (an unreadable one fails the run before any write).
    pub fn needs_write(&self) -> bool {
        match &self.current {
            Ok(content) => content.trim() != "1",
            Err(_) => false,
        }
    }
}

/// Everything ts-prep would do, as observed by [`plan`].
#[derive(Debug)]
pub struct Plan {
    pub userspace: bool,
    pub in_kubernetes: bool,
    /// `None` in userspace mode.
    pub tun: Option<TunPlan>,
    /// IPv4 first, then IPv6, only for the families that need forwarding.
    pub sysctls: Vec<SysctlPlan>,
}

/// Looks at the host (never changes it) and records what the phase has to do.
pub fn plan(settings: &Settings, probe: &dyn Probe) -> Plan {
    let tun = (!settings.userspace).then(|| {
        let dir = settings.host_path(TUN_DIR);
        let node = settings.host_path(TUN_NODE);
        TunPlan {
            dir_presence: Presence::of(probe, &dir),
            node_presence: Presence::of(probe, &node),
            dir,
            node,
        }
    });
    // Empty in userspace mode.
    let families = settings.forwarding_families();
    let sysctls = [
        (families.ipv4, "IPv4", IPV4_FORWARDING),
        (families.ipv6, "IPv6", IPV6_FORWARDING),
    ]
    .into_iter()
    .filter(|(wanted, ..)| *wanted)
    .map(|(_, family, rel)| {
        let path = settings.host_path(rel);
        SysctlPlan {
            family,
            current: probe.read(&path),
            path,
        }
    })
    .collect();
    Plan {
        userspace: settings.userspace,
        in_kubernetes: settings.in_kubernetes(),
        tun,
        sysctls,
    }
}

/// What a successful run changed (the log says the same).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub created_dir: Option<PathBuf>,
    pub created_node: Option<PathBuf>,
    /// Sysctls that were written (they were not `1`).
    pub enabled: Vec<PathBuf>,
    /// Sysctls that already read `1` and were left alone.
    pub already: Vec<PathBuf>,
}

impl Plan {
    /// Carries the plan out: validate every sysctl read, then tun, then the writes (IPv4 first).
    /// A failed write restores the sysctls this run already wrote, so a failure leaves the
    /// host's forwarding as it found it.
    pub fn apply(self, host: &mut dyn Host) -> Result<Report, PrepError> {
        let mut report = Report::default();
        if self.userspace {
            tracing::info!(
                "Userspace networking (TS_USERSPACE is true): no tun device and no IP forwarding needed, nothing to do"
            );
            return Ok(report);
        }
        let in_kubernetes = self.in_kubernetes;
        let forwarding = |source| PrepError::Forwarding {
            source,
            in_kubernetes,
        };

        // 1. Validate all: every file readable before anything is changed.
        let mut writes = Vec::new();
        for sysctl in self.sysctls {
            let needs_write = sysctl.needs_write();
            match sysctl.current {
                Err(source) => {
                    return Err(forwarding(ForwardingError::Read {
                        path: sysctl.path,
                        source,
                    }))
                }
                Ok(previous) if needs_write => writes.push((sysctl.path, previous)),
                Ok(_) => {
                    tracing::debug!("IP forwarding already enabled in {}", sysctl.path.display());
                    report.already.push(sysctl.path);
                }
            }
        }

        // 2. The tun device.
        if let Some(tun) = &self.tun {
            apply_tun(tun, host, &mut report).map_err(PrepError::Tun)?;
        }

        // 3. The sysctl writes, undone on failure.
        let mut written: Vec<(PathBuf, String)> = Vec::new();
        for (path, previous) in writes {
            if let Err(source) = host.write_existing(&path, "1") {
                restore(host, &written);
                return Err(forwarding(ForwardingError::Enable { path, source }));
            }
            tracing::info!(
                "Enabled IP forwarding: wrote 1 to {} (was {:?})",
                path.display(),
                previous.trim()
            );
            report.enabled.push(path.clone());
            written.push((path, previous));
        }
        Ok(report)
    }

    /// The plan as `--explain` prints it, one line each.
    pub fn explain(&self) -> Vec<String> {
        let mut lines = vec!["ts-prep plan (--explain changes nothing)".to_string()];
        if self.userspace {
            lines.push(
                "mode: userspace networking (TS_USERSPACE is true): nothing to do, no tun device, no sysctls"
                    .to_string(),
            );
            return lines;
        }
        lines.push("mode: kernel networking (TS_USERSPACE is false)".to_string());
        let made = [
            format!("mode {TUN_DIR_MODE:04o}"),
            format!("char device {TUN_MAJOR},{TUN_MINOR}, mode {TUN_NODE_MODE:04o}"),
        ];
        for ((path, presence), made) in self.tun.iter().flat_map(TunPlan::paths).zip(made) {
            let path = path.display();
            lines.push(match presence {
                Presence::Exists => format!("tun: {path} exists"),
                Presence::Missing => format!("tun: {path} missing: would create it ({made})"),
                Presence::Unknown(e) => format!(
                    "tun: {path} cannot be checked ({e}): left alone, as the reference does"
                ),
            });
        }
        if self.sysctls.is_empty() {
            lines.push(
                "forwarding: not needed (no TS_ROUTES, TS_DEST_IP or tailnet target), no sysctl is read or written"
                    .to_string(),
            );
        }
        for sysctl in &self.sysctls {
            let path = sysctl.path.display();
            let family = sysctl.family;
            lines.push(match &sysctl.current {
                Ok(content) => format!(
                    "forwarding: {family} {path} = {:?}: {}",
                    content.trim(),
                    if sysctl.needs_write() {
                        "would write 1"
                    } else {
                        "already 1, no write"
                    }
                ),
                Err(e) => format!(
                    "forwarding: {family} {path} unreadable ({e}): the run would fail with \"{FORWARDING_FAILED}\" before changing anything"
                ),
            });
        }
        lines
    }
}

fn apply_tun(tun: &TunPlan, host: &mut dyn Host, report: &mut Report) -> Result<(), TunError> {
    for (path, presence) in tun.paths() {
        if let Presence::Unknown(e) = presence {
            tracing::warn!(
                "Cannot check {} ({e}); leaving it alone, as the reference does",
                path.display()
            );
        }
    }
    if tun.creates_dir() {
        host.create_dir_all(&tun.dir, TUN_DIR_MODE)
            .map_err(|source| TunError::CreateDir {
                path: tun.dir.clone(),
                source,
            })?;
        tracing::info!("Created {} (mode {TUN_DIR_MODE:04o})", tun.dir.display());
        report.created_dir = Some(tun.dir.clone());
    }
    if tun.creates_node() {
        host.mknod_char(&tun.node, TUN_MAJOR, TUN_MINOR, TUN_NODE_MODE)
            .map_err(|source| TunError::Mknod {
                path: tun.node.clone(),
                source,
            })?;
        tracing::info!(
            "Created tun device {} (char {TUN_MAJOR},{TUN_MINOR}, mode {TUN_NODE_MODE:04o})",
            tun.node.display()
        );
        report.created_node = Some(tun.node.clone());
    }
    Ok(())
}

/// Best-effort undo of the sysctl writes of this run, newest first. A failed restore is only
/// logged: the run already fails with the write error, which is what the operator must fix.
fn restore(host: &mut dyn Host, written: &[(PathBuf, String)]) {
    for (path, previous) in written.iter().rev() {
        match host.write_existing(path, previous) {
            Ok(()) => tracing::warn!(
                "Restored {} to {:?} after the failure",
                path.display(),
                previous.trim()
            ),
            Err(e) => tracing::warn!(
                "Could not restore {} to {:?} after the failure: {e}; it stays 1",
                path.display(),
                previous.trim()
            ),
        }
    }
}

/// The whole phase against `host`: what `ts-prep` without `--explain` does.
pub fn run(settings: &Settings, host: &mut dyn Host) -> Result<Report, PrepError> {
    let plan = plan(settings, &*host);
    plan.apply(host)
}

#[cfg(test)]
mod tests;

impl ts_common::cli::Failure for PrepError {
    fn log(&self) {
        for line in self.log_lines() {
            tracing::error!("{line}");
        }
    }
}
