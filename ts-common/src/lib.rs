//! Shared pieces of tsboot: the one reader of the environment ([`settings`]), the command lines
//! every phase builds ([`argv`]), the LocalAPI client ([`localapi`], [`notify`]), the Kubernetes
//! client ([`kube`]), child-process helpers ([`process`]) and logging ([`logging`]).

pub mod argv;
pub mod cli;
pub mod exit;
pub mod logging;
pub mod preflight;
pub mod process;
pub mod settings;
pub mod status;

#[cfg(feature = "localapi")]
pub mod localapi;
#[cfg(feature = "localapi")]
pub mod notify;
#[cfg(feature = "localapi")]
pub mod peers;
#[cfg(feature = "localapi")]
pub mod signals;

#[cfg(feature = "kube")]
pub mod kube;

pub use settings::{Settings, SettingsError};
