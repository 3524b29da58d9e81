//! The core every tsboot binary shares: the one reader of the environment ([`settings`]), the
//! command lines every phase builds ([`argv`]), child-process helpers ([`process`]), logging
//! ([`logging`]) and the reconcile status ts-health reads ([`status`]).
//!
//! It depends on no async runtime, no HTTP and no TLS, so ts-init (PID 1) links only this. The
//! LocalAPI client lives in `ts-localapi`, the Kubernetes client in `ts-kube`.

pub mod argv;
pub mod cli;
pub mod exit;
pub mod logging;
pub mod preflight;
pub mod process;
pub mod settings;
pub mod status;

pub use settings::{Settings, SettingsError};
