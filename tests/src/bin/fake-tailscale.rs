//! Fake `tailscale` CLI for tsboot's tests; see `tsboot_tests::fake_cli`.
fn main() {
    std::process::exit(tsboot_tests::fake_cli::tailscale_main());
}
