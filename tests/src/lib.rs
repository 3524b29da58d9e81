//! Test doubles for tsboot and the helpers its end-to-end tests share.
pub mod fake_apiserver;
pub mod fake_cli;
pub mod fake_tailscaled;
pub mod fake_tailscaled_ctl;
pub mod harness;
pub mod kube_watch;
pub mod probe;
pub mod real;

/// A binary built by this workspace (`target/<profile>/<name>`): the parent of the running test
/// executable's `deps` directory.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
