//! Ed25519 keys for update bundles.
//!
//! A public key is one line an operator pastes into a manifest (`[update] keys`):
//! `ed25519:` and the 32 key bytes in standard base64. A secret key file holds
//! `berth-update-secret-key ed25519:` and the 32-byte seed in base64, and is written with
//! mode 0600.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::UpdateError;

/// The secret key's file name in `berth key generate --out DIR`.
pub const SECRET_KEY_FILE: &str = "update.key";
/// The public key's file name in `berth key generate --out DIR`.
pub const PUBLIC_KEY_FILE: &str = "update.pub";

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "berth-update-secret-key ed25519:";

/// A key a host accepts bundles from.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads `ed25519:<base64>`.
    pub fn parse(text: &str) -> Result<PublicKey, UpdateError> {
        let bad = |reason: &str| UpdateError::BadPublicKey {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let encoded = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| bad("no `ed25519:` prefix"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|e| bad(&format!("not base64: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| bad(&format!("{} bytes, not 32", b.len())))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad("not a point on the curve"))
    }

    pub(crate) fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.0.verify(message, signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The key `berth build --sign-key` signs bundles with.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Reads a secret key file `berth key generate` wrote.
    pub fn read(path: &Path) -> Result<SecretKey, UpdateError> {
        let text = std::fs::read_to_string(path).map_err(|source| UpdateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: &str| UpdateError::BadSecretKey {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| bad("not a berth update secret key (wrong first words)"))?;
        let seed = STANDARD
            .decode(encoded)
            .map_err(|e| bad(&format!("not base64: {e}")))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|s: Vec<u8>| bad(&format!("{} bytes, not 32", s.len())))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Writes the key to `path`, readable by its owner only; refuses to overwrite a file.
    pub fn write(&self, path: &Path) -> Result<(), UpdateError> {
        let io = |source| UpdateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let text = format!("{SECRET_PREFIX}{}\n", STANDARD.encode(self.0.to_bytes()));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The public half, for manifests.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.0.sign(message)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret itself: debug output ends up in logs.
        write!(f, "SecretKey(public {})", self.public_key())
    }
}

/// A new key pair from the operating system's random source.
pub fn generate_key_pair() -> Result<SecretKey, UpdateError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| UpdateError::Random(e.to_string()))?;
    Ok(SecretKey(SigningKey::from_bytes(&seed)))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_reads_back_what_it_prints() {
        let secret = generate_key_pair().unwrap();
        let shown = secret.public_key().to_string();
        assert!(shown.starts_with("ed25519:"));
        assert_eq!(PublicKey::parse(&shown).unwrap(), secret.public_key());
    }

    #[test]
    fn bad_public_keys_are_refused_with_their_reason() {
        for (text, reason) in [
            ("rsa:AAAA", "prefix"),
            ("ed25519:***", "base64"),
            ("ed25519:AAAA", "3 bytes"),
        ] {
            let error = PublicKey::parse(text).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(reason)),
                "{text}: {error:?}"
            );
        }
    }

    #[test]
    fn a_secret_key_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("berth-update-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(SECRET_KEY_FILE);
        let secret = generate_key_pair().unwrap();
        secret.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = SecretKey::read(&path).unwrap();
        assert_eq!(read.public_key(), secret.public_key());
        assert!(secret.write(&path).is_err(), "an existing key is kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
