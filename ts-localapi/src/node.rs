//! The node as the IPN bus tells it, kept current by a reader task of its own, apart from the
//! watcher's work (README "Watching tailscaled").
//!
//! A watcher's work (an apiserver write with retries, an iptables command, a LocalAPI call) can
//! take seconds. Reading the bus in the same loop would leave the guard of the Running state
//! blind for that long and let messages pile up. So one task does nothing but drain the bus: it
//! folds every message into a [`NodeState`], ends the watch at once when the guard trips or
//! tailscaled is gone, and publishes the latest state. The work takes the latest state when it
//! is ready for more ([`NodeWatch::changed`]): any number of changes in between are coalesced
//! into one, and reconciles start at most every [`MIN_SPACING`], so an identity flapping a
//! thousand times a second costs a handful of reconciles while the last state is still applied
//! exactly. [`NodeWatch::guarded`] runs a piece of work and abandons it (dropping its future:
//! requests are cancelled, child processes killed) the moment the watch ends.

use crate::localapi::{Follower, LocalApi, LocalApiError};
use crate::notify::{BackendState, Keep, LeftRunning, Notify, PeerMode, SelfIdentity, Skip};
use crate::peers::Peers;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Reconciles start at most this often (bounds the work a flapping node causes: a reconcile is
/// a few iptables runs or two apiserver requests). A change after a quiet spell is handled at
/// once.
pub const MIN_SPACING: Duration = Duration::from_millis(500);

/// What the bus said so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The backend state, from the first message of each watch on.
    pub state: Option<BackendState>,
    /// This device, once a message (or the status read at the start of a watch) named it.
    pub me: Option<SelfIdentity>,
    /// The node's certificate domains, when a message or the status told them.
    pub cert_domains: Option<Vec<String>>,
    /// Messages that carried the self node; grows on every self change, even one that changes
    /// nothing modelled here (the certificate domains, say, which HEAD does not send with it).
    pub self_changes: u64,
    /// The peer named [`Options::resolve`]: its addresses (`None`: no such peer), with the
    /// number of peers known. `None` until a message listed peers.
    pub target: Option<Resolution>,
}

/// A name looked up among the netmap's peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub addresses: Option<Vec<IpAddr>>,
    pub peers: usize,
}

/// Why the watch ended; the watcher ends with it.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    /// The guard tripped: tailscaled left Running.
    #[error(transparent)]
    LeftRunning(#[from] LeftRunning),
    /// tailscaled went away, refused the watch, or was never there (or the reader task died).
    #[error(transparent)]
    Bus(LocalApiError),
}

/// How to watch.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub mask: u64,
    /// End the watch when any message reports a state other than Running.
    pub guard: bool,
    /// Follow the peers and resolve this MagicDNS name among them (the mask must ask for peers).
    pub resolve: Option<String>,
}

/// A running watch: the reader task and the latest state.
pub struct NodeWatch {
    rx: watch::Receiver<NodeState>,
    reader: Option<JoinHandle<WatchEnd>>,
    /// A change was seen but not yet handed out (kept across a cancelled [`NodeWatch::changed`]).
    pending: bool,
    last: Option<Instant>,
}

impl NodeWatch {
    /// Starts the reader task on the current runtime.
    pub fn spawn(api: LocalApi, opts: Options) -> NodeWatch {
        let (tx, rx) = watch::channel(NodeState::default());
        let reader = match opts.resolve {
            Some(_) => tokio::spawn(read::<Keep>(api, opts, tx)),
            None => tokio::spawn(read::<Skip>(api, opts, tx)),
        };
        NodeWatch {
            rx,
            reader: Some(reader),
            pending: false,
            last: None,
        }
    }

    /// The next state that differs from the one last returned: waits for a change, at least
    /// [`MIN_SPACING`] after the previous return, and returns the latest state then (all
    /// changes in between coalesced). Cancel-safe. An error when the watch ended.
    pub async fn changed(&mut self) -> Result<NodeState, WatchEnd> {
        if !self.pending {
            let changed = tokio::select! {
                r = self.rx.changed() => r.is_ok(),
                end = ended(&mut self.reader) => return Err(end),
            };
            if !changed {
                return Err(ended(&mut self.reader).await);
            }
            self.pending = true;
        }
        if let Some(at) = self.last.map(|t| t + MIN_SPACING) {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                end = ended(&mut self.reader) => return Err(end),
            }
        }
        self.pending = false;
        self.last = Some(Instant::now());
        Ok(self.rx.borrow_and_update().clone())
    }

    /// Runs `work` unless the watch ends first: then `work` is dropped where it stands and the
    /// reason returned. The guard is never blind, whatever the work waits for.
    pub async fn guarded<F: Future>(&mut self, work: F) -> Result<F::Output, WatchEnd> {
        tokio::select! {
            out = work => Ok(out),
            end = ended(&mut self.reader) => Err(end),
        }
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        if let Some(r) = &self.reader {
            r.abort();
        }
    }
}

/// Resolves when the reader task has ended, with why; pending forever after it was reported.
async fn ended(reader: &mut Option<JoinHandle<WatchEnd>>) -> WatchEnd {
    let Some(handle) = reader.as_mut() else {
        return std::future::pending().await;
    };
    let out = match handle.await {
        Ok(end) => end,
        Err(e) => WatchEnd::Bus(LocalApiError::Parser {
            socket: "IPN bus reader task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    };
    *reader = None;
    out
}

/// The node as the first message of a watch (with this device's status) tells it, for a plan
/// printed by `--explain`.
pub async fn first_state(api: LocalApi, opts: &Options) -> Result<NodeState, LocalApiError> {
    async fn one<M: PeerMode>(api: LocalApi, opts: &Options) -> Result<NodeState, LocalApiError> {
        let msg = Follower::<Notify<M>>::of(api, opts.mask)
            .with_self_status()
            .next()
            .await?;
        let mut peers = Peers::default();
        let target = resolution::<M>(&mut peers, &msg, opts.resolve.as_deref());
        let mut st = NodeState::default();
        fold(&mut st, &msg, target);
        Ok(st)
    }
    match opts.resolve {
        Some(_) => one::<Keep>(api, opts).await,
        None => one::<Skip>(api, opts).await,
    }
}

fn resolution<M: PeerMode>(
    peers: &mut Peers,
    msg: &Notify<M>,
    name: Option<&str>,
) -> Option<Resolution> {
    let name = name?;
    if !peers.apply(msg) {
        return None;
    }
    Some(Resolution {
        addresses: peers.resolve(name),
        peers: peers.len(),
    })
}

/// The reader task: folds every message, ends on a fatal bus error or when the guard trips.
async fn read<M: PeerMode>(api: LocalApi, opts: Options, tx: watch::Sender<NodeState>) -> WatchEnd {
    let mut follower = Follower::<Notify<M>>::of(api, opts.mask).with_self_status();
    let mut peers = Peers::default();
    loop {
        let msg = match follower.next().await {
            Ok(msg) => msg,
            Err(e) => return WatchEnd::Bus(e),
        };
        if opts.guard {
            if let Err(left) = msg.check_still_running() {
                return WatchEnd::LeftRunning(left);
            }
        }
        let target = resolution::<M>(&mut peers, &msg, opts.resolve.as_deref());
        tx.send_if_modified(|st| fold(st, &msg, target));
    }
}

/// Applies one message; `true` when the state changed.
fn fold<M: PeerMode>(st: &mut NodeState, msg: &Notify<M>, target: Option<Resolution>) -> bool {
    let before = st.clone();
    st.state = msg.backend_state().or(st.state);
    if let Some(me) = msg.self_identity() {
        st.me = Some(me);
        st.self_changes += 1;
    }
    if let Some(domains) = msg.cert_domains() {
        st.cert_domains = Some(domains.to_vec());
    }
    st.target = target.or(st.target.take());
    *st != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(json: &str) -> Notify {
        Notify::from_line(json.as_bytes()).expect("valid")
    }

    #[test]
    fn fold_keeps_the_latest_and_says_when_it_changed() {
        let mut st = NodeState::default();
        assert!(fold(&mut st, &msg(r#"{"State":6}"#), None));
        assert!(!fold(&mut st, &msg(r#"{"Engine":{}}"#), None));
        assert!(fold(
            &mut st,
            &msg(r#"{"SelfChange":{"StableID":"a","Name":"a.","Addresses":["100.64.0.1/32"]}}"#),
            None
        ));
        assert_eq!(st.me.as_ref().map(|m| m.stable_id.as_str()), Some("a"));
        // The same self node again is still a self change (its domains may have moved).
        assert!(fold(
            &mut st,
            &msg(r#"{"SelfChange":{"StableID":"a","Name":"a.","Addresses":["100.64.0.1/32"]}}"#),
            None
        ));
        assert_eq!(st.self_changes, 2);
        assert_eq!(st.state, Some(BackendState::Running));
    }
}
