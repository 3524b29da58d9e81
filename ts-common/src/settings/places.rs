//! Checks of values for the place they end up in: a unix socket path, a URL (the API server's
//! host and port, the secret's name in the URL path), a command-line flag tailscaled or
//! `tailscale up` would refuse. Each runs when the settings are read, so a value that cannot
//! work is refused (exit 2) before ts-init changes anything, rather than found by the phase
//! that uses it after earlier phases already ran.

use super::{KubeService, SettingsError};
use std::net::IpAddr;
use std::path::Path;

/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

use SettingsError as E;

/// `TS_SOCKET`: tailscaled binds it and every phase connects to it.
pub fn check_socket(socket: &Path) -> Result<(), SettingsError> {
    let text = socket.to_string_lossy();
    if text.is_empty() {
        return Err(E::invalid(
            "TS_SOCKET",
            &text,
            "empty: tailscaled needs a path for its LocalAPI socket (unset it for the default /tmp/tailscaled.sock)",
        ));
    }
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(E::invalid(
            "TS_SOCKET",
            &text,
            format!(
                "{len} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH} bytes: use a shorter path"
            ),
        ));
    }
    Ok(())
}

/// `TS_HOSTNAME`, as `tailscale up --hostname` checks it (a DNS name of letters, digits and
/// inner hyphens, labels of at most 63 bytes, 253 in all): refused here instead of failing
/// `up` after tailscaled started.
pub fn check_hostname(hostname: &str) -> Result<(), SettingsError> {
    if hostname.is_empty() {
        return Ok(());
    }
    let name = hostname.strip_prefix('.').unwrap_or(hostname);
    let name = name.strip_suffix('.').unwrap_or(name);
    let why = match name.len() {
        len @ 254.. => Some(format!("{len} bytes long; a DNS name has at most 253")),
        _ => name.split('.').find_map(label_problem),
    };
    why.map_or(Ok(()), |why| {
        let why = format!("not a valid hostname for tailscale up: {why}");
        Err(E::invalid("TS_HOSTNAME", hostname, why))
    })
}

fn label_problem(label: &str) -> Option<String> {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let bytes = label.as_bytes();
    match bytes {
        [] => Some("empty DNS label".into()),
        _ if bytes.len() > 63 => Some(format!("label {label:?} is longer than 63 bytes")),
        [first, ..] if !alnum(*first) => {
            Some(format!("label {label:?} must start with a letter or digit"))
        }
        [.., last] if !alnum(*last) => {
            Some(format!("label {label:?} must end with a letter or digit"))
        }
        _ => bytes
            .iter()
            .find(|b| !alnum(**b) && **b != b'-')
            .map(|b| format!("label {label:?} contains {:?}", char::from(*b))),
    }
}

/// `TS_SOCKS5_SERVER` / `TS_OUTBOUND_HTTP_PROXY_LISTEN`: tailscaled listens there (Go's
/// `host:port`, `[v6]:port`, `:port`; the port a number or a service name).
pub fn check_listen(var: &'static str, value: &str) -> Result<(), SettingsError> {
    if value.is_empty() {
        return Ok(());
    }
    let split = match value.strip_prefix('[') {
        Some(rest) => rest
            .split_once("]:")
            .filter(|(host, _)| host.parse::<std::net::Ipv6Addr>().is_ok()),
        None => value
            .rsplit_once(':')
            .filter(|(host, _)| !host.contains(':')),
    };
    let ok = split.is_some_and(|(host, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/')
            && port.parse::<u32>().map_or(true, |p| p <= 65535)
    });
    if ok {
        Ok(())
    } else {
        Err(E::invalid(
            var,
            value,
            "not a listen address: use host:port, e.g. localhost:1080, 0.0.0.0:1080 or [::1]:1080",
        ))
    }
}

/// In Kubernetes: the API server's host and port go into the URL of every call, the secret's
/// name into its path (`/api/v1/namespaces/NS/secrets/NAME`) and into tailscaled's
/// `--state=kube:NAME`.
pub fn check_kube(service: &KubeService, secret: &str) -> Result<(), SettingsError> {
    let host = service.host.as_str();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = bare.parse::<IpAddr>().is_ok()
        || (bare.len() <= 253 && bare.split('.').all(|l| label_problem(l).is_none()));
    if !host_ok {
        return Err(E::invalid(
            "KUBERNETES_SERVICE_HOST",
            host,
            "not an IP address or DNS name (Kubernetes sets it to the API server's service address)",
        ));
    }
    if secret.is_empty() {
        // No secret, no calls: the port is never used.
        return Ok(());
    }
    if let Some(port) = service.port.as_deref().filter(|p| !p.is_empty()) {
        check_port(port)?;
    }
    if !is_dns_subdomain(secret) {
        return Err(E::invalid(
            "TS_KUBE_SECRET",
            secret,
            "not a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending \
             with a letter or digit, at most 253 characters (a DNS-1123 subdomain); set it to \
             \"\" to store no state in Kubernetes",
        ));
    }
    Ok(())
}

/// `KUBERNETES_SERVICE_PORT_HTTPS`: it goes into the URL of every call.
pub fn check_port(port: &str) -> Result<(), SettingsError> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(E::invalid(
            "KUBERNETES_SERVICE_PORT_HTTPS",
            port,
            "not a TCP port number",
        )),
    }
}

/// Kubernetes' object-name rule (DNS-1123 subdomain).
pub fn is_dns_subdomain(name: &str) -> bool {
    let lower_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && lower_alnum(b[0])
                && lower_alnum(b[b.len() - 1])
                && b.iter().all(|c| lower_alnum(*c) || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths() {
        assert!(check_socket(Path::new("/tmp/tailscaled.sock")).is_ok());
        assert!(check_socket(Path::new(&format!("/{}", "a".repeat(106)))).is_ok());
        let long = format!("/{}", "a".repeat(107));
        let err = check_socket(Path::new(&long)).unwrap_err().to_string();
        assert!(
            err.contains("TS_SOCKET") && err.contains("108 bytes long"),
            "{err}"
        );
        let err = check_socket(Path::new("")).unwrap_err().to_string();
        assert!(err.contains("TS_SOCKET=\"\": empty"), "{err}");
    }

    #[test]
    fn hostnames_as_tailscale_up_checks_them() {
        for ok in [
            "",
            "box",
            "web-1",
            "Web1.example.com",
            "a.",
            "x".repeat(63).as_str(),
        ] {
            assert!(check_hostname(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "my host",
            "-web",
            "web-",
            "a..b",
            "under_score",
            &"x".repeat(64),
        ] {
            let err = check_hostname(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("TS_HOSTNAME={bad:?}")), "{err}");
        }
    }

    #[test]
    fn listen_addresses() {
        for ok in [
            "localhost:1080",
            ":1080",
            "0.0.0.0:1080",
            "[::1]:1080",
            "[::]:http",
        ] {
            assert!(check_listen("TS_SOCKS5_SERVER", ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "localhost",
            "[::1]8080",
            "::1:80",
            "host:",
            "a b:1",
            "h:70000",
        ] {
            assert!(check_listen("TS_SOCKS5_SERVER", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kube_values() {
        let svc = |host: &str, port: Option<&str>| KubeService {
            host: host.into(),
            port: port.map(str::to_string),
        };
        assert!(check_kube(&svc("10.0.0.1", Some("443")), "tailscale").is_ok());
        assert!(check_kube(&svc("fd00::1", Some("6443")), "ts-state.v1").is_ok());
        assert!(check_kube(&svc("kubernetes.default.svc", None), "a").is_ok());
        // No secret: no calls, the port does not matter.
        assert!(check_kube(&svc("10.0.0.1", Some("https")), "").is_ok());
        let err = check_kube(&svc("10.0.0.1", Some("https")), "tailscale").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("KUBERNETES_SERVICE_PORT_HTTPS=\"https\""));
        let err = check_kube(&svc("kube api/x", Some("443")), "tailscale").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("KUBERNETES_SERVICE_HOST=\"kube api/x\""));
        for bad in [
            "Tailscale",
            "a/b",
            "-a",
            "a-",
            "a..b",
            "a_b",
            &"a".repeat(254),
        ] {
            let err = check_kube(&svc("10.0.0.1", Some("443")), bad).unwrap_err();
            assert!(
                err.to_string().starts_with("TS_KUBE_SECRET="),
                "{bad}: {err}"
            );
        }
    }
}
