//! What a kubelet probe and a Prometheus scrape do to ts-health, for the end-to-end tests: a
//! plain HTTP/1.1 request over TCP, and the Prometheus project's own text parser
//! (`prometheus_client`, run by Python) to check the exposition.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// `method path` on `addr` with `Connection: close`; the whole answer (bounded by a 10 s
/// deadline against hangs).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        code,
        headers,
        body: body.to_string(),
    })
}

/// `GET path`, panicking with the error when the endpoint does not answer.
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// Polls `GET path` until `want` accepts the answer; panics after `within` with the last
/// answer. Returns the accepted answer and how long it took.
pub fn wait_for(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    what: &str,
    want: impl Fn(&Answer) -> bool,
) -> (Answer, Duration) {
    let start = Instant::now();
    loop {
        let last = match request(addr, "GET", path) {
            Ok(a) if want(&a) => return (a, start.elapsed()),
            Ok(a) => Ok(a),
            Err(e) => Err(e.to_string()),
        };
        if start.elapsed() > within {
            panic!("GET {path}: not {what} within {within:?}; last answer: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The port a `Running … endpoint at ADDR/path` log line names.
pub fn endpoint_from_log(log: &str, path: &str) -> Option<SocketAddr> {
    log.lines().find_map(|l| {
        let rest = l.split(" endpoint at ").nth(1)?;
        let addr = rest.strip_suffix(path)?;
        addr.parse().ok()
    })
}

/// One metric family as the Prometheus parser returns it.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct Family {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// (sample name, labels sorted by name, value)
pub type Sample = (String, Vec<(String, String)>, f64);

impl Family {
    /// The value of the sample named `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
    }
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
out = []
for f in text_string_to_metric_families(text):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [[s.name, sorted(s.labels.items()), s.value] for s in f.samples]})
print(json.dumps(out))
"#;

/// A Python that has `prometheus_client` (the CI installs Debian's python3-prometheus-client).
pub fn prometheus_parser() -> Option<String> {
    ["python3", "/usr/bin/python3"].into_iter().find_map(|py| {
        Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| py.to_string())
    })
}

/// Parses `text` with the Prometheus project's parser; `Err` carries the parser's complaint.
pub fn parse_exposition(python: &str, text: &str) -> Result<Vec<Family>, String> {
    let mut child = Command::new(python)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {python}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("parser output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_rejects_broken_text() {
        let Some(py) = prometheus_parser() else {
            println!(
                "SKIPPED: no python3 with prometheus_client (install python3-prometheus-client)"
            );
            return;
        };
        let good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\"} 3\n";
        let fams = parse_exposition(&py, good).expect("valid");
        assert_eq!(fams.len(), 1);
        assert_eq!(fams[0].kind, "counter");
        assert_eq!(fams[0].value("a_total", &[("l", "v")]), Some(3.0));
        for bad in ["a{l=\"v} 1\n", "a abc\n", "a{l=v} 1\n", "a{l=\"v\"}\n"] {
            assert!(parse_exposition(&py, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn log_lines_name_the_endpoint() {
        let log = "boot: 2026/01/01 00:00:00 ts-health: Running healthcheck endpoint at 127.0.0.1:41234/healthz\n";
        assert_eq!(
            endpoint_from_log(log, "/healthz"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(endpoint_from_log(log, "/metrics"), None);
    }
}
