//! IPN bus lines parsed while they arrive (docs/tailscaled-protocol.md §2.1), so a message never has to fit
//! in memory: a full netmap of a large tailnet (one line, tens of MiB) costs what its few
//! interesting values cost, because everything else (peers, DERP map, packet filter) is skipped
//! by the parser as it streams past (`serde::de::IgnoredAny`), never buffered.
//!
//! serde_json parses from a blocking `std::io::Read`, so the parser runs on a thread of its own
//! per watch, fed the body's chunks over a small bounded channel (at most [`CHUNKS_IN_FLIGHT`]
//! chunks wait, so a slow consumer holds back the socket instead of growing a buffer). Lines
//! frame the messages: the parser reads one line as one JSON value, and a line that is not a
//! valid message is drained to its end and reported on its own, so the next line parses
//! normally.

use bytes::Bytes;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::io::{BufReader, Read};
use std::marker::PhantomData;
use tokio::sync::mpsc;

/// Body chunks buffered between the socket and the parser.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// Parsed messages buffered between the parser and the reader.
const MESSAGES_IN_FLIGHT: usize = 4;
/// The parser thread's stack: serde_json's recursion limit (128 levels) fits many times over.
const PARSER_STACK: usize = 256 << 10;
/// Read-ahead inside one line.
const LINE_BUFFER: usize = 8 << 10;

/// What the parser made of one line.
#[derive(Debug)]
pub enum Parsed<T> {
    Message(T),
    /// Not a message of the bus: why, and how long the line was.
    Malformed {
        len: u64,
        error: serde_json::Error,
    },
}

/// A JSON object, and only an object: serde would also read a JSON array into a struct, Go's
/// decoder (and so tailscaled) does not.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The parser's end of the chunk channel, as a blocking byte source.
struct Chunks {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Chunks {
    /// Makes `current` non-empty; `false` at the end of the stream.
    fn fill(&mut self) -> bool {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return false,
            }
        }
        true
    }

    /// Skips whitespace (blank lines included); `false` at the end of the stream.
    fn skip_blank(&mut self) -> bool {
        loop {
            if !self.fill() {
                return false;
            }
            let n = self
                .current
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if n < self.current.len() {
                let _ = self.current.split_to(n);
                return true;
            }
            self.current.clear();
        }
    }
}

/// One line of [`Chunks`] as a `Read`: ends (0) at the newline, which it consumes.
struct Line<'a> {
    src: &'a mut Chunks,
    ended: bool,
    len: u64,
}

impl Read for Line<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ended || buf.is_empty() || !self.src.fill() {
            self.ended = true;
            return Ok(0);
        }
        let cur = &mut self.src.current;
        let upto = cur.len().min(buf.len());
        let (n, newline) = match cur[..upto].iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (upto, false),
        };
        buf[..n].copy_from_slice(&cur[..n]);
        let _ = cur.split_to(n + usize::from(newline));
        self.len += n as u64;
        self.ended = newline;
        Ok(n)
    }
}

/// Parses one line (the stream is at a non-blank byte): the message, or why not, with the rest
/// of the line consumed either way.
fn parse_line<T: DeserializeOwned>(src: &mut Chunks) -> Parsed<T> {
    let mut line = BufReader::with_capacity(
        LINE_BUFFER,
        Line {
            src,
            ended: false,
            len: 0,
        },
    );
    let result = {
        let mut de = serde_json::Deserializer::from_reader(&mut line);
        Object::<T>::deserialize(&mut de).and_then(|Object(v)| de.end().map(|()| v))
    };
    // Whatever the parser left of the line (after an error) is skipped without keeping it.
    let _ = std::io::copy(&mut line, &mut std::io::sink());
    let len = line.get_ref().len;
    match result {
        Ok(v) => Parsed::Message(v),
        Err(error) => Parsed::Malformed { len, error },
    }
}

/// Starts a parser thread: feed it the body's chunks through the returned sender (dropping it
/// ends the stream), read what it made of each line from the receiver. The thread ends when
/// either side is dropped.
pub fn spawn_parser<T: DeserializeOwned + Send + 'static>(
) -> std::io::Result<(mpsc::Sender<Bytes>, mpsc::Receiver<Parsed<T>>)> {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let (msg_tx, msg_rx) = mpsc::channel::<Parsed<T>>(MESSAGES_IN_FLIGHT);
    std::thread::Builder::new()
        .name("ipn-bus-parser".into())
        .stack_size(PARSER_STACK)
        .spawn(move || {
            let mut src = Chunks {
                rx: chunk_rx,
                current: Bytes::new(),
            };
            while src.skip_blank() {
                if msg_tx.blocking_send(parse_line(&mut src)).is_err() {
                    return;
                }
            }
        })?;
    Ok((chunk_tx, msg_rx))
}

/// Parses a body that arrived in `chunks` the way the stream parser does, on the calling thread
/// (for tests and the property tests): every message and malformed line, in order.
pub fn parse_chunks<T: DeserializeOwned>(chunks: Vec<Bytes>) -> Vec<Parsed<T>> {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    for chunk in chunks {
        // Capacity for every chunk: this cannot fail.
        let _ = tx.try_send(chunk);
    }
    drop(tx);
    let mut src = Chunks {
        rx,
        current: Bytes::new(),
    };
    let mut out = Vec::new();
    while src.skip_blank() {
        out.push(parse_line(&mut src));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{BackendState, Notify};

    fn messages(bytes: &[u8]) -> Vec<Result<Notify, u64>> {
        parse_chunks::<Notify>(vec![Bytes::copy_from_slice(bytes)])
            .into_iter()
            .map(|p| match p {
                Parsed::Message(m) => Ok(m),
                Parsed::Malformed { len, .. } => Err(len),
            })
            .collect()
    }

    #[test]
    fn lines_frame_messages_and_a_bad_line_is_alone() {
        let got = messages(
            b"\n{\"State\":6}\n  \n{\"State\":\"x\"}\n[1]\nnull\n{\"State\":2} trailing\n{\"State\":2}",
        );
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap().state, Some(BackendState::Running));
        assert_eq!(got[1].as_ref().unwrap_err(), &13);
        assert!(
            got[2].is_err() && got[3].is_err() && got[4].is_err(),
            "{got:?}"
        );
        assert_eq!(
            got[5].as_ref().unwrap().state,
            Some(BackendState::NeedsLogin),
            "a last line without its newline"
        );
    }

    #[test]
    fn a_cut_line_is_one_malformed_message() {
        let got = messages(b"{\"State\":6,\"NetMap\":{\"Peers\":[{\"ID\":1");
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_thread_reads_chunks_split_anywhere() {
        let text = b"{\"State\":5}\n{\"NetMap\":{\"Peers\":[{\"ID\":1,\"Name\":\"p.\"}],\"SelfNode\":{\"StableID\":\"s\"}}}\n";
        for size in [1, 2, 3, 7, 100] {
            let (tx, mut rx) = spawn_parser::<Notify>().expect("thread");
            let feed = tokio::spawn({
                let chunks: Vec<Bytes> = text.chunks(size).map(Bytes::copy_from_slice).collect();
                async move {
                    for c in chunks {
                        tx.send(c).await.expect("parser alive");
                    }
                }
            });
            let Some(Parsed::Message(a)) = rx.recv().await else {
                panic!("first")
            };
            assert_eq!(a.state, Some(BackendState::Starting));
            let Some(Parsed::Message(b)) = rx.recv().await else {
                panic!("second")
            };
            assert_eq!(b.self_identity().unwrap().stable_id, "s");
            feed.await.expect("feed");
            assert!(rx.recv().await.is_none(), "ends with the chunks");
        }
    }
}
