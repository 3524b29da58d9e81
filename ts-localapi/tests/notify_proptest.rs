//! Property tests: no input makes the IPN bus parser panic. Arbitrary bytes, and real fixture
//! messages with flipped bytes, truncation or a value replaced anywhere in the tree, either
//! parse (and then every accessor works) or return an error.

use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use ts_localapi::notify::Notify;

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

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
