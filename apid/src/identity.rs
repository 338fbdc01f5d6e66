//! The server's identity: the certificate and key the image holds (`[api] cert` and `key`),
//! or, when the manifest gives none, a key and self-signed certificate berth-apid generates
//! at first boot and keeps on the data partition. Clients of a generated identity pin its
//! certificate's SHA-256 (`berth ctl --server-sha256`), printed on the console as
//! `api-key-generated` and with every `api-listening`.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The files rustls reads, and the certificate's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub sha256: String,
}

/// What [`generated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Baked,
    /// Generated earlier and read back.
    Kept,
    /// Generated now.
    New,
}

/// The image's identity when it has one, else the one in `generated_dir` (made now if
/// absent).
pub fn server_identity(
    baked_cert: &Path,
    baked_key: &Path,
    generated_dir: &Path,
) -> Result<(Identity, Origin), String> {
    if baked_cert.exists() {
        let identity = Identity {
            cert: baked_cert.to_path_buf(),
            key: baked_key.to_path_buf(),
            sha256: fingerprint(baked_cert)?,
        };
        return Ok((identity, Origin::Baked));
    }
    generated(generated_dir)
}

fn generated(dir: &Path) -> Result<(Identity, Origin), String> {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let origin = if cert.exists() && key.exists() {
        Origin::Kept
    } else {
        generate(dir, &cert, &key)?;
        Origin::New
    };
    let sha256 = fingerprint(&cert)?;
    Ok((Identity { cert, key, sha256 }, origin))
}

/// A P-256 key and a self-signed certificate for the host's name, written whole or not at
/// all (each through a temporary file renamed into place, the key last: a key without its
/// certificate is generated again).
fn generate(dir: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".to_string());
    let key_pair = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let params = rcgen::CertificateParams::new(vec![hostname])
        .map_err(|e| format!("the certificate's name: {e}"))?;
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|e| format!("signing the certificate: {e}"))?;
    write_new(cert, certificate.pem().as_bytes(), 0o644)?;
    write_new(key, key_pair.serialize_pem().as_bytes(), 0o600)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    written.map_err(|e| format!("{}: {e}", path.display()))
}

/// SHA-256 of the first certificate in a PEM file, lowercase hex.
pub fn fingerprint(pem: &Path) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .map_err(|e| format!("{}: {e}", pem.display()))?
        .next()
        .ok_or_else(|| format!("{} holds no certificate", pem.display()))?
        .map_err(|e| format!("{}: {e}", pem.display()))?;
    Ok(Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether `dir` is kept across boots: on another filesystem than the root (the data
/// partition), not on the initramfs.
pub fn persistent(dir: &Path) -> bool {
    match (std::fs::metadata(dir), std::fs::metadata("/")) {
        (Ok(dir), Ok(root)) => dir.dev() != root.dev(),
        _ => false,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_generated_identity_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("apid-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let baked = dir.join("absent.pem");
        let (first, origin) = server_identity(&baked, &baked, &dir.join("api")).unwrap();
        assert_eq!(origin, Origin::New);
        assert_eq!(first.sha256.len(), 64);
        let mode = std::fs::metadata(&first.key).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, origin) = server_identity(&baked, &baked, &dir.join("api")).unwrap();
        assert_eq!((again, origin), (first.clone(), Origin::Kept));
        // A certificate without its key (a power cut between the two) is made again.
        std::fs::remove_file(&first.key).unwrap();
        let (remade, origin) = server_identity(&baked, &baked, &dir.join("api")).unwrap();
        assert_eq!(origin, Origin::New);
        assert_ne!(remade.sha256, first.sha256);
        // The image's own identity wins.
        let (baked_identity, origin) =
            server_identity(&remade.cert, &remade.key, &dir.join("other")).unwrap();
        assert_eq!(origin, Origin::Baked);
        assert_eq!(baked_identity.sha256, remade.sha256);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
