//! `ts-kubestate watch` (the real binary) between a standalone fake tailscaled and the
//! in-process fake kube-apiserver, with the secret `default/tailscale` seeded: what the watcher
//! tests (`kubestate_watch`, `bus_hardening`) share.

use crate::fake_apiserver::{FakeApiServer, FakeConfig, DEFAULT_TOKEN};
use crate::fake_tailscaled_ctl::{fixture, require_bin, FakeTailscaled};
use crate::harness::{temp_dir, wait_until, Proc, Spawn};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const NS: &str = "default";
pub const SECRET: &str = "tailscale";

pub struct KubeWatch {
    pub api: FakeApiServer,
    pub root: PathBuf,
    pub tsd: FakeTailscaled,
}

impl KubeWatch {
    /// The fakes, the fake tailscaled in the state of the fixture `initial`, the secret holding
    /// an auth key and a machine key.
    pub async fn new(tag: &str, initial: &str) -> KubeWatch {
        let api = FakeApiServer::start(FakeConfig::default())
            .await
            .expect("fake apiserver");
        api.set_secret(
            NS,
            SECRET,
            &[("authkey", "tskey-key"), ("_machinekey", "m")],
        );
        let root = temp_dir(tag);
        api.write_serviceaccount(&root, DEFAULT_TOKEN).expect("sa");
        let tsd = FakeTailscaled::start(tag, Some(&fixture(initial)), &[]);
        KubeWatch { api, root, tsd }
    }

    /// `ts-kubestate watch <args>` with the fakes' environment plus `extra`.
    pub fn watch(&self, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        let mut env = self.api.kube_env();
        env.push(("TS_TEST_ONLY_ROOT".into(), self.root.display().to_string()));
        env.push(("TS_SOCKET".into(), self.tsd.socket.display().to_string()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        Proc::spawn(
            &require_bin("ts-kubestate"),
            &all,
            Spawn {
                env,
                ready: true,
                ..Spawn::default()
            },
        )
    }

    pub fn data(&self) -> BTreeMap<String, String> {
        self.api.secret(NS, SECRET).unwrap_or_default()
    }

    pub fn keys(&self) -> Vec<String> {
        self.data().into_keys().collect()
    }

    /// The bodies of the secret PATCHes so far.
    pub fn patches(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.is_secret_patch())
            .map(|r| r.body)
            .collect()
    }

    /// Whether the secret's `device_id` is `id` now.
    pub fn device_is(&self, id: &str) -> bool {
        self.data().get("device_id").map(String::as_str) == Some(id)
    }

    pub fn wait_device(&self, id: &str, fqdn: &str) {
        wait_until(&format!("device_id={id} in the secret"), || {
            self.device_is(id) && self.data().get("device_fqdn").map(String::as_str) == Some(fqdn)
        });
    }
}
