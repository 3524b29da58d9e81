//! Every command line tsboot runs, built in exactly one place each (the README's boot order).
//!
//! The builders return the arguments without the program name; the program is found through
//! `PATH` as the reference does. [`Command::display_redacted`] is what logs and `--explain` show.

use crate::settings::{classify_words, AuthKey, Secret, Settings, Word, REDACTED};
use std::fmt;

/// A program and its arguments, with every credential kept apart so it can be redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    args: Vec<Word>,
}

impl Command {
    /// A command line without secrets; the builders below and the firewall drivers of
    /// ts-proxy-rules (one builder per rule shape) use it.
    pub fn new(program: &str) -> Self {
        Command {
            program: program.to_string(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(Word::Plain(a.into()));
        self
    }

    pub fn args(mut self, a: &[String]) -> Self {
        self.args.extend(a.iter().cloned().map(Word::Plain));
        self
    }

    /// `prefix<value>` when there is a value; nothing otherwise.
    fn secret(mut self, prefix: &str, value: Option<&Secret>) -> Self {
        if let Some(value) = value {
            self.args.push(Word::Secret {
                prefix: prefix.to_string(),
                value: value.clone(),
            });
        }
        self
    }

    /// `flag=value` unless `value` is empty.
    fn arg_if(self, flag: &str, value: &str) -> Self {
        if value.is_empty() {
            self
        } else {
            self.arg(format!("{flag}={value}"))
        }
    }

    /// `TS_EXTRA_ARGS` words, a credential among them kept apart like the auth key.
    fn user_words(mut self, words: &[String]) -> Self {
        self.args.extend(classify_words(words));
        self
    }

    /// The arguments as they are passed to the program (credentials included).
    pub fn argv(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| match a {
                Word::Plain(s) => s.clone(),
                Word::Secret { prefix, value } => format!("{prefix}{}", value.expose()),
            })
            .collect()
    }

    /// Program and arguments joined with spaces, every credential replaced by `<redacted>`.
    pub fn display_redacted(&self) -> String {
        let mut out = self.program.clone();
        for a in &self.args {
            out.push(' ');
            match a {
                Word::Plain(s) => out.push_str(s),
                Word::Secret { prefix, .. } => {
                    out.push_str(prefix);
                    out.push_str(REDACTED);
                }
            }
        }
        out
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_redacted())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_redacted())
    }
}

/// Where tailscaled keeps its state when it is not the Kubernetes secret nor `TS_STATE_DIR`.
const DEFAULT_STATEDIR: &str = "/tmp";

/// `tailscaled` (the README's boot order; `--statedir` with the kube store and `--debug` as today's image).
pub fn tailscaled(s: &Settings) -> Command {
    let mut cmd = Command::new("tailscaled").arg(format!("--socket={}", s.socket.display()));
    let statedir = if s.state_dir.is_empty() {
        DEFAULT_STATEDIR
    } else {
        s.state_dir.as_str()
    };
    if s.kube_state_enabled() {
        cmd = cmd.arg(format!("--state=kube:{}", s.kube_secret));
    } else if s.state_dir.is_empty() {
        cmd = cmd.arg("--state=mem:");
    }
    cmd = cmd.arg(format!("--statedir={statedir}"));
    if s.userspace {
        cmd = cmd.arg("--tun=userspace-networking");
    }
    cmd = cmd.arg_if("--socks5-server", &s.socks5_server).arg_if(
        "--outbound-http-proxy-listen",
        &s.outbound_http_proxy_listen,
    );
    // As today's image: an operator that already put the address in the extra args (older
    // operators did) does not get a second --debug.
    let extra = s.tailscaled_extra_args.join(" ");
    if !s.debug_addr_port.is_empty() && !extra.contains(&s.debug_addr_port) {
        cmd = cmd.arg(format!("--debug={}", s.debug_addr_port));
    }
    cmd.args(&s.tailscaled_extra_args)
}

/// `tailscale up` (the README's boot order, in today's image's order). `auth_key` is the resolved key (from
/// the environment or the Kubernetes secret); `None` means OAuth, or interactive login if needed.
///
/// `--reset` comes before the user's words: the environment describes the whole node, so a
/// preference an earlier boot (or a hand-run `tailscale set`) left behind is reset instead of
/// failing `up`'s check that every non-default preference is mentioned. A `--reset[=BOOL]` in
/// `TS_EXTRA_ARGS` replaces it (`up` refuses a flag given twice): `--reset=false` turns the
/// policy off. README: "Restarts and preferences".
pub fn tailscale_up(s: &Settings, auth_key: Option<&AuthKey>) -> Command {
    let cmd = Command::new("tailscale")
        .arg(format!("--socket={}", s.socket.display()))
        .arg("up")
        .arg(format!("--accept-dns={}", s.accept_dns))
        .secret("--authkey=", auth_key)
        .arg_if("--client-id", &s.client_id)
        .secret("--client-secret=", s.client_secret.as_ref())
        .secret("--id-token=", s.id_token.as_ref())
        .arg_if("--audience", &s.audience);
    let cmd = owned_prefs(cmd, s);
    let cmd = if s.extra_args.mentions("reset") {
        cmd
    } else {
        cmd.arg("--reset")
    };
    cmd.user_words(&s.extra_args)
}

/// `tailscale set` with the preferences the environment owns (D19), run once Running with
/// `TS_AUTH_ONCE=true`.
pub fn tailscale_set(s: &Settings) -> Command {
    let cmd = Command::new("tailscale")
        .arg(format!("--socket={}", s.socket.display()))
        .arg("set")
        .arg(format!("--accept-dns={}", s.accept_dns));
    owned_prefs(cmd, s)
}

/// `--advertise-routes` (whenever `TS_ROUTES` is set, even empty: D18) and `--hostname`.
fn owned_prefs(cmd: Command, s: &Settings) -> Command {
    let cmd = match &s.routes {
        Some(routes) => cmd.arg(format!("--advertise-routes={routes}")),
        None => cmd,
    };
    cmd.arg_if("--hostname", &s.hostname)
}

/// What an iptables command should do with the DNAT rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOp {
    /// `-I PREROUTING 1 …`: the reference's insert.
    Insert,
    /// `-D PREROUTING …`.
    Delete,
}

/// The reference's DNAT rule from `local` (a tailnet IP) to `dest` (`TS_DEST_IP` verbatim).
pub fn dnat_rule(op: RuleOp, program: &str, local: &str, dest: &str) -> Command {
    let mut cmd = Command::new(program).arg("-t").arg("nat");
    cmd = match op {
        RuleOp::Insert => cmd.arg("-I").arg("PREROUTING").arg("1"),
        RuleOp::Delete => cmd.arg("-D").arg("PREROUTING"),
    };
    cmd.arg("-d")
        .arg(local)
        .arg("-j")
        .arg("DNAT")
        .arg("--to-destination")
        .arg(dest)
}

/// `iptables -t nat -S PREROUTING`: the rules as iptables-save lines.
pub fn list_prerouting(program: &str) -> Command {
    Command::new(program)
        .arg("-t")
        .arg("nat")
        .arg("-S")
        .arg("PREROUTING")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("valid settings")
    }

    #[test]
    fn no_args_matches_reference() {
        let s = settings(&[]);
        assert_eq!(
            tailscaled(&s).argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "--state=mem:",
                "--statedir=/tmp",
                "--tun=userspace-networking"
            ]
        );
        assert_eq!(
            tailscale_up(&s, None).argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "up",
                "--accept-dns=false",
                "--reset"
            ]
        );
        assert_eq!(
            tailscale_set(&s).argv(),
            ["--socket=/tmp/tailscaled.sock", "set", "--accept-dns=false"]
        );
    }

    #[test]
    fn auth_key_is_redacted_in_display_only() {
        let s = settings(&[("TS_AUTHKEY", "tskey-secret"), ("TS_ROUTES", "1.2.3.0/24")]);
        let cmd = tailscale_up(&s, s.auth_key.as_ref());
        assert_eq!(
            cmd.argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "up",
                "--accept-dns=false",
                "--authkey=tskey-secret",
                "--advertise-routes=1.2.3.0/24",
                "--reset"
            ]
        );
        let shown = cmd.display_redacted();
        assert!(!shown.contains("tskey-secret"), "{shown}");
        assert!(shown.contains("--authkey=<redacted>"), "{shown}");
        assert!(!format!("{cmd:?}").contains("tskey-secret"));
    }

    #[test]
    fn kube_state_and_extras() {
        let s = settings(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("TS_STATE_DIR", "/var/lib/ts"),
            ("TS_SOCKS5_SERVER", "localhost:1080"),
            ("TS_OUTBOUND_HTTP_PROXY_LISTEN", "localhost:8080"),
            ("TS_TAILSCALED_EXTRA_ARGS", " --a   --b\t--c "),
            ("TS_EXTRA_ARGS", "--widget=rotated"),
            ("TS_ACCEPT_DNS", "true"),
        ]);
        assert_eq!(
            tailscaled(&s).argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "--state=kube:tailscale",
                "--statedir=/var/lib/ts",
                "--tun=userspace-networking",
                "--socks5-server=localhost:1080",
                "--outbound-http-proxy-listen=localhost:8080",
                "--a",
                "--b",
                "--c"
            ]
        );
        assert_eq!(
            tailscale_up(&s, None).argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "up",
                "--accept-dns=true",
                "--reset",
                "--widget=rotated"
            ]
        );
    }

    #[test]
    fn kube_state_default_statedir() {
        let s = settings(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("TS_KUBE_SECRET", "ts-state"),
        ]);
        assert_eq!(
            tailscaled(&s).argv()[1..3],
            ["--state=kube:ts-state", "--statedir=/tmp"]
        );
    }

    #[test]
    fn up_in_todays_order() {
        let s = settings(&[
            ("TS_CLIENT_ID", "cid"),
            ("TS_CLIENT_SECRET", "file:/run/secret"),
            ("TS_ROUTES", "10.0.0.0/8,fd00::/64"),
            ("TS_HOSTNAME", "box"),
            ("TS_ACCEPT_DNS", "true"),
            (
                "TS_EXTRA_ARGS",
                "--advertise-tags=tag:ci --accept-dns=false --ssh",
            ),
        ]);
        assert_eq!(
            tailscale_up(&s, None).display_redacted(),
            "tailscale --socket=/tmp/tailscaled.sock up --accept-dns=false --client-id=cid \
             --client-secret=<redacted> --advertise-routes=10.0.0.0/8,fd00::/64 --hostname=box \
             --reset --advertise-tags=tag:ci --ssh"
        );
        assert!(tailscale_up(&s, None)
            .argv()
            .contains(&"--client-secret=file:/run/secret".to_string()));
        let s = settings(&[
            ("TS_CLIENT_ID", "cid"),
            ("TS_ID_TOKEN", "eyJtoken"),
            ("TS_ROUTES", ""),
        ]);
        assert_eq!(
            tailscale_up(&s, None).argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "up",
                "--accept-dns=false",
                "--client-id=cid",
                "--id-token=eyJtoken",
                "--advertise-routes=",
                "--reset"
            ]
        );
        assert!(!tailscale_up(&s, None).to_string().contains("eyJtoken"));
        let s = settings(&[("TS_CLIENT_ID", "cid"), ("TS_AUDIENCE", "aud")]);
        assert_eq!(
            tailscale_up(&s, None).argv()[3..5],
            ["--client-id=cid", "--audience=aud"]
        );
    }

    #[test]
    fn reset_of_the_user_replaces_tsboots() {
        for words in ["--reset=false", "-reset", "--reset", "--ssh -reset=true"] {
            let s = settings(&[("TS_EXTRA_ARGS", words)]);
            let argv = tailscale_up(&s, None).argv();
            let resets = argv.iter().filter(|w| w.contains("reset")).count();
            assert_eq!(resets, 1, "{words}: {argv:?}");
            assert!(!argv.contains(&"--reset".to_string()) || words.contains("--reset"));
        }
        // Words that merely contain the name do not count.
        let s = settings(&[("TS_EXTRA_ARGS", "--resetx --hostname=reset")]);
        assert!(tailscale_up(&s, None)
            .argv()
            .contains(&"--reset".to_string()));
    }

    #[test]
    fn set_names_only_the_owned_prefs() {
        let s = settings(&[
            ("TS_AUTHKEY", "tskey-secret"),
            ("TS_ROUTES", ""),
            ("TS_HOSTNAME", "box"),
            ("TS_EXTRA_ARGS", "--accept-dns --ssh"),
        ]);
        assert_eq!(
            tailscale_set(&s).argv(),
            [
                "--socket=/tmp/tailscaled.sock",
                "set",
                "--accept-dns=true",
                "--advertise-routes=",
                "--hostname=box"
            ]
        );
    }

    #[test]
    fn credentials_in_extra_args_are_redacted() {
        let s = settings(&[(
            "TS_EXTRA_ARGS",
            "--authkey=tskey-a -auth-key=tskey-b --client-secret=tskey-client-c --id-token eyJd --ssh",
        )]);
        let cmd = tailscale_up(&s, None);
        assert_eq!(
            cmd.argv()[4..],
            [
                "--authkey=tskey-a",
                "-auth-key=tskey-b",
                "--client-secret=tskey-client-c",
                "--id-token",
                "eyJd",
                "--ssh"
            ]
        );
        let shown = format!("{cmd} {cmd:?} {s:?}");
        for secret in ["tskey-a", "tskey-b", "tskey-client-c", "eyJd"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("--id-token <redacted> --ssh"), "{shown}");
        assert!(shown.contains("-auth-key=<redacted>"), "{shown}");
    }

    #[test]
    fn debug_addr_port() {
        let s = settings(&[
            ("TS_DEBUG_ADDR_PORT", "[::]:9001"),
            ("TS_TAILSCALED_EXTRA_ARGS", "--verbose=1"),
        ]);
        assert_eq!(
            tailscaled(&s).argv()[4..],
            ["--debug=[::]:9001", "--verbose=1"]
        );
        // Already in the extra args (older operators put it there): not added twice.
        let s = settings(&[
            ("TS_DEBUG_ADDR_PORT", "0.0.0.0:9001"),
            ("TS_TAILSCALED_EXTRA_ARGS", "--debug=0.0.0.0:9001"),
        ]);
        assert_eq!(tailscaled(&s).argv()[4..], ["--debug=0.0.0.0:9001"]);
    }

    #[test]
    fn disk_state_and_kernel_mode() {
        let s = settings(&[("TS_STATE_DIR", "/state"), ("TS_USERSPACE", "false")]);
        assert_eq!(
            tailscaled(&s).argv(),
            ["--socket=/tmp/tailscaled.sock", "--statedir=/state"]
        );
    }

    #[test]
    fn dnat_rules() {
        assert_eq!(
            dnat_rule(RuleOp::Insert, "iptables", "100.64.0.1", "1.2.3.4").argv(),
            [
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "-d",
                "100.64.0.1",
                "-j",
                "DNAT",
                "--to-destination",
                "1.2.3.4"
            ]
        );
        assert_eq!(
            dnat_rule(RuleOp::Delete, "ip6tables", "fd7a::1", "fd00::5").display_redacted(),
            "ip6tables -t nat -D PREROUTING -d fd7a::1 -j DNAT --to-destination fd00::5"
        );
    }
}
