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
    match Settings::load(overrides) {
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

/// The flags every tsboot binary has, for `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// Print the plan (what would run or change, from the plan that runs) to stdout and change nothing
    #[arg(long, global = true)]
    pub explain: bool,

    /// Log format, text or json [env: TS_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<String>,
}

impl CommonArgs {
    /// The phase to hand to [`run_phase`]: `name`, and the variables its flags stand for
    /// (`flags`, the binary's own, plus the common ones).
    pub fn phase(&self, name: &'static str, flags: &[(&'static str, Option<&String>)]) -> Phase {
        let mut pairs = flags.to_vec();
        pairs.push(("TS_LOG_FORMAT", self.log_format.as_ref()));
        Phase {
            name,
            overrides: overrides(&pairs),
            explain: self.explain,
        }
    }
}

/// A phase binary's invocation: its name (in every log line), the variables its flags stand
/// for, and whether it only explains.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub overrides: Vec<Override>,
    pub explain: bool,
}

/// An error that ends a phase: it says why (logged once, by [`run_phase`]) and carries the exit
/// status it ends the process with.
pub trait Failure: std::fmt::Display {
    /// 1 unless the error says otherwise (2 for configuration the phase itself refuses).
    fn exit_code(&self) -> i32 {
        crate::exit::FAILURE
    }
    /// The log lines that say why; one error line by default.
    fn log(&self) {
        tracing::error!("{self}");
    }
}

/// The one entry of every phase binary (ts-init, PID 1, has its own: see its `run`): loads the
/// settings (flags over the environment) and installs logging; refuses invalid configuration
/// with exit 2; outside `--explain`, checks the readiness fd and makes it close-on-exec before
/// anything is opened or started (no child may inherit it: its EOF is how the supervisor
/// learns "never ready"); warns about unsupported variables; runs `body`; and turns its
/// outcome into the exit status — the one way a phase exits.
pub fn run_phase<E: Failure>(
    phase: Phase,
    body: impl FnOnce(Settings, bool) -> Result<(), E>,
) -> std::process::ExitCode {
    let run = || {
        let settings = load_settings(phase.name, &phase.overrides)?;
        claim(&settings, phase.explain)?;
        warn_unsupported(&settings);
        body(settings, phase.explain).map_err(|e| {
            e.log();
            e.exit_code()
        })
    };
    let code = run().err().unwrap_or(crate::exit::SUCCESS);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn claim(settings: &Settings, explain: bool) -> Result<(), i32> {
    if explain {
        // Nothing is reported on it: an explained plan only names it.
        return Ok(());
    }
    crate::process::claim_ready_fd(settings.ready_fd).map_err(|err| {
        tracing::error!("invalid configuration: {err}");
        crate::exit::USAGE
    })
}

/// A failure that was already logged where it happened, carrying only its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("exit status {0}")]
pub struct Logged(pub i32);

impl Failure for Logged {
    fn exit_code(&self) -> i32 {
        self.0
    }
    fn log(&self) {}
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
    // Still honoured, as in containerboot.
    if let Some(addr) = &settings.local.deprecated_health_addr {
        tracing::warn!(
            "TS_HEALTHCHECK_ADDR_PORT is deprecated (serving /healthz alone on {addr}); \
             use TS_ENABLE_HEALTH_CHECK=true and optionally TS_LOCAL_ADDR_PORT instead"
        );
    }
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

    #[command(flatten)]
    pub common: CommonArgs,
}

impl WatcherArgs {
    /// The watcher's invocation: [`CommonArgs::phase`] with these flags' variables plus `more`
    /// (the phase's own flags).
    pub fn phase(&self, name: &'static str, more: &[(&'static str, Option<&String>)]) -> Phase {
        let mut pairs = vec![
            ("TS_SOCKET", self.socket.as_ref()),
            ("TS_READY_FD", self.ready_fd.as_ref()),
        ];
        pairs.extend_from_slice(more);
        self.common.phase(name, &pairs)
    }
}
