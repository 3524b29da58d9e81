//! The fake tailscaled binary itself: the daemon's request checks (Host, Referer, Origin,
//! paths), response framing, argv recording, TS_TEST_SOCKET, signals and control commands.

use nix::sys::signal::Signal;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;
use tsboot_tests::fake_tailscaled_ctl::{fixture, require_bin, FakeTailscaled};
use tsboot_tests::harness::{temp_dir, PATIENCE};

/// Sends `request` and returns (status code, response head, body bytes read so far). Reads
/// until the head is complete and, for a fixed-length body, the body.
fn raw(socket: &Path, request: &str) -> (u16, String, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).expect("read");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let code: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length: ")
            .map(|v| v.trim().parse::<usize>().unwrap())
    });
    if let Some(len) = len {
        while buf.len() < head_end + len {
            let n = s.read(&mut b).expect("read body");
            assert!(n > 0);
            buf.extend_from_slice(&b[..n]);
        }
    } else if code == 200 {
        // A watch stream: wait for the first chunk.
        while buf.len() == head_end {
            let n = s.read(&mut b).expect("read chunk");
            assert!(n > 0);
            buf.extend_from_slice(&b[..n]);
        }
    }
    (
        code,
        head,
        String::from_utf8_lossy(&buf[head_end..]).into_owned(),
    )
}

fn get(path: &str, extra_headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\n{extra_headers}\r\n")
}

const WATCH: &str = "/localapi/v0/watch-ipn-bus?mask=10";

#[test]
fn enforces_the_daemons_host_and_header_rules() {
    let fake = FakeTailscaled::start("host", None, &[]);
    // What a generic unix-socket URI puts in Host: the hex-encoded socket path.
    let hex: String = fake
        .socket
        .display()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cases: &[(&str, u16)] = &[
        (&format!("Host: {hex}\r\n"), 403),
        ("Host: localhost\r\n", 403),
        ("Host: local-tailscaled.sock:80\r\n", 403),
        ("Host: local-tailscaled.sock\r\n", 200),
        ("Host: \r\n", 200),
        (
            "Host: local-tailscaled.sock\r\nReferer: http://evil.example/\r\n",
            403,
        ),
        (
            "Host: local-tailscaled.sock\r\nOrigin: http://evil.example\r\n",
            403,
        ),
        ("Host: local-tailscaled.sock\r\nOrigin: \r\n", 403),
    ];
    for (headers, want) in cases {
        let (code, head, body) = raw(&fake.socket, &get(WATCH, headers));
        assert_eq!(code, *want, "{headers:?}: {head}{body}");
        if *want == 403 {
            assert_eq!(body, "invalid localapi request\n", "{headers:?}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: text/plain; charset=utf-8"),
                "{head}"
            );
        } else {
            let lower = head.to_ascii_lowercase();
            assert!(lower.contains("content-type: application/json"), "{head}");
            assert!(lower.contains("transfer-encoding: chunked"), "{head}");
            // First chunk: size line, one compact JSON object, newline.
            let mut parts = body.splitn(2, "\r\n");
            let size = usize::from_str_radix(parts.next().unwrap(), 16).expect("chunk size");
            let chunk = &parts.next().unwrap()[..size];
            assert!(
                chunk.starts_with('{') && chunk.ends_with("}\n"),
                "{chunk:?}"
            );
            assert_eq!(chunk.matches('\n').count(), 1);
            let v: serde_json::Value = serde_json::from_str(chunk).expect("JSON");
            assert_eq!(v["State"], 2);
        }
    }
    let requests = fake.requests();
    assert_eq!(requests.len(), cases.len());
    assert_eq!(requests[0], format!("GET {WATCH} host={hex}"));
    assert_eq!(
        requests[3],
        format!("GET {WATCH} host=local-tailscaled.sock")
    );
}

#[test]
fn only_the_bus_is_implemented() {
    let fake = FakeTailscaled::start("paths", None, &[]);
    let host = "Host: local-tailscaled.sock\r\n";
    for path in ["/localapi/v0/whois", "/localapi/v0/debug", "/"] {
        let (code, _, body) = raw(&fake.socket, &get(path, host));
        assert_eq!(code, 404, "{path}");
        assert!(body.contains("fake-tailscaled implements only"), "{body}");
    }
    let (code, _, _) = raw(
        &fake.socket,
        &format!("POST {WATCH} HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"),
    );
    assert_eq!(code, 405);
}

#[test]
fn bad_mask_per_era() {
    let host = "Host: local-tailscaled.sock\r\n";
    let seed = FakeTailscaled::start("mask-seed", None, &[]);
    let (code, _, body) = raw(
        &seed.socket,
        &get("/localapi/v0/watch-ipn-bus?mask=x", host),
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "bad mask\n"),
        "the seed flushed 200 before parsing"
    );
    let head = FakeTailscaled::start(
        "mask-head",
        Some(&fixture("head-era-01-initial-needslogin-mask14.json")),
        &[],
    );
    let (code, _, body) = raw(
        &head.socket,
        &get("/localapi/v0/watch-ipn-bus?mask=x", host),
    );
    assert_eq!((code, body.as_str()), (400, "bad mask\n"));
    let (code, _, _) = raw(
        &head.socket,
        &get("/localapi/v0/watch-ipn-bus?mask=4352", host),
    );
    assert_eq!(code, 400, "rate limit with peer changes");
}

#[test]
fn records_argv_and_links_ts_test_socket() {
    let dir = temp_dir("rec");
    let record = dir.join("args");
    let link = dir.join("test.sock");
    let socket = dir.join("tailscaled.sock");
    // A stale socket file from a previous run is replaced.
    std::fs::write(&socket, "stale").unwrap();
    let tailscaled = dir.join("tailscaled");
    std::os::unix::fs::symlink(require_bin("fake-tailscaled"), &tailscaled).unwrap();
    // Like ts-init: argv[0] is the bare name; the record still shows the executed path ($0).
    let mut child = std::process::Command::new(&tailscaled)
        .arg0("tailscaled")
        .args([
            "--socket",
            socket.to_str().unwrap(),
            "--state=mem:",
            "--statedir=/tmp",
        ])
        .env("TS_TEST_RECORD_ARGS", &record)
        .env("TS_TEST_SOCKET", &link)
        .env("FAKE_TAILSCALED_READY_STDOUT", "1")
        .env_remove("FAKE_TAILSCALED_CONTROL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!(
            "{} --socket {} --state=mem: --statedir=/tmp\n",
            tailscaled.display(),
            socket.display()
        )
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), socket);
    // The link reaches the LocalAPI.
    let (code, _, _) = raw(&link, &get(WATCH, "Host: local-tailscaled.sock\r\n"));
    assert_eq!(code, 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        !socket.exists() && std::fs::symlink_metadata(&link).is_err(),
        "socket and link removed"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_socket_argument_is_an_error() {
    let out = std::process::Command::new(require_bin("fake-tailscaled"))
        .arg("--state=mem:")
        .env_remove("TS_TEST_RECORD_ARGS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("didn't find socket path"));
}

#[test]
fn sigterm_and_sigint_exit_0_and_remove_the_socket() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut fake = FakeTailscaled::start("term", None, &[]);
        fake.signal(sig);
        assert_eq!(fake.wait_exit().code(), Some(0), "{sig}");
        assert!(!fake.socket.exists(), "{sig}: socket removed");
    }
}

#[test]
fn ignore_sigterm_then_normal() {
    // From the environment: SIGTERM is ignored, SIGKILL still works.
    let mut fake = FakeTailscaled::start("ign", None, &[("FAKE_TAILSCALED_IGNORE_SIGTERM", "600")]);
    fake.signal(Signal::SIGTERM);
    // The fake still answers after the ignored SIGTERM (the control round trip is the proof).
    assert_eq!(fake.watchers(), 0);
    // Lift the ignore window: the next SIGTERM ends it with 0.
    fake.control("ignore-sigterm 0");
    fake.signal(Signal::SIGTERM);
    assert_eq!(fake.wait_exit().code(), Some(0));

    let mut fake = FakeTailscaled::start("ign2", None, &[]);
    fake.control("ignore-sigterm 600");
    fake.signal(Signal::SIGTERM);
    assert_eq!(fake.watchers(), 0, "still alive");
    fake.signal(Signal::SIGKILL);
    assert_eq!(fake.wait_exit().signal(), Some(9));
}

#[test]
fn exit_and_signal_commands() {
    let mut fake = FakeTailscaled::start("exit", None, &[]);
    let _ = fake.try_control("exit 3");
    assert_eq!(fake.wait_exit().code(), Some(3));
    assert!(
        !fake.socket.exists(),
        "exit removes the socket like a clean daemon"
    );

    for (name, signo) in [("SEGV", 11), ("SIGKILL", 9), ("term", 15)] {
        let mut fake = FakeTailscaled::start("sig", None, &[]);
        let _ = fake.try_control(&format!("signal {name}"));
        assert_eq!(fake.wait_exit().signal(), Some(signo), "{name}");
    }
    let fake = FakeTailscaled::start("badsig", None, &[]);
    assert!(fake.try_control("signal NOPE").unwrap().starts_with("err "));
    assert!(fake
        .try_control("frobnicate")
        .unwrap()
        .starts_with("err unknown command"));
    assert!(fake.try_control("notify [1]").unwrap().starts_with("err "));
    assert!(fake
        .try_control("replay /nonexistent.ndjson")
        .unwrap()
        .starts_with("err "));
    assert!(fake.try_control("state x").unwrap().starts_with("err "));
}

#[test]
fn signal_log_records_forwarded_signals() {
    let dir = temp_dir("siglog");
    let log = dir.join("signals.log");
    let fake = FakeTailscaled::start(
        "siglog",
        None,
        &[("FAKE_TAILSCALED_SIGNAL_LOG", log.to_str().unwrap())],
    );
    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGQUIT,
    ] {
        fake.signal(sig);
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == sig.as_str())
        {
            assert!(start.elapsed() < PATIENCE, "{sig} not logged");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(fake.watchers(), 0, "alive after all four");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn socket_delay_keeps_the_socket_away() {
    // The ready line comes only once the sockets exist, so this simply must not fail.
    let fake = FakeTailscaled::start("delay", None, &[("FAKE_TAILSCALED_SOCKET_DELAY_MS", "200")]);
    assert!(fake.socket.exists());
}

#[test]
fn watchers_count_follows_open_streams() {
    let fake = FakeTailscaled::start("count", None, &[]);
    assert_eq!(fake.watchers(), 0);
    let mut a = UnixStream::connect(&fake.socket).unwrap();
    a.write_all(get(WATCH, "Host: local-tailscaled.sock\r\n").as_bytes())
        .unwrap();
    let mut b = UnixStream::connect(&fake.socket).unwrap();
    b.write_all(get(WATCH, "").as_bytes()).unwrap();
    fake.wait_watchers(2);
    fake.control("drop");
    assert_eq!(fake.watchers(), 0);
    // The dropped streams were ended properly (terminating chunk).
    let mut rest = Vec::new();
    a.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    while !rest.ends_with(b"0\r\n\r\n") {
        let n = a.read(&mut buf).unwrap();
        assert!(n > 0, "closed without the last chunk");
        rest.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn status_without_peers_is_the_daemons_status_minus_the_peer_map() {
    let fake = FakeTailscaled::start(
        "status",
        Some(&fixture("head-era-20-initial-status-headmask28804.json")),
        &[],
    );
    let host = "Host: local-tailscaled.sock\r\n";
    let (code, _, body) = raw(&fake.socket, &get("/localapi/v0/status?peers=false", host));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\n\t\"BackendState\""),
        "tab-indented like the daemon's: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(v["Peer"].is_null(), "{body}");
    assert_eq!(v["BackendState"], "Running");
    let (_, _, with_peers) = raw(&fake.socket, &get("/localapi/v0/status", host));
    let v: serde_json::Value = serde_json::from_str(&with_peers).expect("JSON");
    assert!(v["Peer"].is_object(), "{with_peers}");
}
