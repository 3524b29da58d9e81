//! What every tsboot binary's command line shares: settings loading with flag overrides,
//! the exit-code help text, and the `--explain` printer.

use crate::settings::{Override, Settings};

/// `after_help` text of every phase binary.
pub const EXIT_CODES_HELP: &str = "Exit status: 0 success, 1 failure (the log says what to fix), \
2 invalid configuration (nothing was changed).\n\
Configuration comes from the same TS_* environment as ts-init; a flag overrides the variable \
named in its help.";

/// Parses a phase's command line with `env_help` and the exit codes as the help's epilogue;
/// exits (2) on a usage error, as clap does.
pub fn parse_args<T: clap::Parser>(env_help: &str) -> T {
    let command = T::command().after_help(format!("{env_help}\n\n{EXIT_CODES_HELP}"));
    match T::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    }
}

/// Loads [`Settings`] from the environment plus `overrides`, then installs logging for `bin`.
/// On invalid configuration the error (which names the variable and value) is logged and the
/// exit code to use ([`crate::exit::USAGE`]) is returned.
pub fn load_settings(bin: &'static str, overrides: &[Override]) -> Result<Settings, i32> {
    // The readiness fd is checked and made close-on-exec before this process opens anything or
    // starts a child: no child may inherit it (its EOF tells the supervisor "never ready").
    match Settings::load(overrides)
        .and_then(|s| crate::process::claim_ready_fd(s.ready_fd).map(|()| s))
    {
        Ok(settings) => {
            crate::logging::init(bin, settings.log_format);
            Ok(settings)
        }
        Err(err) => {
            crate::logging::init(bin, Settings::log_format_only(overrides));
            tracing::error!("invalid configuration: {err}");
            Err(crate::exit::USAGE)
        }
    }
}

/// Collects `(variable, value)` overrides from optional flag values.
pub fn overrides(pairs: &[(&'static str, Option<&String>)]) -> Vec<Override> {
    pairs
        .iter()
        .filter_map(|(var, value)| value.map(|v| (*var, v.clone())))
        .collect()
}

/// Logs one warning per recognised-but-unsupported variable (D16), unless ts-init (which has
/// already warned) started this process.
pub fn warn_unsupported(settings: &Settings) {
    if std::env::var_os(crate::process::UNDER_INIT_VAR).is_some() {
        return;
    }
    for var in &settings.unsupported_vars {
        tracing::warn!(
            "{var} is set but not supported by tsboot yet (newer containerboot feature); it is ignored"
        );
    }
    if let Some(addr) = &settings.local.deprecated_health_addr {
        tracing::warn!("{}", deprecated_health_warning(addr));
    }
}

/// The one-line warning for `TS_HEALTHCHECK_ADDR_PORT` (still honoured, as in containerboot).
pub fn deprecated_health_warning(addr: &crate::settings::ListenAddr) -> String {
    format!(
        "TS_HEALTHCHECK_ADDR_PORT is deprecated (serving /healthz alone on {addr}); \
         use TS_ENABLE_HEALTH_CHECK=true and optionally TS_LOCAL_ADDR_PORT instead"
    )
}

/// Prints one `--explain` plan line to stdout.
pub fn plan(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// The flags every long-lived watcher phase has, for `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WatcherArgs {
    /// tailscaled's LocalAPI socket [env: TS_SOCKET]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,

    /// Write one newline to this fd after the first reconcile, then close it [env: TS_READY_FD]
    #[arg(long, value_name = "FD")]
    pub ready_fd: Option<String>,

    /// Also exit 1 when tailscaled leaves Running (ts-init asks one long-lived phase to guard it)
    #[arg(long)]
    pub guard: bool,

    /// Print the plan to stdout and change nothing
    #[arg(long)]
    pub explain: bool,
}

impl WatcherArgs {
    /// The variables these flags stand for, plus `more` (the phase's own flags).
    pub fn overrides(&self, more: &[(&'static str, Option<&String>)]) -> Vec<Override> {
        let mut pairs = vec![
            ("TS_SOCKET", self.socket.as_ref()),
            ("TS_READY_FD", self.ready_fd.as_ref()),
        ];
        pairs.extend_from_slice(more);
        overrides(&pairs)
    }
}
