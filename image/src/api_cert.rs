//! `berth api cert`: a CA, a server certificate and client certificates for berth-apid, for
//! an operator who has no PKI of their own (rcgen; ECDSA P-256 keys).
//!
//! The CA is `DIR/ca.pem` and `DIR/ca.key`; certificates it signs are written as
//! `OUT/server.pem` + `OUT/server.key` or `OUT/client.pem` + `OUT/client.key`. Keys are
//! written mode 0600. The CA's subject is [`CA_NAME`] and a fingerprint of its public key:
//! signing a certificate needs only the CA's name and key, and both come from the key, so the
//! CA certificate is not parsed back; two CAs (an old and a new one, while rotating) still
//! have names of their own.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The CA certificate's common name.
pub const CA_NAME: &str = "berth API CA";
/// Default validity of a certificate, in days.
pub const DEFAULT_DAYS: i64 = 825;
/// Default validity of the CA, in days.
pub const DEFAULT_CA_DAYS: i64 = 3650;

/// Which side of the connection a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    fn file_stem(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The CA's common name: [`CA_NAME`] and the first 8 bytes of its public key's SHA-256.
fn ca_common_name(key: &KeyPair) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.public_key_raw());
    let short: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{CA_NAME} {short}")
}

fn ca_params(
    key: &KeyPair,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, ca_common_name(key));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// Writes a new CA, valid for `days`, to `dir/ca.pem` and `dir/ca.key`.
pub fn make_ca(dir: &Path, days: i64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let now = OffsetDateTime::now_utc();
    let cert = ca_params(&key, now - Duration::minutes(5), now + Duration::days(days))
        .self_signed(&key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    write(&dir.join("ca.pem"), &cert.pem(), 0o644)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), 0o600)
}

/// Writes a certificate for `role` naming `names` (DNS names or IP addresses; the first is
/// also the common name), signed by the CA in `ca_dir`, valid from `not_before` to
/// `not_after`, to `out/<role>.pem` and `out/<role>.key`.
pub fn make_certificate(
    ca_dir: &Path,
    role: Role,
    names: &[String],
    out: &Path,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), String> {
    let ca_key_path = ca_dir.join("ca.key");
    let ca_key_text = std::fs::read_to_string(&ca_key_path)
        .map_err(|e| format!("cannot read {}: {e}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_text)
        .map_err(|e| format!("{} is not a key: {e}", ca_key_path.display()))?;
    let now = OffsetDateTime::now_utc();
    let ca = ca_params(&ca_key, now, now + Duration::days(1))
        .self_signed(&ca_key)
        .map_err(|e| format!("cannot use the CA: {e}"))?;
    let first = names
        .first()
        .ok_or("a certificate needs at least one --name")?;
    let sans = match role {
        Role::Server => names.to_vec(),
        // A client is named by its subject; a DNS SAN would claim a host name it has not.
        Role::Client => Vec::new(),
    };
    let mut params =
        CertificateParams::new(sans).map_err(|e| format!("--name {}: {e}", names.join(", ")))?;
    params.distinguished_name.push(DnType::CommonName, first);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let stem = role.file_stem();
    write(&out.join(format!("{stem}.pem")), &cert.pem(), 0o644)?;
    write(
        &out.join(format!("{stem}.key")),
        &key.serialize_pem(),
        0o600,
    )
}

/// [`make_certificate`] valid from now for `days`.
pub fn make_certificate_for_days(
    ca_dir: &Path,
    role: Role,
    names: &[String],
    out: &Path,
    days: i64,
) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    make_certificate(
        ca_dir,
        role,
        names,
        out,
        now - Duration::minutes(5),
        now + Duration::days(days),
    )
}
