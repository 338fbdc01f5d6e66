//! Registry authentication: `WWW-Authenticate` challenges, credentials from a Docker
//! `config.json`-style file, and the token endpoint's answer.
//!
//! The distribution API is tried anonymously first. A `401` names a scheme: `Bearer` sends
//! us to a token endpoint (`realm`, with `service` and `scope`), with Basic credentials when
//! we have some for the registry, and the token it returns goes into `Authorization: Bearer`;
//! `Basic` takes the credentials directly.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;

use crate::RegistryError;

/// Docker Hub's names in credential files, all meaning `docker.io`.
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io", "docker.io"];

/// What a registry's `401` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from `realm`, passing `service` and `scope` along.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// Send Basic credentials.
    Basic { realm: Option<String> },
}

/// Parses a `WWW-Authenticate` header value. When it offers several challenges, `Bearer`
/// wins over `Basic`; any other scheme alone is refused.
pub fn parse_www_authenticate(header: &str) -> Result<Challenge, String> {
    let challenges = parse_challenges(header)?;
    let param = |params: &BTreeMap<String, String>, name: &str| params.get(name).cloned();
    if let Some((_, params)) = challenges
        .iter()
        .find(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
    {
        let realm = param(params, "realm")
            .filter(|realm| !realm.is_empty())
            .ok_or_else(|| "the Bearer challenge has no realm".to_string())?;
        return Ok(Challenge::Bearer {
            realm,
            service: param(params, "service"),
            scope: param(params, "scope"),
        });
    }
    if let Some((_, params)) = challenges
        .iter()
        .find(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
    {
        return Ok(Challenge::Basic {
            realm: param(params, "realm"),
        });
    }
    let schemes: Vec<&str> = challenges
        .iter()
        .map(|(scheme, _)| scheme.as_str())
        .collect();
    Err(format!(
        "unsupported authentication scheme {} (only Bearer and Basic are)",
        schemes.join(", ")
    ))
}

type Params = BTreeMap<String, String>;

/// RFC 7235's `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, as a list.
/// Parameter names are lowercased; quoted values are unescaped.
fn parse_challenges(header: &str) -> Result<Vec<(String, Params)>, String> {
    let mut challenges: Vec<(String, Params)> = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let token_len = rest.find([' ', '\t', ',', '=']).unwrap_or(rest.len());
        let (token, after) = rest.split_at(token_len);
        let after_spaces = after.trim_start_matches([' ', '\t']);
        if let Some(value_text) = after_spaces.strip_prefix('=') {
            // `name=value`: a parameter of the current challenge.
            let Some((_, params)) = challenges.last_mut() else {
                return Err(format!(
                    "`{header}` has a parameter `{token}` before any scheme"
                ));
            };
            let (value, remaining) = parse_param_value(value_text.trim_start_matches([' ', '\t']))
                .map_err(|problem| format!("`{header}`: parameter `{token}`: {problem}"))?;
            params.insert(token.to_ascii_lowercase(), value);
            rest = remaining;
        } else {
            // A scheme starts a new challenge.
            if token.is_empty() {
                return Err(format!("`{header}` is not a challenge"));
            }
            challenges.push((token.to_string(), Params::new()));
            rest = after;
        }
    }
    if challenges.is_empty() {
        return Err("the WWW-Authenticate header is empty".to_string());
    }
    Ok(challenges)
}

/// A quoted string (with `\` escapes) or a bare token, and what follows it.
fn parse_param_value(text: &str) -> Result<(String, &str), &'static str> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => return Ok((value, quoted.get(index + 1..).unwrap_or_default())),
                '\\' => match chars.next() {
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                other => value.push(other),
            }
        }
        Err("unterminated quoted value")
    } else {
        let end = text.find([',', ' ', '\t']).unwrap_or(text.len());
        let (value, rest) = text.split_at(end);
        Ok((value.to_string(), rest))
    }
}

/// A user name and password for one registry. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// The value of an `Authorization` header carrying these credentials.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", BASE64.encode(pair))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Credentials by registry, from a Docker `config.json`-style file:
/// `{"auths":{"host:port":{"auth":"base64(user:pass)"}}}`, or `username` and `password`
/// fields instead of `auth`. Keys may be URLs (`https://index.docker.io/v1/`); they are
/// reduced to `host[:port]`, and Docker Hub's aliases to `docker.io`.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    entries: BTreeMap<String, Credentials>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, ConfigEntry>,
}

#[derive(Deserialize)]
struct ConfigEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl AuthFile {
    pub fn load(path: &Path) -> Result<AuthFile, RegistryError> {
        let data = fs::read(path).map_err(|source| RegistryError::ReadFile {
            what: "auth file",
            path: path.to_path_buf(),
            source,
        })?;
        AuthFile::parse(&data, path)
    }

    /// Parses the file's content; `path` only names it in errors.
    pub fn parse(data: &[u8], path: &Path) -> Result<AuthFile, RegistryError> {
        let invalid = |registry: &str, reason: String| RegistryError::InvalidAuthFile {
            path: PathBuf::from(path),
            reason: format!("entry `{registry}`: {reason}"),
        };
        let config: ConfigFile =
            serde_json::from_slice(data).map_err(|source| RegistryError::InvalidAuthFile {
                path: path.to_path_buf(),
                reason: source.to_string(),
            })?;
        let mut entries = BTreeMap::new();
        for (key, entry) in config.auths {
            let credentials = match (entry.auth.filter(|auth| !auth.is_empty()), entry.username) {
                (Some(auth), _) => {
                    let decoded = BASE64
                        .decode(auth.trim())
                        .map_err(|error| invalid(&key, format!("`auth` is not base64: {error}")))?;
                    let pair = String::from_utf8(decoded)
                        .map_err(|_| invalid(&key, "`auth` is not UTF-8".to_string()))?;
                    let (username, password) = pair.split_once(':').ok_or_else(|| {
                        invalid(
                            &key,
                            "`auth` does not decode to `user:password`".to_string(),
                        )
                    })?;
                    Credentials {
                        username: username.to_string(),
                        password: password.to_string(),
                    }
                }
                (None, Some(username)) => Credentials {
                    username,
                    password: entry.password.unwrap_or_default(),
                },
                // Entries that only point at a credential helper carry nothing we can use.
                (None, None) => continue,
            };
            entries.insert(normalise_registry_key(&key), credentials);
        }
        Ok(AuthFile { entries })
    }

    /// The credentials for a registry as references name it (`docker.io`, `host:port`).
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.entries.get(&normalise_registry_key(registry))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/` → `host:5000`.
fn normalise_registry_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        crate::reference::DOCKER_HUB.to_string()
    } else {
        host
    }
}

/// The token endpoint's answer: Docker's `token`, or OAuth2's `access_token`.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The bearer token in a token endpoint's JSON answer.
pub fn parse_token_response(body: &[u8]) -> Result<String, String> {
    let response: TokenResponse =
        serde_json::from_slice(body).map_err(|error| format!("invalid JSON: {error}"))?;
    response
        .token
        .filter(|token| !token.is_empty())
        .or(response.access_token.filter(|token| !token.is_empty()))
        .ok_or_else(|| "the answer has neither `token` nor `access_token`".to_string())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_parameters() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#;
        assert_eq!(
            parse_www_authenticate(header).unwrap(),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".to_string(),
                service: Some("registry.docker.io".to_string()),
                scope: Some("repository:library/nginx:pull".to_string()),
            }
        );
    }

    #[test]
    fn bearer_challenge_tolerates_case_spaces_tokens_and_escapes() {
        let header = r#"bearer Realm = "https://ghcr.io/token" , service=ghcr.io,scope="repository:a\"b:pull""#;
        assert_eq!(
            parse_www_authenticate(header).unwrap(),
            Challenge::Bearer {
                realm: "https://ghcr.io/token".to_string(),
                service: Some("ghcr.io".to_string()),
                scope: Some("repository:a\"b:pull".to_string()),
            }
        );
        let no_scope = parse_www_authenticate(r#"Bearer realm="https://r/token""#).unwrap();
        assert_eq!(
            no_scope,
            Challenge::Bearer {
                realm: "https://r/token".to_string(),
                service: None,
                scope: None
            }
        );
    }

    #[test]
    fn basic_challenge_and_preference_for_bearer() {
        assert_eq!(
            parse_www_authenticate(r#"Basic realm="Registry Realm""#).unwrap(),
            Challenge::Basic {
                realm: Some("Registry Realm".to_string())
            }
        );
        assert_eq!(
            parse_www_authenticate("Basic").unwrap(),
            Challenge::Basic { realm: None }
        );
        let both = r#"Basic realm="x", Bearer realm="https://t/token",service="s""#;
        assert!(matches!(
            parse_www_authenticate(both).unwrap(),
            Challenge::Bearer { .. }
        ));
    }

    #[test]
    fn bad_challenges_are_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("Bearer service=\"x\"", "no realm"),
            (
                "Negotiate abc",
                "unsupported authentication scheme Negotiate, abc",
            ),
            ("realm=\"x\"", "before any scheme"),
            ("Bearer realm=\"open", "unterminated"),
        ];
        for (header, expected) in cases {
            let message = parse_www_authenticate(header).unwrap_err();
            assert!(message.contains(expected), "`{header}`: {message}");
        }
    }

    #[test]
    fn auth_file_entries_by_normalised_registry() {
        let user_pass = BASE64.encode("alice:s3cr:et");
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{user_pass}"}},
                "10.0.2.2:5000":{{"username":"bob","password":"pw"}},
                "http://Registry.Example.com:8443/":{{"auth":"{user_pass}"}},
                "helper.example.com":{{}}
            }},"credsStore":"desktop"}}"#
        );
        let file = AuthFile::parse(json.as_bytes(), Path::new("config.json")).unwrap();
        let hub = file.get("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cr:et")
        );
        assert_eq!(file.get("10.0.2.2:5000").unwrap().username, "bob");
        assert!(file.get("registry.example.com:8443").is_some());
        assert!(file.get("helper.example.com").is_none());
        assert!(file.get("ghcr.io").is_none());
        assert!(!format!("{hub:?}").contains("s3cr"));
        assert_eq!(
            hub.basic_header(),
            format!("Basic {}", BASE64.encode("alice:s3cr:et"))
        );
    }

    #[test]
    fn bad_auth_files_name_the_entry() {
        let bad = br#"{"auths":{"ghcr.io":{"auth":"bm9jb2xvbg=="}}}"#; // "nocolon"
        let message = AuthFile::parse(bad, Path::new("/a.json"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("/a.json") && message.contains("ghcr.io"),
            "{message}"
        );
        assert!(message.contains("user:password"), "{message}");
        let message = AuthFile::parse(b"{", Path::new("/a.json"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/a.json"), "{message}");
    }

    #[test]
    fn token_responses() {
        assert_eq!(
            parse_token_response(br#"{"token":"t1","expires_in":300}"#).unwrap(),
            "t1"
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"t2"}"#).unwrap(),
            "t2"
        );
        assert_eq!(
            parse_token_response(br#"{"token":"","access_token":"t3"}"#).unwrap(),
            "t3"
        );
        assert!(parse_token_response(b"{}").unwrap_err().contains("neither"));
    }
}
