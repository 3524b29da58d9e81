//! `fake-apiserver`: the fake kube-apiserver of `tsboot_tests::fake_apiserver` as a process,
//! for end-to-end tests that run ts-init (and so ts-kubestate) as child processes.
//!
//! ```text
//! fake-apiserver --root <DIR> --state-dir <DIR> [--config <FILE.json>] [--token <TOKEN>]
//! ```
//! * `--root`: a test root; the service account is written under it
//!   (`var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`).
//! * `--state-dir`: where the state is mirrored after every request:
//!   `requests.log` (one JSON `RecordedRequest` per line: method, path, headers, body, status),
//!   `secret-<ns>-<name>.json` (the Secret as a GET returns it),
//!   `secret-<ns>-<name>.data.json` (its data decoded: `{"key":"plain text"}`).
//!   At start it also writes `ca.crt`, `env` (`KUBERNETES_SERVICE_HOST=127.0.0.1` and
//!   `KUBERNETES_SERVICE_PORT_HTTPS=<port>` lines) and, last, `port` (the port number), so a
//!   test waits for `port` and then everything is in place.
//! * `--config`: a JSON `FakeConfig` (namespace, tokens, deny, secrets, faults; every field
//!   optional), e.g.
//!   `{"secrets":[{"name":"tailscale","data":{"authkey":"tskey-key"}}],
//!     "deny":[{"verb":"patch"}],
//!     "faults":[{"method":"PATCH","path":"/secrets/","action":{"status":500},"times":2}]}`.
//! * `--token`: the token written to the service account (default: the first accepted one).
//!
//! Prints `127.0.0.1:<port>` on stdout once listening. Runs until SIGTERM/SIGINT (exit 0).
//! Exit 2 on bad arguments or config.

use std::path::PathBuf;
use tsboot_tests::fake_apiserver::{write_atomic, FakeApiServer, FakeConfig};

struct Args {
    root: PathBuf,
    state_dir: PathBuf,
    config: Option<PathBuf>,
    token: Option<String>,
}

fn usage(msg: &str) -> ! {
    eprintln!("fake-apiserver: {msg}");
    eprintln!(
        "usage: fake-apiserver --root <DIR> --state-dir <DIR> [--config <FILE.json>] [--token <TOKEN>]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut root = None;
    let mut state_dir = None;
    let mut config = None;
    let mut token = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--root" => root = Some(PathBuf::from(value())),
            "--state-dir" => state_dir = Some(PathBuf::from(value())),
            "--config" => config = Some(PathBuf::from(value())),
            "--token" => token = Some(value()),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    Args {
        root: root.unwrap_or_else(|| usage("--root is required")),
        state_dir: state_dir.unwrap_or_else(|| usage("--state-dir is required")),
        config,
        token,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let mut config: FakeConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| usage(&format!("reading {}: {e}", path.display())));
            serde_json::from_str(&text)
                .unwrap_or_else(|e| usage(&format!("config {}: {e}", path.display())))
        }
        None => FakeConfig::default(),
    };
    config.state_dir = Some(args.state_dir.clone());
    let token = args
        .token
        .clone()
        .or_else(|| config.tokens.first().cloned())
        .unwrap_or_else(|| usage("no token: give --token or accepted tokens in the config"));
    let server = match FakeApiServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-apiserver: starting: {e}");
            std::process::exit(1);
        }
    };
    let setup = || -> std::io::Result<()> {
        server.write_serviceaccount(&args.root, &token)?;
        write_atomic(&args.state_dir.join("ca.crt"), server.ca_pem().as_bytes())?;
        let env = format!(
            "KUBERNETES_SERVICE_HOST={}\nKUBERNETES_SERVICE_PORT_HTTPS={}\n",
            server.host(),
            server.port()
        );
        write_atomic(&args.state_dir.join("env"), env.as_bytes())?;
        write_atomic(
            &args.state_dir.join("port"),
            server.port().to_string().as_bytes(),
        )
    };
    if let Err(e) = setup() {
        eprintln!("fake-apiserver: writing files: {e}");
        std::process::exit(1);
    }
    println!("{}:{}", server.host(), server.port());

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-apiserver: installing SIGTERM handler: {e}");
            std::process::exit(1);
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(server);
}
