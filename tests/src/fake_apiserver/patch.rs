//! Patch semantics of a real API server for a v1 Secret's `data` / `stringData`.
//!
//! * strategic-merge and JSON merge patch: `data` keys are set (base64 values) or deleted
//!   (`null`); `stringData` keys are set as plain text and merged into `data` like the real
//!   server does on write (a `null` there changes nothing); other fields are accepted and
//!   ignored.
//! * JSON patch (RFC 6902): `add`, `remove`, `replace`, `test`, `move`, `copy` on the object's
//!   JSON; a `remove`/`replace` of a missing path or a failed `test` is a 422, as on a real
//!   server.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why a patch was refused: HTTP status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    pub code: u16,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> PatchError {
    PatchError {
        code: 422,
        message: message.into(),
    }
}

fn bad_request(message: impl Into<String>) -> PatchError {
    PatchError {
        code: 400,
        message: message.into(),
    }
}

/// A valid Secret data key (`[-._a-zA-Z0-9]+`), as the API server validates them.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_keys(name: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<(), PatchError> {
    for key in data.keys() {
        if !valid_key(key) {
            return Err(invalid(format!(
                "Secret {name:?} is invalid: data[{key}]: Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            )));
        }
    }
    Ok(())
}

/// base64 of `bytes` (standard alphabet, padded), via k8s-openapi's own encoding.
pub fn b64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Decodes standard base64, `None` when invalid.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    serde_json::from_value::<k8s_openapi::ByteString>(Value::String(s.to_string()))
        .ok()
        .map(|b| b.0)
}

/// Applies a strategic-merge or merge patch to `data`.
pub fn merge_patch(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    body: &[u8],
) -> Result<BTreeMap<String, Vec<u8>>, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("error decoding patch: {e}")))?;
    let Value::Object(patch) = patch else {
        return Err(bad_request(
            "error decoding patch: a merge patch must be a JSON object",
        ));
    };
    let mut out = data.clone();
    for (field, base64) in [("data", true), ("stringData", false)] {
        let map = match patch.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(map)) => map,
            Some(_) => return Err(bad_request(format!("{field} must be an object"))),
        };
        for (k, v) in map {
            let bytes = match v {
                // The stored object has no stringData, so a null there deletes nothing.
                Value::Null => {
                    if base64 {
                        out.remove(k);
                    }
                    continue;
                }
                Value::String(s) if base64 => unb64(s).ok_or_else(|| {
                    bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data for data[{k}]"
                    ))
                })?,
                Value::String(s) => s.as_bytes().to_vec(),
                _ => {
                    let want = if base64 { "a base64 string" } else { "a string" };
                    return Err(bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: {field}[{k}] must be {want}"
                    )));
                }
            };
            out.insert(k.clone(), bytes);
        }
    }
    check_keys(name, &out)?;
    Ok(out)
}

/// Applies a JSON patch to the secret object `object` (its full JSON) and returns the new
/// `data`.
pub fn json_patch(
    name: &str,
    object: &Value,
    body: &[u8],
) -> Result<BTreeMap<String, Vec<u8>>, PatchError> {
    let ops: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("error decoding patch: {e}")))?;
    let Value::Array(ops) = ops else {
        return Err(bad_request(
            "error decoding patch: a JSON patch must be an array of operations",
        ));
    };
    let mut doc = object.clone();
    for op in &ops {
        apply_op(&mut doc, op)?;
    }
    let mut out = BTreeMap::new();
    match doc.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let s = v
                    .as_str()
                    .ok_or_else(|| bad_request(format!("data[{k}] must be a base64 string")))?;
                let bytes = unb64(s)
                    .ok_or_else(|| bad_request(format!("illegal base64 data for data[{k}]")))?;
                out.insert(k.clone(), bytes);
            }
        }
        Some(_) => return Err(bad_request("data must be an object")),
    }
    check_keys(name, &out)?;
    Ok(out)
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("JSON patch operation {op} has no path")))?;
    match kind {
        "add" => {
            let value = op
                .get("value")
                .cloned()
                .ok_or_else(|| invalid("add operation has no value"))?;
            add(doc, path, value)
        }
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            let value = op
                .get("value")
                .cloned()
                .ok_or_else(|| invalid("replace operation has no value"))?;
            let target = doc.pointer_mut(path).ok_or_else(|| {
                invalid(format!(
                    "jsonpatch replace operation does not apply: doc is missing key: {path}: missing value"
                ))
            })?;
            *target = value;
            Ok(())
        }
        "test" => {
            let want = op.get("value").unwrap_or(&Value::Null);
            match doc.pointer(path) {
                Some(have) if have == want => Ok(()),
                _ => Err(invalid(format!(
                    "the server rejected our request due to an error in our request: testing value {path} failed: test failed"
                ))),
            }
        }
        "move" | "copy" => {
            let from = op
                .get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{kind} operation has no from")))?;
            let value = if kind == "move" {
                remove(doc, from)?
            } else {
                doc.pointer(from).cloned().ok_or_else(|| {
                    invalid(format!(
                        "jsonpatch copy operation does not apply: doc is missing from path: {from}: missing value"
                    ))
                })?
            };
            add(doc, path, value)
        }
        other => Err(invalid(format!("Unexpected kind: {other}"))),
    }
}

/// Splits `/a/b~1c` into the parent pointer `/a` and the unescaped last token `b/c`.
fn split_pointer(path: &str) -> Option<(&str, String)> {
    let idx = path.rfind('/')?;
    let token = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Some((&path[..idx], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let missing = || {
        invalid(format!(
            "jsonpatch add operation does not apply: doc is missing path: {path:?}: missing value"
        ))
    };
    let (parent, token) = split_pointer(path).ok_or_else(missing)?;
    match doc.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(map) => {
            map.insert(token, value);
            Ok(())
        }
        Value::Array(arr) => {
            if token == "-" {
                arr.push(value);
                return Ok(());
            }
            let i: usize = token.parse().map_err(|_| missing())?;
            if i > arr.len() {
                return Err(missing());
            }
            arr.insert(i, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let missing = || {
        invalid(format!(
            "jsonpatch remove operation does not apply: doc is missing path: {path:?}: missing value"
        ))
    };
    let (parent, token) = split_pointer(path).ok_or_else(missing)?;
    match doc.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&token).ok_or_else(missing),
        Value::Array(arr) => {
            let i: usize = token.parse().map_err(|_| missing())?;
            if i >= arr.len() {
                return Err(missing());
            }
            Ok(arr.remove(i))
        }
        _ => Err(missing()),
    }
}

/// The `data` map as a real server renders it (absent when empty).
pub fn data_json(data: &BTreeMap<String, Vec<u8>>) -> Option<Value> {
    if data.is_empty() {
        return None;
    }
    let map: Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(b64(v))))
        .collect();
    Some(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn object(d: &BTreeMap<String, Vec<u8>>) -> Value {
        let mut obj = serde_json::json!({"kind": "Secret", "metadata": {"name": "s"}});
        if let Some(dj) = data_json(d) {
            obj["data"] = dj;
        }
        obj
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(b64(b"tskey-key"), "dHNrZXkta2V5");
        assert_eq!(unb64("dHNrZXkta2V5").as_deref(), Some(&b"tskey-key"[..]));
        assert_eq!(unb64("not base64!"), None);
    }

    #[test]
    fn merge_sets_deletes_and_merges_string_data() {
        let d = data(&[("authkey", "k"), ("_machinekey", "m")]);
        let out = merge_patch(
            "s",
            &d,
            br#"{"stringData":{"device_id":"myID","x":null},"data":{"authkey":null,"b":"Yg=="}}"#,
        )
        .expect("patch");
        assert_eq!(
            out,
            data(&[("_machinekey", "m"), ("b", "b"), ("device_id", "myID")])
        );
        assert_eq!(merge_patch("s", &d, b"[1]").expect_err("array").code, 400);
        assert_eq!(
            merge_patch("s", &d, br#"{"stringData":{"bad key":"v"}}"#)
                .expect_err("bad key")
                .code,
            422
        );
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let d = data(&[("authkey", "k"), ("other", "o")]);
        let out = json_patch(
            "s",
            &object(&d),
            br#"[{"op":"remove","path":"/data/authkey"}]"#,
        )
        .expect("remove");
        assert_eq!(out, data(&[("other", "o")]));
        let err = json_patch(
            "s",
            &object(&out),
            br#"[{"op":"remove","path":"/data/authkey"}]"#,
        )
        .expect_err("missing");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("missing"), "{}", err.message);
        // No data at all: the real server has no /data either.
        let err = json_patch(
            "s",
            &object(&BTreeMap::new()),
            br#"[{"op":"remove","path":"/data/authkey"}]"#,
        )
        .expect_err("no data");
        assert_eq!(err.code, 422);
        let out = json_patch(
            "s",
            &object(&d),
            br#"[{"op":"test","path":"/data/other","value":"bw=="},{"op":"replace","path":"/data/other","value":"cA=="},{"op":"add","path":"/data/n","value":"bg=="}]"#,
        )
        .expect("test+replace+add");
        assert_eq!(out, data(&[("authkey", "k"), ("n", "n"), ("other", "p")]));
        let err = json_patch(
            "s",
            &object(&d),
            br#"[{"op":"test","path":"/data/other","value":"eHg="}]"#,
        )
        .expect_err("test fails");
        assert_eq!(err.code, 422);
    }
}
