//! A blocking client for the OCI distribution API (`GET /v2/<name>/manifests/<reference>`,
//! `GET /v2/<name>/blobs/<digest>`), over HTTPS with rustls, or plain HTTP for registries
//! named insecure.
//!
//! Every request goes out anonymously, or with the `Authorization` cached for its registry and
//! repository; a `401` is answered once with what its challenge asks for (see [`crate::auth`])
//! and the result cached for the rest of the run, so an expired token is simply renewed.
//! Connection failures, 5xx and 429 are retried with exponential backoff.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use berth_oci::{
    Digest, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
};
use serde::Deserialize;
use ureq::http::Response;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body, BodyReader};

use crate::auth::{parse_token_response, parse_www_authenticate, AuthFile, Challenge};
use crate::{Event, Reference, RegistryError};

/// Manifests and indexes are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// How much of an error answer's body is read to explain it.
const MAX_ERROR_BODY_BYTES: u64 = 4 << 10;
const MAX_ERROR_DETAIL_CHARS: usize = 200;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A download that receives nothing for this long is broken off (and resumed by a retry).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_ATTEMPTS: u32 = 4;
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(500);
const USER_AGENT: &str = concat!("berth-pull/", env!("CARGO_PKG_VERSION"));

/// How often and how patiently failed requests are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: RETRY_ATTEMPTS,
            first_delay: RETRY_FIRST_DELAY,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failed`-th failed try (1 for the first).
    pub fn delay(&self, failed: u32) -> Duration {
        self.first_delay
            .saturating_mul(1u32 << failed.saturating_sub(1).min(16))
    }
}

/// What a [`Client`] trusts and which credentials it has.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Registries (`host[:port]`, or `host` for every port) spoken to in plain HTTP.
    pub insecure: Vec<String>,
    /// PEM files whose certificates are trusted as roots.
    pub ca_files: Vec<PathBuf>,
    /// Whether Mozilla's roots, built in, are trusted too (true unless asked otherwise).
    pub bundled_roots: bool,
    pub auth: AuthFile,
    pub retry: RetryPolicy,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            bundled_roots: true,
            auth: AuthFile::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub url: String,
    /// The `Content-Type` of the answer, without parameters.
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// How a registry answered a blob request.
pub(crate) enum BlobAnswer {
    /// `200`: the whole blob, from its first byte.
    Whole {
        url: String,
        body: BodyReader<'static>,
    },
    /// `206`: the blob from the offset asked for.
    Rest {
        url: String,
        body: BodyReader<'static>,
    },
    /// `416`: the offset is past the blob's end.
    RangeNotSatisfiable,
}

/// A distribution API client for one run: it keeps the tokens it obtained, by registry and
/// repository.
pub struct Client {
    agent: Agent,
    insecure: Vec<String>,
    auth: AuthFile,
    retry: RetryPolicy,
    /// `Authorization` values by (registry, repository).
    authorizations: HashMap<(String, String), String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.insecure)
            .field("auth", &self.auth)
            .field("retry", &self.retry)
            .field("cached_authorizations", &self.authorizations.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, RegistryError> {
        let mut roots: Vec<Certificate<'static>> = Vec::new();
        if config.bundled_roots {
            roots.extend(
                webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref())),
            );
        }
        for path in &config.ca_files {
            roots.extend(read_ca_file(path)?);
        }
        if roots.is_empty() {
            return Err(RegistryError::NoRoots);
        }
        // ring is the one crypto provider compiled in; rustls wants it named once per
        // process. An Err only says one is installed already (a second client in the same
        // process), which is the state we want.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build();
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(USER_AGENT)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Client {
            agent,
            insecure: config.insecure,
            auth: config.auth,
            retry: config.retry,
            authorizations: HashMap::new(),
        })
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether `registry` (`host[:port]`) is spoken to in plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = host_without_port(registry);
        self.insecure
            .iter()
            .any(|entry| entry == registry || entry == host)
    }

    /// `GET /v2/<repository>/manifests/<target>` (a tag or a digest), accepting OCI and
    /// Docker manifests and indexes, retried on network and server failures.
    pub fn fetch_manifest(
        &mut self,
        reference: &Reference,
        target: &str,
        events: &mut dyn FnMut(Event),
    ) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{target}", self.repository_url(reference));
        let accept = [
            MEDIA_TYPE_IMAGE_MANIFEST,
            MEDIA_TYPE_IMAGE_INDEX,
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let policy = self.retry;
        retrying(policy, events, &url, || {
            let mut response = self.send(reference, &url, &[("Accept", accept.as_str())])?;
            if response.status().as_u16() != 200 {
                return Err(status_error(&url, &mut response));
            }
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split(';').next())
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty());
            let bytes = read_limited(&mut response, MAX_MANIFEST_BYTES, &url)?;
            Ok(FetchedManifest {
                url: url.clone(),
                content_type,
                bytes,
            })
        })
    }

    /// One `GET /v2/<repository>/blobs/<digest>`, from `offset` on when it is not zero. The
    /// caller streams the body and retries (it knows where to resume).
    pub(crate) fn open_blob(
        &mut self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobAnswer, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.repository_url(reference));
        let range = format!("bytes={offset}-");
        let headers: &[(&str, &str)] = if offset > 0 {
            &[("Range", range.as_str())]
        } else {
            &[]
        };
        let mut response = self.send(reference, &url, headers)?;
        match response.status().as_u16() {
            200 => Ok(BlobAnswer::Whole {
                url,
                body: response.into_body().into_reader(),
            }),
            206 if offset > 0 => {
                let content_range = response
                    .headers()
                    .get("content-range")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let expected_start = format!("bytes {offset}-");
                if !content_range.starts_with(&expected_start) {
                    return Err(RegistryError::BadContentRange {
                        url,
                        offset,
                        header: content_range,
                    });
                }
                Ok(BlobAnswer::Rest {
                    url,
                    body: response.into_body().into_reader(),
                })
            }
            416 if offset > 0 => Ok(BlobAnswer::RangeNotSatisfiable),
            _ => Err(status_error(&url, &mut response)),
        }
    }

    fn repository_url(&self, reference: &Reference) -> String {
        let scheme =
            if self.is_insecure(reference.registry()) || self.is_insecure(reference.api_host()) {
                "http"
            } else {
                "https"
            };
        format!(
            "{scheme}://{}/v2/{}",
            reference.api_host(),
            reference.repository()
        )
    }

    /// A GET with the cached authorization; a `401` is answered once with what its challenge
    /// asks for.
    fn send(
        &mut self,
        reference: &Reference,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<Body>, RegistryError> {
        let key = (
            reference.registry().to_string(),
            reference.repository().to_string(),
        );
        let mut authorization = self.authorizations.get(&key).cloned();
        let mut answered_challenge: Option<&'static str> = None;
        loop {
            let mut request = self.agent.get(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            let mut response = request
                .call()
                .map_err(|source| transport_error(url, source))?;
            if response.status().as_u16() != 401 {
                return Ok(response);
            }
            if let Some(how) = answered_challenge {
                return Err(RegistryError::Unauthorized {
                    url: url.to_string(),
                    how,
                    detail: error_detail(&mut response),
                });
            }
            let header = response
                .headers()
                .get("www-authenticate")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| RegistryError::Unauthorized {
                    url: url.to_string(),
                    how: "no WWW-Authenticate challenge to answer",
                    detail: String::new(),
                })?;
            let challenge =
                parse_www_authenticate(&header).map_err(|reason| RegistryError::BadChallenge {
                    url: url.to_string(),
                    header: header.clone(),
                    reason,
                })?;
            let value = self.answer(reference, &challenge)?;
            answered_challenge = Some(match challenge {
                Challenge::Bearer { .. } => "a bearer token",
                Challenge::Basic { .. } => "Basic credentials",
            });
            self.authorizations.insert(key.clone(), value.clone());
            authorization = Some(value);
        }
    }

    /// The `Authorization` value a challenge asks for.
    fn answer(
        &mut self,
        reference: &Reference,
        challenge: &Challenge,
    ) -> Result<String, RegistryError> {
        let registry = reference.registry();
        let credentials = self.auth.get(registry);
        match challenge {
            Challenge::Basic { .. } => credentials
                .map(|credentials| credentials.basic_header())
                .ok_or_else(|| RegistryError::NoCredentials {
                    registry: registry.to_string(),
                }),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                if let Some(rest) = realm.strip_prefix("http://") {
                    let realm_host = rest.split(['/', '?']).next().unwrap_or(rest);
                    if !self.is_insecure(realm_host) {
                        return Err(RegistryError::InsecureRealm {
                            registry: registry.to_string(),
                            realm: realm.clone(),
                        });
                    }
                } else if !realm.starts_with("https://") {
                    return Err(RegistryError::TokenResponse {
                        url: realm.clone(),
                        reason: "the realm is not an http(s) URL".to_string(),
                    });
                }
                let scope = scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{}:pull", reference.repository()));
                let mut request = self.agent.get(realm.as_str());
                if let Some(service) = service {
                    request = request.query("service", service);
                }
                request = request.query("scope", &scope);
                if let Some(credentials) = credentials {
                    request = request.header("Authorization", credentials.basic_header());
                }
                let mut response = request
                    .call()
                    .map_err(|source| transport_error(realm, source))?;
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    let whose = if credentials.is_some() {
                        "the --auth-file credentials were refused"
                    } else {
                        "anonymous access was refused (no --auth-file entry for this registry)"
                    };
                    return Err(RegistryError::TokenResponse {
                        url: realm.clone(),
                        reason: format!("HTTP {status}: {whose}{}", error_detail(&mut response)),
                    });
                }
                if status != 200 {
                    return Err(status_error(realm, &mut response));
                }
                let body = read_limited(&mut response, MAX_TOKEN_BYTES, realm)?;
                let token =
                    parse_token_response(&body).map_err(|reason| RegistryError::TokenResponse {
                        url: realm.clone(),
                        reason,
                    })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }
}

/// Runs `op` until it succeeds, fails for good, or has been tried `policy.attempts` times,
/// waiting with exponential backoff between tries.
pub(crate) fn retrying<T>(
    policy: RetryPolicy,
    events: &mut dyn FnMut(Event),
    what: &str,
    mut op: impl FnMut() -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let mut attempt = 1;
    loop {
        match op() {
            Err(error) if error.is_retryable() && attempt < policy.attempts => {
                wait_before_retry(policy, events, what, attempt, &error);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Says that try `attempt` of `what` failed with `error` and waits out its backoff: the one
/// wait of [`retrying`] and of a blob download's own loop.
pub(crate) fn wait_before_retry(
    policy: RetryPolicy,
    events: &mut dyn FnMut(Event),
    what: &str,
    attempt: u32,
    error: &RegistryError,
) {
    let delay = policy.delay(attempt);
    events(Event::Retry {
        what: what.to_string(),
        attempt,
        attempts: policy.attempts,
        delay,
        error: error.to_string(),
    });
    thread::sleep(delay);
}

/// A failed request, told apart as a TLS failure (rustls reports those as `InvalidData`
/// I/O errors) or anything else on the way.
fn transport_error(url: &str, source: ureq::Error) -> RegistryError {
    let tls = match &source {
        ureq::Error::Io(error) => error.kind() == std::io::ErrorKind::InvalidData,
        ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::TlsRequired => true,
        _ => false,
    };
    let url = url.to_string();
    if tls {
        RegistryError::Tls { url, source }
    } else {
        RegistryError::Transport { url, source }
    }
}

/// `host` from `host:port`, `[v6]` from `[v6]:port`.
fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .find(']')
            .and_then(|end| registry.get(..=end))
            .unwrap_or(registry);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn read_ca_file(path: &PathBuf) -> Result<Vec<Certificate<'static>>, RegistryError> {
    let data = fs::read(path).map_err(|source| RegistryError::ReadFile {
        what: "CA file",
        path: path.clone(),
        source,
    })?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&data) {
        match item {
            Ok(PemItem::Certificate(certificate)) => certificates.push(certificate),
            Ok(_) => {}
            Err(error) => {
                return Err(RegistryError::InvalidCaFile {
                    path: path.clone(),
                    reason: error.to_string(),
                })
            }
        }
    }
    if certificates.is_empty() {
        return Err(RegistryError::InvalidCaFile {
            path: path.clone(),
            reason: "no PEM certificate in it".to_string(),
        });
    }
    Ok(certificates)
}

fn read_limited(
    response: &mut Response<Body>,
    limit: u64,
    url: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut bytes = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| RegistryError::ReadBody {
            url: url.to_string(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

fn status_error(url: &str, response: &mut Response<Body>) -> RegistryError {
    RegistryError::Status {
        url: url.to_string(),
        status: response.status().as_u16(),
        detail: error_detail(response),
    }
}

/// The distribution API's error document: `{"errors":[{"code":...,"message":...}]}`.
#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// `: CODE: message` from an error answer's body, or its first line, or nothing.
fn error_detail(response: &mut Response<Body>) -> String {
    let mut body = Vec::new();
    // The detail only decorates an error that is already on its way: a body we cannot read
    // leaves it out.
    if response
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY_BYTES)
        .read_to_end(&mut body)
        .is_err()
    {
        return String::new();
    }
    if let Ok(document) = serde_json::from_slice::<ErrorDocument>(&body) {
        let entries: Vec<String> = document
            .errors
            .iter()
            .map(
                |entry| match (entry.code.is_empty(), entry.message.is_empty()) {
                    (false, false) => format!("{}: {}", entry.code, entry.message),
                    (false, true) => entry.code.clone(),
                    _ => entry.message.clone(),
                },
            )
            .filter(|text| !text.is_empty())
            .collect();
        if !entries.is_empty() {
            return format!(": {}", entries.join("; "));
        }
    }
    let text = String::from_utf8_lossy(&body);
    let line: String = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default()
        .chars()
        .take(MAX_ERROR_DETAIL_CHARS)
        .collect();
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.attempts, 4);
        let delays: Vec<u128> = (1..4).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000]);
    }

    #[test]
    fn insecure_entries_match_host_and_port() {
        let client = Client::new(ClientConfig {
            insecure: vec!["10.0.2.2:5000".to_string(), "localhost".to_string()],
            ..ClientConfig::default()
        })
        .unwrap();
        assert!(client.is_insecure("10.0.2.2:5000"));
        assert!(!client.is_insecure("10.0.2.2:5001"));
        assert!(!client.is_insecure("10.0.2.2"));
        assert!(client.is_insecure("localhost:5000"));
        assert!(client.is_insecure("localhost"));
        assert!(!client.is_insecure("ghcr.io"));
        assert_eq!(host_without_port("[::1]:5000"), "[::1]");
    }

    #[test]
    fn urls_use_the_api_host_and_scheme() {
        let client = Client::new(ClientConfig {
            insecure: vec!["10.0.2.2:5000".to_string()],
            ..ClientConfig::default()
        })
        .unwrap();
        let hub = Reference::parse("nginx").unwrap();
        assert_eq!(
            client.repository_url(&hub),
            "https://registry-1.docker.io/v2/library/nginx"
        );
        let local = Reference::parse("10.0.2.2:5000/team/app:1.4").unwrap();
        assert_eq!(
            client.repository_url(&local),
            "http://10.0.2.2:5000/v2/team/app"
        );
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("berth-registry-ca-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        fs::write(&empty, "not a certificate\n").unwrap();
        let error = Client::new(ClientConfig {
            ca_files: vec![empty.clone()],
            ..ClientConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("no PEM certificate") && error.contains("empty.pem"),
            "{error}"
        );
        let missing = Client::new(ClientConfig {
            ca_files: vec![dir.join("missing.pem")],
            ..ClientConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(missing.contains("cannot read the CA file"), "{missing}");
        let none = Client::new(ClientConfig {
            bundled_roots: false,
            ..ClientConfig::default()
        })
        .unwrap_err();
        assert!(matches!(none, RegistryError::NoRoots));
        fs::remove_dir_all(&dir).unwrap();
    }
}
