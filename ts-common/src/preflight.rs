//! The one message between two processes about Kubernetes: what `ts-kubestate preflight`
//! hands ts-init through its `--result-fd` pipe. One JSON line,
//! `{"can_patch":true|false,"authkey":"<key>"|null}`, written and read with the same type so
//! both sides agree by construction. The key travels only here, never in an argv or a log (D15).

use crate::settings::AuthKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the Kubernetes preflight found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightResult {
    /// The pod may patch the state secret (device info, authkey removal).
    pub can_patch: bool,
    /// The secret's `authkey`, when `TS_AUTHKEY` was not given and the secret had one.
    #[serde(default, serialize_with = "expose", deserialize_with = "key")]
    pub authkey: Option<AuthKey>,
}

impl PreflightResult {
    /// The line written to the pipe, newline included.
    pub fn to_line(&self) -> String {
        // Serialising a bool and an optional string cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        line
    }

    /// Reads what the preflight wrote. An empty key counts as none.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut result: PreflightResult = serde_json::from_slice(bytes)?;
        result.authkey = result.authkey.filter(|k| !k.expose().is_empty());
        Ok(result)
    }
}

// The key is a `Secret` so that nothing else can print it; this field is the one place where
// it is written out on purpose.
fn expose<S: Serializer>(key: &Option<AuthKey>, s: S) -> Result<S::Ok, S::Error> {
    key.as_ref().map(AuthKey::expose).serialize(s)
}

fn key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AuthKey>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(AuthKey::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_round_trips_and_keeps_its_wire_form() {
        let with_key = PreflightResult {
            can_patch: true,
            authkey: Some(AuthKey::new("tskey-\"x\"")),
        };
        let line = with_key.to_line();
        assert_eq!(
            line,
            "{\"can_patch\":true,\"authkey\":\"tskey-\\\"x\\\"\"}\n"
        );
        assert_eq!(
            PreflightResult::from_bytes(line.as_bytes()).unwrap(),
            with_key
        );
        let none = PreflightResult {
            can_patch: false,
            authkey: None,
        };
        assert_eq!(none.to_line(), "{\"can_patch\":false,\"authkey\":null}\n");
        let empty = PreflightResult::from_bytes(br#"{"can_patch":true,"authkey":""}"#).unwrap();
        assert_eq!(empty.authkey, None);
        assert!(PreflightResult::from_bytes(b"{\"can_patch\":1}").is_err());
        assert!(!format!("{with_key:?}").contains("tskey"));
    }
}
