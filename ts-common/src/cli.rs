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
pub fn parse_args<T: clap::Parser>(name: &'static str, env_help: &str) -> (T, Phase) {
    parse_with(
        name,
        T::command().after_help(format!("{env_help}\n\n{EXIT_CODES_HELP}")),
    )
}

/// Parses the command line with `command` (`T`'s, with its help adjusted) into `T` and the
/// phase's invocation. A flag that stands for a variable has that variable as its clap id
/// (`id = "TS_SOCKET"`), so the flag's value becomes that variable's override here, in one
/// place, for every binary and subcommand.
pub fn parse_with<T: clap::Parser>(name: &'static str, command: clap::Command) -> (T, Phase) {
    let matches = command.get_matches();
    let args = T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (args, phase_of(name, &matches))
}

/// The invocation `matches` stands for: every given flag whose id is a `TS_*` variable, at any
/// subcommand level, and `--explain`.
pub fn phase_of(name: &'static str, matches: &clap::ArgMatches) -> Phase {
    let mut overrides: Vec<Override> = Vec::new();
    let mut level = Some(matches);
    while let Some(m) = level {
        for id in m
            .ids()
            .map(|id| id.as_str())
            .filter(|id| id.starts_with("TS_"))
        {
            if let Ok(Some(value)) = m.try_get_one::<String>(id) {
                // A global flag is seen again in its subcommand's matches: one entry each.
                overrides.retain(|(var, _)| var != id);
                overrides.push((id.to_string(), value.clone()));
            }
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    Phase {
        name,
        overrides,
        explain: matches.get_flag("explain"),
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
    #[arg(long, id = "TS_LOG_FORMAT", value_name = "FORMAT", global = true)]
    pub log_format: Option<String>,
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
    #[arg(long, id = "TS_SOCKET", value_name = "PATH")]
    pub socket: Option<String>,

    /// Write one newline to this fd after the first reconcile, then close it [env: TS_READY_FD]
    #[arg(long, id = "TS_READY_FD", value_name = "FD")]
    pub ready_fd: Option<String>,

    /// Also exit 1 when tailscaled leaves Running (ts-init asks one long-lived phase to guard it)
    #[arg(long)]
    pub guard: bool,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Flags {
        #[arg(long, id = "TS_ROUTES", global = true)]
        routes: Option<String>,
        #[arg(long, id = "TS_DEST_IP")]
        dest_ip: Option<String>,
        #[arg(long, id = "TS_USERSPACE")]
        userspace: Option<String>,
        #[arg(long)]
        guard: bool,
        #[command(subcommand)]
        mode: Option<Mode>,
        #[command(flatten)]
        common: CommonArgs,
    }

    #[derive(Subcommand, Debug)]
    enum Mode {
        Watch {
            #[arg(long)]
            can_patch: Option<String>,
        },
    }

    fn phase(argv: &[&str]) -> Phase {
        let matches = Flags::command()
            .try_get_matches_from(std::iter::once("t").chain(argv.iter().copied()))
            .expect("valid command line");
        phase_of("t", &matches)
    }

    #[test]
    fn only_the_given_variable_flags_become_overrides() {
        let p = phase(&["--routes", "10.0.0.0/8", "--userspace", "", "--guard"]);
        assert_eq!(
            p.overrides,
            vec![
                ("TS_ROUTES".to_string(), "10.0.0.0/8".to_string()),
                ("TS_USERSPACE".to_string(), String::new())
            ]
        );
        assert!(!p.explain);
    }

    #[test]
    fn global_flags_after_a_subcommand_count_once() {
        let p = phase(&[
            "watch",
            "--routes",
            "fd00::/64",
            "--can-patch",
            "true",
            "--log-format",
            "json",
            "--explain",
        ]);
        let mut got = p.overrides.clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("TS_LOG_FORMAT".to_string(), "json".to_string()),
                ("TS_ROUTES".to_string(), "fd00::/64".to_string())
            ]
        );
        assert!(p.explain);
    }
}
