//! The `ipn.Notify` messages of tailscaled's IPN bus, for both eras (seed ~v1.36 and HEAD).
//! PLACEHOLDER: being written (see localapi.md §3).
