//! SIGTERM/SIGINT for the long-lived phases (tokio): the one way each of them learns that it
//! should stop. ts-init, PID 1, has its own signalfd loop and does not use this.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Handlers for SIGTERM and SIGINT, installed when this is created, so a signal that arrives
/// before anyone waits is not lost.
pub struct StopSignals {
    handlers: Option<(Signal, Signal)>,
}

impl StopSignals {
    /// Installs the handlers. If that fails (it practically cannot) the default dispositions
    /// stay, which end the process as well; [`StopSignals::recv`] then never resolves.
    pub fn install() -> Self {
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => {
                tracing::warn!("cannot install SIGTERM/SIGINT handlers; a signal will end this process abruptly");
                None
            }
        };
        StopSignals { handlers }
    }

    /// Resolves with the signal's name on SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> &'static str {
        match &mut self.handlers {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            None => std::future::pending().await,
        }
    }
}
