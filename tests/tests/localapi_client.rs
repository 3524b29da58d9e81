//! `ts_localapi::localapi` against the fake tailscaled binary over a real unix socket (whole
//! fixture streams in order, both eras; masks; Follower re-watching and giving up), and against
//! a raw in-test server (exact request bytes; frames split at arbitrary points).

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use ts_localapi::localapi::{Follower, LocalApi, LocalApiError, MASK_FIRST_WATCH, MASK_STEADY};
use ts_localapi::notify::{BackendState, Notify};
use tsboot_tests::fake_tailscaled_ctl::{accept_chunked, fixture, FakeTailscaled};
use tsboot_tests::harness::{temp_dir, PATIENCE};

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name))
        .expect("fixture")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

const STREAMS: &[&str] = &[
    "seed-era-stream-authkey-login-mask14.ndjson",
    "seed-era-stream-interactive-login-mask14.ndjson",
    "seed-era-stream-machineauth-mask14.ndjson",
    "seed-era-stream-errmessage-mask14.ndjson",
    "seed-era-stream-steady-state-mask10.ndjson",
    "head-era-stream-authkey-login-mask14.ndjson",
    "head-era-stream-interactive-login-mask14.ndjson",
    "head-era-stream-machineauth-mask14.ndjson",
    "head-era-stream-errmessage-mask14.ndjson",
    "head-era-stream-steady-state-mask10.ndjson",
    "head-era-stream-fell-behind-mask10.ndjson",
];

#[tokio::test(flavor = "current_thread")]
async fn whole_fixture_streams_arrive_in_order_both_eras() {
    for stream in STREAMS {
        let initial = if stream.starts_with("head") {
            fixture("head-era-01-initial-needslogin-mask14.json")
        } else {
            fixture("seed-era-01-initial-needslogin-mask14.json")
        };
        let fake = FakeTailscaled::start("stream", Some(&initial), &[]);
        let api = LocalApi::new(&fake.socket);
        // Mask 0: no first message, so the stream is exactly the replayed events.
        let mut watch = within("watch", api.watch_ipn_bus(0)).await.expect("watch");
        fake.send_fixture(stream);
        for (i, line) in lines(stream).iter().enumerate() {
            let want = Notify::from_line(line.as_bytes()).expect("fixture parses");
            let got = within("next", watch.next())
                .await
                .expect("read")
                .expect("a message");
            assert_eq!(got, want, "{stream}: message {}", i + 1);
        }
        if stream.contains("fell-behind") {
            // The daemon ends a lagging watcher's stream after the ErrMessage.
            assert!(
                within("end", watch.next())
                    .await
                    .expect("clean end")
                    .is_none(),
                "{stream}"
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn client_sends_the_daemons_host_and_a_decimal_mask() {
    let fake = FakeTailscaled::start("host", None, &[]);
    let api = LocalApi::new(&fake.socket);
    assert_eq!(api.socket(), fake.socket.as_path());
    let mut w = within("watch", api.watch_ipn_bus(MASK_STEADY))
        .await
        .expect("watch");
    assert!(within("first", w.next()).await.expect("read").is_some());
    drop(w);
    let _w = within("watch", api.watch_ipn_bus(28804))
        .await
        .expect("watch");
    assert_eq!(
        fake.requests(),
        [
            "GET /localapi/v0/watch-ipn-bus?mask=10 host=local-tailscaled.sock",
            "GET /localapi/v0/watch-ipn-bus?mask=28804 host=local-tailscaled.sock"
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn first_message_follows_the_mask_seed() {
    let fake = FakeTailscaled::start(
        "mask",
        Some(&fixture("seed-era-01-initial-needslogin-mask14.json")),
        &[],
    );
    let api = LocalApi::new(&fake.socket);

    let mut w14 = within("watch", api.watch_ipn_bus(MASK_FIRST_WATCH))
        .await
        .expect("watch");
    let first = within("next", w14.next())
        .await
        .expect("read")
        .expect("first");
    assert_eq!(first.state, Some(BackendState::NeedsLogin));
    assert!(first.prefs.is_some(), "mask 14 carries Prefs");
    assert_eq!(first.net_map, None, "not logged in: NetMap null");
    assert_eq!(
        first.browse_to_url.as_deref(),
        Some(""),
        "seed: sticky URL, even empty"
    );

    let mut w10 = within("watch", api.watch_ipn_bus(MASK_STEADY))
        .await
        .expect("watch");
    let first = within("next", w10.next())
        .await
        .expect("read")
        .expect("first");
    assert_eq!(first.state, Some(BackendState::NeedsLogin));
    assert!(first.prefs.is_none(), "mask 10 has no Prefs bit");

    let mut w0 = within("watch", api.watch_ipn_bus(0)).await.expect("watch");
    fake.control("state 6");
    let first = within("next", w0.next())
        .await
        .expect("read")
        .expect("an event");
    assert_eq!(
        first.state,
        Some(BackendState::Running),
        "mask 0: no first message, the event comes first"
    );
    // The others got the same event after their first message.
    for w in [&mut w14, &mut w10] {
        let ev = within("next", w.next())
            .await
            .expect("read")
            .expect("event");
        assert_eq!(ev.state, Some(BackendState::Running));
    }

    // A new watcher sees the folded state.
    fake.send_fixture("seed-era-12-initial-running-with-netmap-mask10.json");
    let mut w = within("watch", api.watch_ipn_bus(MASK_STEADY))
        .await
        .expect("watch");
    let first = within("next", w.next())
        .await
        .expect("read")
        .expect("first");
    assert_eq!(first.state, Some(BackendState::Running));
    let id = first.self_identity().expect("identity from NetMap");
    assert_eq!(id.stable_id, "n5Ez6W7CNTRL");
    assert_eq!(first.browse_to_url, None, "URL only in NeedsLogin");
}

#[tokio::test(flavor = "current_thread")]
async fn first_message_follows_the_mask_head() {
    let fake = FakeTailscaled::start(
        "maskh",
        Some(&fixture(
            "head-era-13-initial-running-with-netmap-mask10.json",
        )),
        &[],
    );
    let api = LocalApi::new(&fake.socket);
    let mut w = within("watch", api.watch_ipn_bus(MASK_STEADY))
        .await
        .expect("watch");
    let first = within("next", w.next())
        .await
        .expect("read")
        .expect("first");
    assert!(first.session_id.is_some());
    assert_eq!(first.state, Some(BackendState::Running));
    assert!(first.self_change.is_some(), "HEAD: SelfChange with bit 3");
    fake.send_fixture("head-era-15-selfchange-address-change.json");
    assert!(within("event", w.next()).await.expect("read").is_some());

    // HEAD containerboot's mask: no State bit, InitialStatus instead, reflecting the change.
    let mut w = within("watch", api.watch_ipn_bus(28804))
        .await
        .expect("watch");
    let first = within("next", w.next())
        .await
        .expect("read")
        .expect("first");
    assert_eq!(first.state, None);
    assert_eq!(first.backend_state(), Some(BackendState::Running));
    assert_eq!(first.net_map, None);
    let id = first.self_identity().expect("identity from InitialStatus");
    assert_eq!(id.addresses[0].to_string(), "100.88.77.66/32");

    // Bit 16 is refused by a HEAD daemon: the client reports status and body.
    match within("watch", api.watch_ipn_bus(65536)).await {
        Err(LocalApiError::Status {
            code: 400, body, ..
        }) => assert!(body.contains("NotifyInProcessNoDisconnect"), "{body}"),
        Err(e) => panic!("want a 400 Status error, got {e}"),
        Ok(_) => panic!("want a 400 Status error, got a stream"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn follower_rewatches_after_drop_and_fell_behind_and_gives_up_when_gone() {
    let mut fake = FakeTailscaled::start(
        "follow",
        Some(&fixture(
            "head-era-13-initial-running-with-netmap-mask10.json",
        )),
        &[],
    );
    let mut f = Follower::new(LocalApi::new(&fake.socket), MASK_STEADY);

    let first = within("first", f.next()).await.expect("first");
    assert_eq!(first.backend_state(), Some(BackendState::Running));

    // Server closes every stream: the follower watches again and gets full state.
    fake.control("drop");
    let again = within("after drop", f.next()).await.expect("re-watch");
    assert_eq!(again.state, Some(BackendState::Running));
    assert!(again.self_identity().is_some());

    // A stream cut after "fell behind": re-watch, and the current state comes first.
    fake.send_fixture("head-era-stream-fell-behind-mask10.ndjson");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within("replayed", f.next()).await.expect("replayed"));
    }
    assert!(got[2].is_fell_behind());
    let again = within("after fell behind", f.next())
        .await
        .expect("re-watch");
    assert_eq!(again.state, Some(BackendState::Running));
    assert!(again.session_id.is_some(), "a new first message");

    // Events after the re-watch arrive as usual.
    fake.send_fixture("head-era-15-selfchange-address-change.json");
    let ev = within("event", f.next()).await.expect("event");
    assert_eq!(
        ev.self_identity().unwrap().addresses[0].to_string(),
        "100.88.77.66/32"
    );

    let watches = fake.requests();
    assert_eq!(watches.len(), 3, "{watches:?}");
    assert!(watches
        .iter()
        .all(|l| l == "GET /localapi/v0/watch-ipn-bus?mask=10 host=local-tailscaled.sock"));

    // tailscaled exits: the follower cannot connect any more and says so.
    let _ = fake.try_control("exit 0");
    assert!(fake.wait_exit().success());
    match within("gone", f.next()).await {
        Err(e @ LocalApiError::Gone { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("tailscaled is gone"), "{msg}");
            assert!(msg.contains(&fake.socket.display().to_string()), "{msg}");
        }
        other => panic!(
            "want Gone, got {other:?}",
            other = other.map(|_| "a message")
        ),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn follower_gone_when_tailscaled_is_killed() {
    let fake = FakeTailscaled::start(
        "killed",
        Some(&fixture(
            "seed-era-12-initial-running-with-netmap-mask10.json",
        )),
        &[],
    );
    let mut f = Follower::new(LocalApi::new(&fake.socket), MASK_STEADY);
    within("first", f.next()).await.expect("first");
    // SIGKILL leaves the socket file behind: connecting is refused.
    drop(fake.kill_keep_dir());
    assert!(matches!(
        within("gone", f.next()).await,
        Err(LocalApiError::Gone { .. })
    ));
}

/// A raw server: accepts one connection, returns the request head it read, and answers with
/// the given chunks (each a separate HTTP chunk, flushed separately).
async fn raw_server(listener: tokio::net::UnixListener, chunks: Vec<Vec<u8>>) -> String {
    let (mut s, head) = accept_chunked(&listener).await;
    for c in chunks {
        s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .await
            .expect("write");
        s.write_all(&c).await.expect("write");
        s.write_all(b"\r\n").await.expect("write");
        s.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    s.write_all(b"0\r\n\r\n").await.expect("write");
    head
}

#[tokio::test(flavor = "current_thread")]
async fn request_bytes_and_frames_split_anywhere() {
    let stream = lines("seed-era-stream-steady-state-mask10.ndjson");
    let mut all: Vec<u8> = Vec::new();
    for l in &stream {
        all.extend_from_slice(l.as_bytes());
        all.push(b'\n');
    }
    // The last message without its newline: accepted at end of stream, as Go's decoder does.
    all.pop();
    let splits: Vec<Vec<Vec<u8>>> = vec![
        all.chunks(1).map(<[u8]>::to_vec).collect(),
        all.chunks(7).map(<[u8]>::to_vec).collect(),
        all.chunks(4096).map(<[u8]>::to_vec).collect(),
        vec![all.clone()],
    ];
    for (n, chunks) in splits.into_iter().enumerate() {
        let dir = temp_dir("raw");
        let sock = dir.join("s.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(raw_server(listener, chunks));
        let api = LocalApi::new(&sock);
        let mut w = within("watch", api.watch_ipn_bus(MASK_STEADY))
            .await
            .expect("watch");
        for (i, l) in stream.iter().enumerate() {
            let got = within("next", w.next())
                .await
                .expect("read")
                .expect("message");
            assert_eq!(
                got,
                Notify::from_line(l.as_bytes()).unwrap(),
                "split {n}, message {i}"
            );
        }
        assert!(within("end", w.next()).await.expect("end").is_none());
        let head = within("server", server).await.expect("server task");
        let head_lines: Vec<&str> = head.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(
            head_lines[0],
            "GET /localapi/v0/watch-ipn-bus?mask=10 HTTP/1.1"
        );
        let lower: Vec<String> = head_lines.iter().map(|l| l.to_ascii_lowercase()).collect();
        assert!(
            lower.contains(&"host: local-tailscaled.sock".to_string()),
            "{head}"
        );
        assert_eq!(
            lower.iter().filter(|l| l.starts_with("host:")).count(),
            1,
            "{head}"
        );
        assert!(
            !lower
                .iter()
                .any(|l| l.starts_with("referer:") || l.starts_with("origin:")),
            "{head}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_garbage_line_is_skipped_and_the_stream_goes_on() {
    let dir = temp_dir("garbage");
    let sock = dir.join("s.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let server = tokio::spawn(raw_server(
        listener,
        vec![b"\n{\"State\":\"Running\"}\n  \nnot json\n{\"State\":6}\n".to_vec()],
    ));
    let mut w = within("watch", LocalApi::new(&sock).watch_ipn_bus(0))
        .await
        .expect("watch");
    let before = ts_localapi::localapi::malformed_lines();
    let ok = within("next", w.next())
        .await
        .expect("read")
        .expect("message");
    assert_eq!(ok.state, Some(BackendState::Running));
    assert_eq!(ts_localapi::localapi::malformed_lines() - before, 2);
    assert!(within("end", w.next()).await.expect("end").is_none());
    within("server", server).await.expect("server");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "current_thread")]
async fn follower_gives_up_when_every_stream_ends_empty() {
    // A daemon on its way out: it still accepts, but ends every stream at once.
    let dir = temp_dir("empty");
    let sock = dir.join("s.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    let server = tokio::spawn(async move {
        let mut n = 0u32;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            n += 1;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(b[0]);
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .await;
            if n == 9 {
                break;
            }
        }
        n
    });
    let mut f = Follower::new(LocalApi::new(&sock), MASK_STEADY);
    match within("gone", f.next()).await {
        Err(LocalApiError::Gone { source, .. }) => {
            assert!(
                matches!(*source, LocalApiError::EmptyStreams { times: 8, .. }),
                "{source}"
            )
        }
        other => panic!("want Gone, got {:?}", other.map(|_| "a message")),
    }
    assert_eq!(
        within("server", server).await.expect("server"),
        9,
        "first watch + 8 re-watches"
    );
    let _ = std::fs::remove_dir_all(dir);
}
