//! tailscaled's LocalAPI as tsboot's watchers use it: the client over the unix socket
//! ([`localapi`]), the IPN-bus messages ([`notify`], peers apart in [`peers`]), the stop signals
//! of a long-lived phase ([`signals`]) and the one-thread runtime they all run on ([`block_on`]).
//! Wire facts: docs/localapi.md.

pub mod localapi;
pub mod notify;
pub mod peers;
pub mod signals;

/// Runs `f` on a current-thread runtime, as every long-lived phase does (they wait on I/O; one
/// thread is enough and keeps memory low). `Err` is the exit code when no runtime can be built.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, i32> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Ok(rt.block_on(f)),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            Err(ts_common::exit::FAILURE)
        }
    }
}
