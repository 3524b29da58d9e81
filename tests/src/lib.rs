//! Test doubles for tsboot and the helpers its end-to-end tests share.
