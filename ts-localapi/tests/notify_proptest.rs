//! Property tests (the fuzz targets of the IPN-bus parser): no input makes it panic. Arbitrary
//! bytes, and real fixture messages with flipped bytes, truncation or a value replaced anywhere
//! in the tree, either parse (and then every accessor works) or return an error. And the
//! streaming parser, fed a stream of such lines cut into chunks anywhere, says exactly what the
//! one-line parser says about each line.
//!
//! Cases per property: `TSBOOT_FUZZ_CASES` (default 512, what CI runs); README "Fuzzing" records
//! a long run.

use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use ts_localapi::notify::{Keep, Notify};
use ts_localapi::stream::{parse_chunks, Parsed};

/// Cases per property.
fn cases() -> u32 {
    std::env::var("TSBOOT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn fixture_lines() -> &'static [String] {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ipn-bus");
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "ndjson")
                )
            })
            .collect();
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
        }
        assert!(!out.is_empty());
        out
    })
}

/// Parses and, on success, exercises every derived accessor.
fn exercise(bytes: &[u8]) {
    if let Ok(n) = Notify::from_line(bytes) {
        let _ = n.backend_state().map(|s| s.name());
        let _ = n.self_identity();
        let _ = n.is_fell_behind();
    }
}

/// JSON Pointers of every node in `v`.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{here}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(here);
}

fn replacement() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(i64::MAX)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1.5e300)),
        Just(serde_json::json!(true)),
        Just(serde_json::json!("")),
        Just(serde_json::json!("100.64.0.1/32")),
        Just(serde_json::json!("fd7a::1")),
        Just(serde_json::json!("Running")),
        Just(serde_json::json!([])),
        Just(serde_json::json!(["x"])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({"SelfNode": null, "Addresses": ["::/0"]})),
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
    ]
}

/// A line of a bus stream: a fixture message, perhaps damaged, or garbage.
fn bus_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => any::<prop::sample::Index>().prop_map(|i| i.get(fixture_lines()).as_bytes().to_vec()),
        2 => (
            any::<prop::sample::Index>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|(i, flips)| {
                let mut b = i.get(fixture_lines()).as_bytes().to_vec();
                for (at, v) in flips {
                    let k = at.index(b.len());
                    b[k] = v;
                }
                b
            }),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(i, cut)| {
            let b = i.get(fixture_lines()).as_bytes();
            b[..cut.index(b.len() + 1)].to_vec()
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
    // One line each: a newline inside would make two.
    .prop_map(|b| b.into_iter().filter(|&c| c != b'\n').collect())
}

/// What the one-line parser says: the message, or `None` for a malformed line.
fn one_line<M: ts_localapi::notify::PeerMode>(line: &[u8]) -> Option<Notify<M>> {
    Notify::<M>::parse_line(line).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_stream_parser_agrees_with_the_line_parser(
        lines in proptest::collection::vec(bus_line(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        crlf in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for l in &lines {
            stream.extend_from_slice(l);
            stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut chunks = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([stream.len()]) {
            chunks.push(bytes::Bytes::copy_from_slice(&stream[from..to]));
            from = to;
        }
        // Blank lines carry no message; every other line gives exactly one answer.
        let want: Vec<Option<Notify>> = lines
            .iter()
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| one_line(l))
            .collect();
        let got: Vec<Option<Notify>> = parse_chunks::<Notify>(chunks.clone())
            .into_iter()
            .map(|p| match p { Parsed::Message(m) => Some(m), Parsed::Malformed { .. } => None })
            .collect();
        prop_assert_eq!(&got, &want);
        // With peers read the verdicts are the same.
        let kept: Vec<bool> = parse_chunks::<Notify<Keep>>(chunks)
            .into_iter()
            .map(|p| matches!(p, Parsed::Message(_)))
            .collect();
        let want_kept: Vec<bool> = lines
            .iter()
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| one_line::<Keep>(l).is_some())
            .collect();
        prop_assert_eq!(kept, want_kept);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn flipped_bytes_never_panic(
        idx in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = idx.get(fixture_lines()).as_bytes().to_vec();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        exercise(&bytes);
    }

    #[test]
    fn truncated_never_panics(idx in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let line = idx.get(fixture_lines()).as_bytes();
        let at = cut.index(line.len() + 1);
        exercise(&line[..at]);
    }

    #[test]
    fn replaced_value_never_panics(
        idx in any::<prop::sample::Index>(),
        which in any::<prop::sample::Index>(),
        new in replacement(),
    ) {
        let mut v: Value = serde_json::from_str(idx.get(fixture_lines()).as_str()).expect("fixture is JSON");
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let ptr = which.get(&ptrs).clone();
        if ptr.is_empty() {
            v = new;
        } else if let Some(slot) = v.pointer_mut(&ptr) {
            *slot = new;
        }
        exercise(serde_json::to_string(&v).expect("serialize").as_bytes());
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    for depth in [200, 100_000] {
        let nest = |key: &str| {
            let mut s = format!("{{\"{key}\":");
            s.push_str(&"[".repeat(depth));
            s.push_str(&"]".repeat(depth));
            s.push('}');
            s
        };
        // Skipped fields are skipped without recursion, whatever their depth.
        exercise(nest("Engine").as_bytes());
        // Modelled fields hit serde_json's recursion limit: an error, not a crash.
        assert!(
            Notify::from_line(nest("NetMap").as_bytes()).is_err(),
            "depth {depth}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn deep_nesting_on_the_parser_thread_is_an_error_not_a_crash() {
    let depth = 100_000;
    let mut line = String::from("{\"NetMap\":");
    line.push_str(&"[".repeat(depth));
    line.push_str(&"]".repeat(depth));
    line.push_str("}\n{\"Engine\":");
    line.push_str(&"[".repeat(depth));
    line.push_str(&"]".repeat(depth));
    line.push_str("}\n{\"State\":6}\n");
    let (tx, mut rx) = ts_localapi::stream::spawn_parser::<Notify>().expect("thread");
    tx.send(bytes::Bytes::from(line))
        .await
        .expect("parser alive");
    drop(tx);
    assert!(matches!(rx.recv().await, Some(Parsed::Malformed { .. })));
    assert!(
        matches!(rx.recv().await, Some(Parsed::Message(_))),
        "a skipped field nests freely"
    );
    match rx.recv().await {
        Some(Parsed::Message(m)) => assert_eq!(m.state.map(|s| s.code()), Some(6)),
        other => panic!("the stream goes on: {other:?}"),
    }
    assert!(rx.recv().await.is_none());
}
