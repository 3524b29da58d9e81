//! tailscaled's LocalAPI as tsboot's watchers use it: the client over the unix socket
//! ([`localapi`]), the IPN-bus messages ([`notify`], peers apart in [`peers`]) parsed as they
//! stream in ([`stream`]), the node kept current by a reader task ([`node`]), the stop signals
//! of a long-lived phase ([`signals`]) and the one-thread runtime they all run on ([`run_phase`]).
//! Wire facts: docs/tailscaled-protocol.md.

use ts_common::cli::{Failure, Phase};
use ts_common::Settings;

pub mod command;
pub mod localapi;
pub mod node;
pub mod notify;
pub mod peers;
pub mod signals;
pub mod stream;

/// The current-thread runtime every long-lived phase runs on (they wait on I/O; one thread is
/// enough and keeps memory low).
fn runtime() -> Result<tokio::runtime::Runtime, RuntimeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RuntimeError)
}

/// No async runtime could be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime: {0}")]
pub struct RuntimeError(#[source] std::io::Error);

impl Failure for RuntimeError {}

/// Why an async phase ended: its own failure, or no runtime to run it on.
#[derive(Debug, thiserror::Error)]
pub enum AsyncFailure<E> {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Phase(E),
}

impl<E: Failure> Failure for AsyncFailure<E> {
    fn exit_code(&self) -> i32 {
        match self {
            AsyncFailure::Runtime(e) => e.exit_code(),
            AsyncFailure::Phase(e) => e.exit_code(),
        }
    }
    fn log(&self) {
        match self {
            AsyncFailure::Runtime(e) => e.log(),
            AsyncFailure::Phase(e) => e.log(),
        }
    }
}

/// [`ts_common::cli::run_phase`] for the async phases: `body` runs on the one current-thread
/// runtime, on the main thread (children started from it keep a living parent thread, which
/// `PR_SET_PDEATHSIG` needs).
pub fn run_phase<E, F, Fut>(phase: Phase, body: F) -> std::process::ExitCode
where
    E: Failure,
    F: FnOnce(Settings, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    ts_common::cli::run_phase(phase, |settings, explain| {
        runtime()?
            .block_on(body(settings, explain))
            .map_err(AsyncFailure::Phase)
    })
}
