//! The standalone `fake-apiserver` binary: files it writes, config-file faults and secrets,
//! and a real client (ts-kubestate) talking to it across processes.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use tsboot_tests::fake_apiserver::{RecordedRequest, SERVICEACCOUNT_DIR};
use tsboot_tests::fake_tailscaled_ctl::require_bin;
use tsboot_tests::harness::temp_dir;
use tsboot_tests::harness::{wait_until, Proc, Spawn};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn standalone_server_mirrors_its_state_into_files() {
    let root = temp_dir("fab-root");
    let state = root.join("state");
    let config = root.join("fake.json");
    std::fs::write(
        &config,
        r#"{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key","_machinekey":"m"}}],
            "faults":[{"method":"GET","path":"/secrets/","action":{"status":500},"times":1}],
            "deny":[{"verb":"patch"}]}"#,
    )
    .expect("config");
    let mut server = Command::new(require_bin("fake-apiserver"))
        .arg("--root")
        .arg(&root)
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fake-apiserver");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let port = read(&state.join("port"));
    assert_eq!(line.trim(), format!("127.0.0.1:{port}"));
    let env_file = read(&state.join("env"));
    assert_eq!(
        env_file,
        format!("KUBERNETES_SERVICE_HOST=127.0.0.1\nKUBERNETES_SERVICE_PORT_HTTPS={port}\n")
    );
    let sa = root.join(SERVICEACCOUNT_DIR);
    assert_eq!(read(&sa.join("token")), "bearer_token");
    assert_eq!(read(&sa.join("namespace")), "default");
    assert_eq!(read(&sa.join("ca.crt")), read(&state.join("ca.crt")));
    assert!(read(&sa.join("ca.crt")).starts_with("-----BEGIN CERTIFICATE-----"));
    // Secrets are mirrored from the start.
    let data: serde_json::Value =
        serde_json::from_str(&read(&state.join("secret-default-tailscale.data.json")))
            .expect("json");
    assert_eq!(
        data,
        serde_json::json!({"_machinekey": "m", "authkey": "tskey-key"})
    );

    let mut env: Vec<(String, String)> = env_file
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("TS_TEST_ONLY_ROOT".into(), root.display().to_string()));
    let mut p = Proc::spawn(
        &require_bin("ts-kubestate"),
        &["preflight", "--result-fd", "4"],
        Spawn {
            env,
            result_fd: Some(4),
            ..Spawn::default()
        },
    );
    // patch is denied by the config: the key cannot be managed, the reference's fatal line.
    assert_eq!(p.wait_exit(), 1);
    assert!(
        p.log().contains(
            "authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions"
        ),
        "{}",
        p.log()
    );

    wait_until("five requests in requests.log", || {
        read(&state.join("requests.log")).lines().count() == 5
    });
    let log: Vec<RecordedRequest> = read(&state.join("requests.log"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("request line"))
        .collect();
    let verbs: Vec<Option<String>> = log.iter().map(RecordedRequest::ssar_verb).collect();
    assert_eq!(
        verbs,
        [
            Some("get".into()),
            Some("update".into()),
            Some("patch".into()),
            None,
            None
        ]
    );
    assert!(log
        .iter()
        .all(|r| r.authorization() == Some("Bearer bearer_token")));
    let statuses: Vec<Option<u16>> = log.iter().map(|r| r.status).collect();
    // The config's fault: the first GET answers 500, the retry gets the secret.
    assert_eq!(
        statuses,
        [Some(201), Some(201), Some(201), Some(500), Some(200)]
    );
    let object: serde_json::Value =
        serde_json::from_str(&read(&state.join("secret-default-tailscale.json"))).expect("json");
    assert_eq!(object["kind"], "Secret");
    assert_eq!(object["metadata"]["namespace"], "default");
    assert_eq!(object["type"], "Opaque");
    assert_eq!(object["data"]["authkey"], "dHNrZXkta2V5");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    assert_eq!(server.wait().expect("wait").code(), Some(0));
}
