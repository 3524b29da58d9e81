//! The shutdown wait (run by ts-init after SIGTERM, before tailscaled is signalled): wait until
//! tailscaled has finished writing its state to the secret, so a pod stopped right after a
//! login does not leave a half-written state it can never recover from (tailscale#14080).
//!
//! "Consistent" is today's image's approximation of tailscaled's profile store: either none of
//! `_current-profile`, `_profiles`, `_machinekey` and a `profile-*` key is present (nothing
//! written yet), or all of them are, with exactly one `profile-*` key. A missing secret counts
//! as consistent (nothing written), and so does a secret that cannot be read: the wait must
//! never be the reason a pod does not stop.

use crate::Kube;
use std::time::Duration;
use tokio::time::Instant;
use ts_kube::Backoff;

/// The pause between two reads of the secret: 100 ms doubling up to 1 s.
const PAUSE: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(1),
};

/// How the wait ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The state is complete (or there is none).
    Consistent,
    /// The deadline passed with the state still half-written.
    TimedOut,
    /// The secret could not be read; the reason, for the log.
    Unreadable(String),
}

/// Whether the secret's keys form a consistent tailscaled state (see the module docs): the
/// `ipn` state keys tailscaled's profile store writes together.
pub fn has_consistent_state<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    let (mut current, mut known, mut machine, mut profiles) = (false, false, false, 0usize);
    for key in keys {
        match key {
            "_current-profile" => current = true,
            "_profiles" => known = true,
            "_machinekey" => machine = true,
            k if k.starts_with("profile-") => profiles += 1,
            _ => {}
        }
    }
    let all = current && known && machine && profiles == 1;
    let none = !current && !known && !machine && profiles == 0;
    all || none
}

/// Reads the secret until its state is consistent or `deadline` passes.
pub async fn run(kube: &Kube, secret: &str, deadline: Instant) -> Settled {
    let mut reads: u32 = 0;
    loop {
        reads += 1;
        let read = tokio::time::timeout_at(deadline, kube.get_secret(secret)).await;
        let found = match read {
            Err(_) => return Settled::TimedOut,
            Ok(Err(e)) => return Settled::Unreadable(e.to_string()),
            Ok(Ok(None)) => return Settled::Consistent,
            Ok(Ok(Some(found))) => found,
        };
        let keys = found.data.iter().flat_map(|d| d.keys().map(String::as_str));
        if has_consistent_state(keys) {
            return Settled::Consistent;
        }
        if reads == 1 {
            tracing::info!("Waiting for tailscaled to finish writing state to Secret {secret:?}");
        }
        let pause = PAUSE.delay(reads);
        if Instant::now() + pause >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Settled::TimedOut;
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::has_consistent_state;

    #[test]
    fn consistency_as_todays_image_approximates_it() {
        let all = [
            "_current-profile",
            "_profiles",
            "_machinekey",
            "profile-1a2b",
        ];
        assert!(has_consistent_state(all));
        assert!(has_consistent_state(["authkey", "device_id"]));
        assert!(has_consistent_state([]));
        let with_extra = [
            "authkey",
            "_current-profile",
            "_profiles",
            "_machinekey",
            "profile-x",
        ];
        assert!(has_consistent_state(with_extra));
        // Half-written: some keys without the others.
        assert!(!has_consistent_state(["_machinekey"]));
        assert!(!has_consistent_state([
            "_machinekey",
            "_profiles",
            "profile-1"
        ]));
        assert!(!has_consistent_state(["profile-1"]));
        // Two profiles are not what a container writes.
        let two = [
            "_current-profile",
            "_profiles",
            "_machinekey",
            "profile-1",
            "profile-2",
        ];
        assert!(!has_consistent_state(two));
    }
}
