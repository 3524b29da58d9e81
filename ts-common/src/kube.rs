//! The Kubernetes client of tsboot.
//! PLACEHOLDER: being written (see kube-api.md).
