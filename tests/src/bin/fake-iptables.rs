//! Fake `iptables` / `ip6tables` for tsboot's tests; see `tsboot_tests::fake_cli`.
fn main() {
    std::process::exit(tsboot_tests::fake_cli::iptables_main());
}
