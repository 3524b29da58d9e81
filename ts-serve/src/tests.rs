//! Unit tests of the file model: Go's decoding rules, substitution, HTTPS removal.

use super::serve_config::*;

const SAMPLE: &str = r#"{
  "TCP": {"443": {"HTTPS": true}, "80": {"HTTP": true}, "5432": {"TCPForward": "127.0.0.1:5432"}},
  "Web": {
    "${TS_CERT_DOMAIN}:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}},
    "${TS_CERT_DOMAIN}:80": {"Handlers": {"/": {"Text": "hi"}}}
  },
  "AllowFunnel": {"${TS_CERT_DOMAIN}:443": true},
  "Services": {"svc:web": {"TCP": {"443": {"HTTPS": true}}, "Web": {"svc-web:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:9090"}}}}}}
}"#;

#[test]
fn substitution_replaces_every_placeholder() {
    let d = desired(SAMPLE.as_bytes(), Some("node.tail1234.ts.net")).unwrap();
    assert!(d.dropped_https.is_empty());
    let json = String::from_utf8(d.config.to_json()).unwrap();
    assert!(!json.contains("${TS_CERT_DOMAIN}"), "{json}");
    assert!(json.contains(r#""node.tail1234.ts.net:443""#), "{json}");
    assert_eq!(d.config.service_names(), vec!["svc:web".to_string()]);
    assert_eq!(
        substitute(b"${TS_CERT_DOMAIN}${TS_CERT_DOMAIN}x", Some("a")),
        b"aax".to_vec()
    );
}

#[test]
fn without_cert_domain_https_listeners_are_dropped_and_the_rest_kept() {
    let d = desired(SAMPLE.as_bytes(), None).unwrap();
    assert_eq!(
        d.dropped_https,
        vec![
            "HTTPS port 443".to_string(),
            "svc:web HTTPS port 443".to_string()
        ]
    );
    let c = &d.config;
    assert_eq!(c.tcp.keys().copied().collect::<Vec<_>>(), vec![80, 5432]);
    assert_eq!(
        c.web.keys().cloned().collect::<Vec<_>>(),
        vec!["no-https:80".to_string()]
    );
    assert!(c.allow_funnel.is_empty());
    let svc = c.services["svc:web"].as_ref().unwrap();
    assert!(svc.tcp.is_empty() && svc.web.is_empty());
}

#[test]
fn field_names_match_case_insensitively_and_unknown_fields_are_ignored() {
    let a = ServeConfig::parse(
        br#"{"tcp":{"80":{"http":true}},"web":{"h:80":{"handlers":{"/":{"proxy":"3000"}}}},"Bogus":1}"#,
    )
    .unwrap();
    let b = ServeConfig::parse(
        br#"{"TCP":{"80":{"HTTP":true}},"Web":{"h:80":{"Handlers":{"/":{"Proxy":"3000"}}}}}"#,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        String::from_utf8(a.to_json()).unwrap(),
        r#"{"TCP":{"80":{"HTTP":true}},"Web":{"h:80":{"Handlers":{"/":{"Proxy":"3000"}}}}}"#
    );
    // Map keys are data, not field names: their case is kept.
    let c =
        ServeConfig::parse(br#"{"Web":{"Host:80":{"Handlers":{"/API":{"Text":"x"}}}}}"#).unwrap();
    assert!(c.web.contains_key("Host:80"));
}

#[test]
fn null_and_empty_object_are_the_empty_config() {
    assert_eq!(ServeConfig::parse(b"null").unwrap(), ServeConfig::default());
    assert_eq!(ServeConfig::parse(b"{}").unwrap(), ServeConfig::default());
    assert_eq!(
        ServeConfig::parse(br#"{"TCP":null,"Web":{}}"#).unwrap(),
        ServeConfig::default()
    );
    assert_eq!(ServeConfig::default().to_json(), b"{}".to_vec());
}

#[test]
fn what_go_refuses_is_refused_with_a_reason() {
    for (bad, want) in [
        (&b""[..], "empty"),
        (b"  \n", "empty"),
        (b"{", "not valid JSON"),
        (b"{} x", "not valid JSON"),
        (b"[]", "an array"),
        (b"\"x\"", "a string"),
        (br#"{"TCP":{"http":{}}}"#, "not an ipn.ServeConfig"),
        (br#"{"TCP":{"70000":{}}}"#, "not an ipn.ServeConfig"),
        (
            br#"{"TCP":{"80":{"HTTP":"yes"}}}"#,
            "not an ipn.ServeConfig",
        ),
        (br#"{"TCP":[]}"#, "not an ipn.ServeConfig"),
        (
            br#"{"TCP":{"80":{"ProxyProtocol":1.5}}}"#,
            "not an ipn.ServeConfig",
        ),
        (
            br#"{"Services":{"svc:a":{"Tun":1}}}"#,
            "not an ipn.ServeConfig",
        ),
    ] {
        let e = ServeConfig::parse(bad).expect_err(&String::from_utf8_lossy(bad));
        assert!(
            e.to_string().contains(want),
            "{}: {e}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn reencoding_is_stable() {
    let d = desired(SAMPLE.as_bytes(), Some("n.ts.net")).unwrap();
    let again = ServeConfig::parse(&d.config.to_json()).unwrap();
    assert_eq!(again, d.config);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..256)) {
        let _ = desired(&bytes, None);
        let _ = desired(&bytes, Some("x.ts.net"));
    }
}

#[test]
fn a_port_changing_its_kind_or_tun_mode_is_a_conflict() {
    let http = ServeConfig::parse(br#"{"TCP":{"80":{"HTTP":true}}}"#).unwrap();
    let tcp = ServeConfig::parse(br#"{"TCP":{"80":{"TCPForward":"127.0.0.1:80"}}}"#).unwrap();
    let other_port =
        ServeConfig::parse(br#"{"TCP":{"81":{"TCPForward":"127.0.0.1:80"}}}"#).unwrap();
    assert_eq!(
        conflict(&http, &tcp).as_deref(),
        Some("port 80 changes from http to tcp")
    );
    assert_eq!(conflict(&http, &http), None);
    assert_eq!(conflict(&http, &other_port), None);
    assert_eq!(conflict(&ServeConfig::default(), &tcp), None);
    let tun = ServeConfig::parse(br#"{"Services":{"svc:a":{"Tun":true}}}"#).unwrap();
    let handlers =
        ServeConfig::parse(br#"{"Services":{"svc:a":{"TCP":{"22":{"TCPForward":"x:22"}}}}}"#)
            .unwrap();
    assert!(conflict(&tun, &handlers).is_some());
    assert!(conflict(&handlers, &tun).is_some());
}
