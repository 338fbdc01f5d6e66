//! Image references in Docker's syntax (`nginx`, `ghcr.io/org/app@sha256:...`,
//! `10.0.2.2:5000/team/app:1.4`), normalised as Docker normalises them.
//!
//! The first `/`-separated component is a registry host when it contains `.` or `:` or is
//! `localhost`; otherwise the image lives on Docker Hub (`docker.io`), where a one-component
//! repository is an official image under `library/`. A reference without tag or digest means
//! the tag `latest`. When a reference carries both a tag and a digest, the digest is what gets
//! fetched: the tag only documents it.

use std::fmt;

use berth_oci::Digest;

/// Docker Hub's canonical name, as references print it.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

/// An older name of Docker Hub, normalised to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Where Docker Hub's distribution API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The namespace of Docker Hub's official images (`nginx` is `library/nginx`).
const DOCKER_OFFICIAL_NAMESPACE: &str = "library";
const LOCALHOST: &str = "localhost";
/// Docker's limits: a tag has at most 128 characters, a full name at most 255.
const MAX_TAG_LEN: usize = 128;
const MAX_NAME_LEN: usize = 255;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was refused; the message quotes the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference `{text}`: {reason}")]
pub struct ReferenceError {
    pub text: String,
    pub reason: String,
}

impl Reference {
    /// Parses `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]` and normalises it.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let invalid = |reason: String| ReferenceError {
            text: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("the reference is empty".to_string()));
        }
        if let Some(bad) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("it contains the character {bad:?}")));
        }

        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|error| invalid(error.to_string()))?;
                (name, Some(digest))
            }
            None => (text, None),
        };

        // A `:` after the last `/` starts the tag; one before it belongs to a host's port.
        let (name, tag) = match name_and_tag.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if is_host(first) => {
                check_host(first).map_err(invalid)?;
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{DOCKER_OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_string()
        };
        check_repository(&repository).map_err(invalid)?;
        let full_len = registry.len() + 1 + repository.len();
        if full_len > MAX_NAME_LEN {
            return Err(invalid(format!(
                "the name `{registry}/{repository}` has {full_len} characters, at most {MAX_NAME_LEN} are allowed"
            )));
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry as references name it: `docker.io`, `ghcr.io`, `10.0.2.2:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Where the registry's API answers (`host[:port]`): Docker Hub's is not `docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository within the registry: `library/nginx`, `org/app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the manifests endpoint for: the digest when there is one, else the tag.
    pub fn manifest_target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository[:tag]@digest`: this reference pinned to the content pulled.
    pub fn pinned(&self, digest: &Digest) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}@{digest}", self.name()),
            None => format!("{}@{digest}", self.name()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(text)
    }
}

/// Docker's rule for telling a host from a repository's first component.
fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == LOCALHOST
}

/// `name[:port]` with DNS-style labels, or `[ipv6][:port]`.
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("the host `{host}` opens `[` without closing it"))?;
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "`{address}` in the host `{host}` is no IPv6 address"
            ));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("the host `{host}` has `{after}` after its IPv6 address")
            })?),
        };
        (None, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !name.split('.').all(label_ok) {
            return Err(format!(
                "the host `{host}` is not a valid host name (letters, digits and `-` in labels separated by `.`)"
            ));
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || !port.chars().all(|c| c.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(format!(
                "the port `{port}` of `{host}` is not a number from 0 to 65535"
            ));
        }
    }
    Ok(())
}

/// Path components are lowercase alphanumeric runs joined by `.`, `_`, `__` or any number of
/// `-`, as Docker's reference grammar has them.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "the repository name `{repository}` must be lowercase"
        ));
    }
    for component in repository.split('/') {
        check_path_component(component).map_err(|problem| {
            format!(
                "the repository `{repository}` has an invalid component `{component}`: {problem}"
            )
        })?;
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("it is empty");
    }
    if component
        .chars()
        .any(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err("only lowercase letters, digits, `.`, `_` and `-` are allowed");
    }
    let is_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let starts_ok = component.chars().next().is_some_and(is_alnum);
    let ends_ok = component.chars().next_back().is_some_and(is_alnum);
    if !starts_ok || !ends_ok {
        return Err("it must start and end with a letter or digit");
    }
    // Every run of separators must be `.`, `_`, `__` or only dashes.
    for separators in component.split(is_alnum).filter(|run| !run.is_empty()) {
        let dashes = separators.chars().all(|c| c == '-');
        if !(dashes || matches!(separators, "." | "_" | "__")) {
            return Err("letters and digits may be separated by `.`, `_`, `__` or dashes only");
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if tag.is_empty() {
        return Err("the tag after `:` is empty".to_string());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "the tag has {} characters, at most {MAX_TAG_LEN} are allowed",
            tag.len()
        ));
    }
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(word);
    if !first_ok || !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err(format!(
            "the tag `{tag}` is invalid: it must start with a letter, digit or `_`, followed by letters, digits, `_`, `.` or `-`"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(text: &str) -> (String, String, Option<String>, Option<String>, String) {
        let reference = Reference::parse(text).unwrap();
        (
            reference.registry().to_string(),
            reference.repository().to_string(),
            reference.tag().map(str::to_string),
            reference.digest().map(Digest::to_string),
            reference.to_string(),
        )
    }

    #[test]
    fn official_image_normalises_to_library_and_latest() {
        let reference = Reference::parse("nginx").unwrap();
        assert_eq!(reference.registry(), "docker.io");
        assert_eq!(reference.api_host(), "registry-1.docker.io");
        assert_eq!(reference.repository(), "library/nginx");
        assert_eq!(reference.tag(), Some("latest"));
        assert_eq!(reference.digest(), None);
        assert_eq!(reference.manifest_target(), "latest");
        assert_eq!(reference.to_string(), "docker.io/library/nginx:latest");
    }

    #[test]
    fn docker_hub_forms() {
        assert_eq!(
            parts("library/nginx:1.27").4,
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(parts("bitnami/redis").4, "docker.io/bitnami/redis:latest");
        assert_eq!(
            parts("docker.io/nginx:1.27").4,
            "docker.io/library/nginx:1.27"
        );
        let legacy = Reference::parse("index.docker.io/library/busybox").unwrap();
        assert_eq!(legacy.registry(), "docker.io");
        assert_eq!(legacy.api_host(), "registry-1.docker.io");
        assert_eq!(legacy.to_string(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn digest_only_reference_has_no_tag() {
        let text = format!("ghcr.io/org/app@sha256:{HEX}");
        let (registry, repository, tag, digest, display) = parts(&text);
        assert_eq!(registry, "ghcr.io");
        assert_eq!(repository, "org/app");
        assert_eq!(tag, None);
        assert_eq!(digest, Some(format!("sha256:{HEX}")));
        assert_eq!(display, text);
        let reference = Reference::parse(&text).unwrap();
        assert_eq!(reference.api_host(), "ghcr.io");
        assert_eq!(reference.manifest_target(), format!("sha256:{HEX}"));
    }

    #[test]
    fn tag_and_digest_together_fetch_by_digest() {
        let reference = Reference::parse(&format!("ghcr.io/org/app:1.0@sha256:{HEX}")).unwrap();
        assert_eq!(reference.tag(), Some("1.0"));
        assert_eq!(reference.manifest_target(), format!("sha256:{HEX}"));
        assert_eq!(
            reference.to_string(),
            format!("ghcr.io/org/app:1.0@sha256:{HEX}")
        );
    }

    #[test]
    fn hosts_with_ports_and_localhost() {
        let (registry, repository, tag, _, display) = parts("localhost:5000/x:y");
        assert_eq!(
            (registry.as_str(), repository.as_str()),
            ("localhost:5000", "x")
        );
        assert_eq!(tag.as_deref(), Some("y"));
        assert_eq!(display, "localhost:5000/x:y");

        let (registry, repository, tag, _, _) = parts("10.0.2.2:5000/team/app:1.4");
        assert_eq!(registry, "10.0.2.2:5000");
        assert_eq!(repository, "team/app");
        assert_eq!(tag.as_deref(), Some("1.4"));
        assert_eq!(
            Reference::parse("10.0.2.2:5000/team/app")
                .unwrap()
                .api_host(),
            "10.0.2.2:5000"
        );

        assert_eq!(parts("localhost/app").0, "localhost");
        assert_eq!(parts("[::1]:5000/app:v1").0, "[::1]:5000");
        // Without a `.`, `:` or `localhost`, the first component is a Docker Hub namespace.
        assert_eq!(parts("myhost/app").4, "docker.io/myhost/app:latest");
        // A port with no path is Docker's tag rule at work: `localhost` tagged `5000`.
        assert_eq!(
            parts("localhost:5000").4,
            "docker.io/library/localhost:5000"
        );
    }

    #[test]
    fn separators_inside_components() {
        assert_eq!(parts("quay.io/a.b/c_d/e__f/g---h").1, "a.b/c_d/e__f/g---h");
        assert_eq!(parts("app:v1.2_rc-3").2.as_deref(), Some("v1.2_rc-3"));
        assert_eq!(parts("app:_x").2.as_deref(), Some("_x"));
    }

    fn rejection(text: &str) -> String {
        let error = Reference::parse(text).unwrap_err();
        assert_eq!(error.text, text);
        error.to_string()
    }

    #[test]
    fn rejections_say_what_is_wrong() {
        let long_tag = format!("app:{}", "a".repeat(129));
        let long_name = format!("example.com/{}", "a".repeat(250));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("ngi nx", "character ' '"),
            ("Nginx", "must be lowercase"),
            ("ghcr.io/Org/app", "must be lowercase"),
            ("nginx:", "tag after `:` is empty"),
            ("nginx:.bad", "tag `.bad` is invalid"),
            ("nginx:a+b", "tag `a+b` is invalid"),
            (&long_tag, "at most 128"),
            (&long_name, "at most 255"),
            ("nginx@sha256:abc", "64 hex digits"),
            ("nginx@md5:abc", "unsupported algorithm"),
            ("ghcr.io//app", "component ``: it is empty"),
            ("ghcr.io/app/", "it is empty"),
            ("-app", "start and end with a letter or digit"),
            ("a..b", "separated by"),
            ("a___b", "separated by"),
            ("a._b", "separated by"),
            ("a!b", "only lowercase letters"),
            ("exa_mple.com/app", "not a valid host name"),
            ("example.com:99999/app", "the port `99999`"),
            ("example.com:/app", "the port ``"),
            ("[::1/app", "without closing"),
        ];
        for (text, expected) in cases {
            let message = rejection(text);
            assert!(
                message.contains(expected),
                "`{text}`: `{message}` lacks `{expected}`"
            );
            assert!(message.contains(&format!("`{text}`")), "{message}");
        }
    }

    #[test]
    fn pinned_names_the_stored_digest() {
        let digest = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(
            Reference::parse("busybox:1.35").unwrap().pinned(&digest),
            format!("docker.io/library/busybox:1.35@sha256:{HEX}")
        );
    }
}
