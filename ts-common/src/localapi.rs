//! tailscaled's LocalAPI over its unix socket.
//! PLACEHOLDER: being written (see localapi.md §1-2).
