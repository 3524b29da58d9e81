//! The LocalAPI calls ts-serve makes, each with the semantics of tailscaled's handler.
//!
//! * `GET /localapi/v0/serve-config`: the current config (`null` when none) and an `Etag`
//!   header, a checksum of it.
//! * `POST /localapi/v0/serve-config` with the config as JSON and, optionally, `If-Match:
//!   <etag>`: tailscaled refuses with 412 when the config changed since that GET (someone else
//!   wrote it in between), and with 500 and `{"error":…}` when it refuses the config itself
//!   (a port changing its kind of listener, a service mixing TUN mode with handlers, no netmap).
//! * `GET /localapi/v0/prefs` and `PATCH /localapi/v0/prefs` with a masked prefs object
//!   (`{"AdvertiseServicesSet":true,"AdvertiseServices":[…]}`): the advertised services.
//! * `GET /localapi/v0/dns-config`: `tailcfg.DNSConfig`, for the certificate domains on a
//!   daemon that no longer sends netmaps on the bus.

use crate::serve_config::{conflict, ServeConfig};
use http::Method;
use serde::Deserialize;
use ts_localapi::localapi::{LocalApi, LocalApiError, Reply};
use ts_localapi::notify::DnsConfig;

pub const SERVE_CONFIG_PATH: &str = "/localapi/v0/serve-config";
pub const PREFS_PATH: &str = "/localapi/v0/prefs";
pub const DNS_CONFIG_PATH: &str = "/localapi/v0/dns-config";

/// How much of a daemon's error body goes into a log line.
const ERROR_EXCERPT: usize = 300;
/// Attempts of read-compare-write when tailscaled reports a concurrent change (412).
const MAX_ATTEMPTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Transport(#[from] LocalApiError),
    #[error("tailscaled answered {method} {path} with {code}: {body}")]
    Refused {
        method: &'static str,
        path: &'static str,
        code: u16,
        body: String,
    },
    #[error("tailscaled's answer to {method} {path} is not what its LocalAPI returns: {why}")]
    Unreadable {
        method: &'static str,
        path: &'static str,
        why: String,
    },
    #[error("the serve config in tailscaled kept changing under us ({MAX_ATTEMPTS} attempts ended in 412 Precondition Failed); is something else (tailscale serve?) writing it?")]
    KeptChanging,
}

fn refused(method: &'static str, path: &'static str, reply: &Reply) -> DaemonError {
    // tailscaled's JSON errors are `{"error":"…"}`; plain ones are text.
    #[derive(Deserialize)]
    struct JsonError {
        error: String,
    }
    let body = match serde_json::from_slice::<JsonError>(&reply.body) {
        Ok(e) => ts_common::logging::outside_max(&e.error, ERROR_EXCERPT),
        Err(_) => reply.body_excerpt(ERROR_EXCERPT),
    };
    DaemonError::Refused {
        method,
        path,
        code: reply.status,
        body,
    }
}

/// A successful reply's body as `parse` reads it; a failed one as [`DaemonError::Refused`].
fn decode<'a, T, E: std::fmt::Display>(
    method: &'static str,
    path: &'static str,
    reply: &'a Reply,
    parse: impl FnOnce(&'a [u8]) -> Result<T, E>,
) -> Result<T, DaemonError> {
    if !reply.is_success() {
        return Err(refused(method, path, reply));
    }
    parse(&reply.body).map_err(|e| DaemonError::Unreadable {
        method,
        path,
        why: e.to_string(),
    })
}

/// The outcome of [`Daemon::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The config was posted.
    Posted,
    /// tailscaled already had exactly this config; nothing was posted.
    AlreadyThere,
}

#[derive(Clone, Debug)]
pub struct Daemon {
    api: LocalApi,
}

impl Daemon {
    pub fn new(api: LocalApi) -> Self {
        Daemon { api }
    }

    /// The current serve config and its ETag.
    pub async fn serve_config(&self) -> Result<(ServeConfig, Option<String>), DaemonError> {
        let reply = self
            .api
            .call(Method::GET, SERVE_CONFIG_PATH, None, None)
            .await?;
        let config = decode("GET", SERVE_CONFIG_PATH, &reply, ServeConfig::parse)?;
        Ok((config, reply.etag))
    }

    /// Posts `config`; `Ok(false)` when tailscaled answered 412 (the ETag no longer matches).
    pub async fn post_serve_config(
        &self,
        config: &ServeConfig,
        etag: Option<&str>,
    ) -> Result<bool, DaemonError> {
        let reply = self
            .api
            .call(
                Method::POST,
                SERVE_CONFIG_PATH,
                etag,
                Some(config.to_json()),
            )
            .await?;
        match reply.status {
            200..=299 => Ok(true),
            412 => Ok(false),
            _ => Err(refused("POST", SERVE_CONFIG_PATH, &reply)),
        }
    }

    /// Makes tailscaled's serve config `desired`: read it with its ETag, post only if it
    /// differs, with `If-Match` so a concurrent writer is noticed; on 412 read again.
    pub async fn apply(&self, desired: &ServeConfig) -> Result<Applied, DaemonError> {
        for _ in 0..MAX_ATTEMPTS {
            let (current, etag) = self.serve_config().await?;
            if current == *desired {
                return Ok(Applied::AlreadyThere);
            }
            if let Some(why) = conflict(&current, desired) {
                tracing::info!("serve proxy: {why}, which tailscaled accepts only from an empty config; unsetting it first");
                self.post_serve_config(&ServeConfig::default(), etag.as_deref())
                    .await?;
                continue;
            }
            if self.post_serve_config(desired, etag.as_deref()).await? {
                return Ok(Applied::Posted);
            }
            tracing::info!("serve proxy: the serve config changed in tailscaled meanwhile (412); reading it again");
        }
        Err(DaemonError::KeptChanging)
    }

    /// The services this node advertises (`Prefs.AdvertiseServices`).
    pub async fn advertised_services(&self) -> Result<Vec<String>, DaemonError> {
        #[derive(Deserialize)]
        struct Prefs {
            #[serde(rename = "AdvertiseServices", default)]
            advertise_services: Option<Vec<String>>,
        }
        let reply = self.api.call(Method::GET, PREFS_PATH, None, None).await?;
        let prefs: Prefs = decode("GET", PREFS_PATH, &reply, serde_json::from_slice)?;
        Ok(prefs.advertise_services.unwrap_or_default())
    }

    /// Sets `Prefs.AdvertiseServices` to exactly `services` (none: `null`, as the reference).
    pub async fn set_advertised_services(&self, services: &[String]) -> Result<(), DaemonError> {
        let body = serde_json::json!({
            "AdvertiseServicesSet": true,
            "AdvertiseServices": (!services.is_empty()).then_some(services),
        });
        let reply = self
            .api
            .call(
                Method::PATCH,
                PREFS_PATH,
                None,
                Some(body.to_string().into_bytes()),
            )
            .await?;
        if !reply.is_success() {
            return Err(refused("PATCH", PREFS_PATH, &reply));
        }
        Ok(())
    }

    /// The certificate domains from `GET dns-config`; `None` when this daemon has no such
    /// endpoint or no netmap yet (then the bus is the only source).
    pub async fn cert_domains(&self) -> Result<Option<Vec<String>>, DaemonError> {
        let reply = self
            .api
            .call(Method::GET, DNS_CONFIG_PATH, None, None)
            .await?;
        if matches!(reply.status, 404 | 503) {
            return Ok(None);
        }
        let dns: DnsConfig = decode("GET", DNS_CONFIG_PATH, &reply, serde_json::from_slice)?;
        Ok(Some(dns.cert_domains))
    }
}
