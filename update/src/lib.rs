//! berth's update bundle: one signed file that moves a host to a new berth image.
//!
//! A bundle (`update.berth`, written by `berth build --format update --sign-key FILE`) is a
//! plain ustar archive, so an operator can look into one with `tar tvf`:
//!
//! | entry | what it holds |
//! | --- | --- |
//! | `bundle.json` | the [`BundleHeader`]: format, image version, arch, kernel release, and each part's size and SHA-256 |
//! | `bundle.sig` | 64 bytes: the Ed25519 signature over [`SIGNING_CONTEXT`] followed by `bundle.json` |
//! | `kernel`, `initrd` | the parts, in the order the header lists them |
//!
//! The header is signed rather than the whole file so that a host verifies it before it
//! reads a byte of the parts, and then checks each part against its digest while streaming
//! it to a temporary file: nothing is read twice and nothing unverified is kept. A bundle that
//! is unsigned, signed by a key the host does not accept, for the other arch, truncated, or
//! with a part that does not match its digest is refused whole.
//!
//! Written with `tar`, `ed25519-dalek` and `sha2`; what is by hand is only the order of
//! checks above, which no crate offers (minisign signs a whole file, which a host would have
//! to read twice: once to verify, once to write).

mod bundle;
mod error;
mod keys;

pub use bundle::{
    check_version, read_bundle, write_bundle, BundleHeader, BundlePart, PartSource, Verified,
    BUNDLE_FILE, FORMAT_VERSION, HEADER_ENTRY, MAX_HEADER_BYTES, MAX_PART_BYTES, SIGNATURE_ENTRY,
    SIGNING_CONTEXT,
};
pub use error::UpdateError;
pub use keys::{generate_key_pair, PublicKey, SecretKey, PUBLIC_KEY_FILE, SECRET_KEY_FILE};
