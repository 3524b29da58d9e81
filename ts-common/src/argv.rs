//! Every command line tsboot runs, built in exactly one place each (contract §2, §3, §11).
//!
//! The builders return the arguments without the program name; the program is found through
//! `PATH` as the reference does. [`Command::display_redacted`] is what logs and `--explain` show.

use crate::settings::{AuthKey, Settings, REDACTED};
use std::fmt;

/// A program and its arguments, with the auth key (if any) kept apart so it can be redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    args: Vec<Arg>,
}

#[derive(Clone, PartialEq, Eq)]
enum Arg {
    Plain(String),
    /// `--authkey=<key>`: shown as `--authkey=<redacted>`.
    AuthKey(AuthKey),
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
        self.args.push(Arg::Plain(a.into()));
        self
    }

    pub fn args(mut self, a: &[String]) -> Self {
        self.args.extend(a.iter().cloned().map(Arg::Plain));
        self
    }

    /// The arguments as they are passed to the program (auth key included).
    pub fn argv(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| match a {
                Arg::Plain(s) => s.clone(),
                Arg::AuthKey(k) => format!("--authkey={}", k.expose()),
            })
            .collect()
    }

    /// Program and arguments joined with spaces, the auth key replaced by `<redacted>`.
    pub fn display_redacted(&self) -> String {
        let mut out = self.program.clone();
        for a in &self.args {
            out.push(' ');
            match a {
                Arg::Plain(s) => out.push_str(s),
                Arg::AuthKey(_) => {
                    out.push_str("--authkey=");
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

/// `tailscaled` (contract §2).
pub fn tailscaled(s: &Settings) -> Command {
    let mut cmd = Command::new("tailscaled").arg(format!("--socket={}", s.socket.display()));
    if s.kube_state_enabled() {
        cmd = cmd
            .arg(format!("--state=kube:{}", s.kube_secret))
            .arg("--statedir=/tmp");
    } else if !s.state_dir.is_empty() {
        cmd = cmd.arg(format!("--statedir={}", s.state_dir));
    } else {
        cmd = cmd.arg("--state=mem:").arg("--statedir=/tmp");
    }
    if s.userspace {
        cmd = cmd.arg("--tun=userspace-networking");
    }
    if !s.socks5_server.is_empty() {
        cmd = cmd.arg(format!("--socks5-server={}", s.socks5_server));
    }
    if !s.outbound_http_proxy_listen.is_empty() {
        cmd = cmd.arg(format!(
            "--outbound-http-proxy-listen={}",
            s.outbound_http_proxy_listen
        ));
    }
    cmd.args(&s.tailscaled_extra_args)
}

/// `tailscale up` (contract §3). `auth_key` is the resolved key (from the environment or the
/// Kubernetes secret); `None` means interactive login if needed.
pub fn tailscale_up(s: &Settings, auth_key: Option<&AuthKey>) -> Command {
    let mut cmd = Command::new("tailscale")
        .arg(format!("--socket={}", s.socket.display()))
        .arg("up")
        .arg(format!("--accept-dns={}", s.accept_dns));
    if let Some(key) = auth_key {
        cmd.args.push(Arg::AuthKey(key.clone()));
    }
    if !s.routes.is_empty() {
        cmd = cmd.arg(format!("--advertise-routes={}", s.routes));
    }
    cmd.args(&s.extra_args)
}

/// What an iptables command should do with the DNAT rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOp {
    /// `-C PREROUTING …`: exit 0 when the rule exists.
    Check,
    /// `-I PREROUTING 1 …`: the reference's insert.
    Insert,
    /// `-D PREROUTING …`.
    Delete,
}

/// `iptables` / `ip6tables` by the destination's family (contract §11).
pub fn dnat_program(dest: &std::net::IpAddr) -> &'static str {
    if dest.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// The reference's DNAT rule from `local` (a tailnet IP) to `dest` (`TS_DEST_IP` verbatim).
pub fn dnat_rule(op: RuleOp, program: &str, local: &str, dest: &str) -> Command {
    let mut cmd = Command::new(program).arg("-t").arg("nat");
    cmd = match op {
        RuleOp::Check => cmd.arg("-C").arg("PREROUTING"),
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
            ["--socket=/tmp/tailscaled.sock", "up", "--accept-dns=false"]
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
                "--advertise-routes=1.2.3.0/24"
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
            ("TS_STATE_DIR", "/ignored"),
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
                "--statedir=/tmp",
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
                "--widget=rotated"
            ]
        );
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
        assert_eq!(
            dnat_program(&"::ffff:1.2.3.4".parse().unwrap()),
            "ip6tables"
        );
    }
}
