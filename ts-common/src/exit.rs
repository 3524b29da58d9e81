//! Exit codes shared by every tsboot binary (see the README's exit-status table).

/// The phase did its job.
pub const SUCCESS: i32 = 0;
/// Any failure that is not a configuration error.
pub const FAILURE: i32 = 1;
/// Invalid configuration: nothing was started or changed.
pub const USAGE: i32 = 2;

/// Shell convention for a process killed by signal `signo`.
pub fn signal_status(signo: i32) -> i32 {
    128 + signo
}
