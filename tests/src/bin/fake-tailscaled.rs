//! Fake `tailscaled` for tsboot's tests; see `tsboot_tests::fake_tailscaled`.
fn main() {
    std::process::exit(tsboot_tests::fake_tailscaled::main());
}
