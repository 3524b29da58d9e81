//! The fake API server's PKI: a CA the test owns and a server certificate for the loopback
//! addresses, as a real cluster's apiserver certificate carries its service IP as an IP SAN.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A CA and a server certificate signed by it.
pub struct Pki {
    /// PEM of the CA certificate (what goes into the service account's `ca.crt`).
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// A CA with no server: its PEM, for "a client with a different CA" tests.
pub fn other_ca_pem() -> String {
    let (ca_pem, _) = new_ca("tsboot other CA");
    ca_pem
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

impl Pki {
    /// A fresh CA and a server certificate with IP SANs 127.0.0.1 and ::1 (and the DNS names a
    /// cluster's apiserver answers to).
    pub fn generate() -> Pki {
        let (ca_pem, issuer) = new_ca("tsboot fake kube-apiserver CA");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into().expect("dns name")),
            SanType::DnsName("kubernetes.default.svc".try_into().expect("dns name")),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate server key");
        let cert = params.signed_by(&key, &issuer).expect("sign server cert");

        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .expect("server certificate");
        // The client speaks HTTP/1.1 only, like the reference's Go client with a custom TLS
        // config.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pki {
            ca_pem,
            server_config: Arc::new(config),
        }
    }
}
