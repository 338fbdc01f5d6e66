//! Downloading one blob into the store: resumable, hashed as it arrives, verified before it
//! gets its name.
//!
//! An existing partial file is re-hashed and continued with `Range: bytes=N-`. A registry that
//! answers `200` instead of `206` sends the whole blob, so the partial file starts again from
//! zero; a `416` (the partial file is longer than the blob) discards it. A connection that
//! breaks off leaves what arrived in the partial file for the next try. A blob whose content
//! does not match its digest or size is discarded: when the download had resumed an older
//! partial file it is tried once more from zero (the old part may be what was wrong), and
//! otherwise reported.

use std::fs::File;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use berth_oci::Descriptor;
use nix::fcntl::Flock;
use sha2::{Digest as _, Sha256};

use crate::client::{wait_before_retry, BlobAnswer, Client};
use crate::store::{digest_of, discard, rehash, store_error, Store};
use crate::{Event, Reference, RegistryError};

/// How much is read from the network and written at a time.
const CHUNK_BYTES: usize = 64 << 10;
/// A download that brings fewer than [`STALL_MIN_BYTES`] in this long is broken off (and
/// retried): a registry that trickles a byte at a time never trips the per-read timeout, and
/// would hold the pull, and the containers waiting for it, for ever.
const STALL_WINDOW: Duration = Duration::from_secs(60);
/// The least a download brings in each [`STALL_WINDOW`]: 16 KiB a minute, far below any
/// working link.
const STALL_MIN_BYTES: u64 = 16 << 10;
/// Test rigs only: the stall window in seconds, so a test of a trickling registry takes
/// seconds, not minutes. Not for production use.
pub const STALL_WINDOW_ENV: &str = "BERTH_PULL_STALL_WINDOW_SECS";
/// A progress event every this many bytes.
const PROGRESS_STEP_BYTES: u64 = 16 << 20;
/// ...or after this long, whichever comes first.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A partial blob is synced to disk this often, so a power cut costs at most this much.
const SYNC_STEP_BYTES: u64 = 4 << 20;

/// Why one try at a blob failed, and what that means for the next.
enum Failure {
    /// The content is wrong: discard the partial file.
    Content { error: RegistryError, resumed: bool },
    /// The partial file cannot be continued: start again from zero at once.
    Restart { reason: &'static str },
    /// Anything else: retried after a wait when [`RegistryError::is_retryable`].
    Other(RegistryError),
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Failure {
        Failure::Other(error)
    }
}

/// Stores the blob a descriptor names, unless the store has it. Returns the bytes received.
pub(crate) fn fetch_blob(
    client: &mut Client,
    store: &Store,
    reference: &Reference,
    descriptor: &Descriptor,
    events: &mut dyn FnMut(Event),
) -> Result<u64, RegistryError> {
    let digest = &descriptor.digest;
    let size = descriptor.size;
    let present = Event::BlobPresent {
        digest: digest.clone(),
        size,
    };
    if store.has_blob(digest, size)? {
        events(present);
        return Ok(0);
    }
    check_room(store, digest, size)?;
    let Some(mut partial) = store.open_partial(digest, size)? else {
        events(present);
        return Ok(0);
    };
    let policy = client.retry_policy();
    let mut received = 0u64;
    let mut restarted_from_zero = false;
    let mut attempt = 1;
    loop {
        let failure = match try_download(
            client,
            store,
            reference,
            descriptor,
            &mut partial,
            &mut received,
            events,
        ) {
            Ok(()) => break,
            Err(failure) => failure,
        };
        let path = store.partial_path(digest);
        match failure {
            Failure::Content { error, resumed } => {
                discard(&mut partial, &path)?;
                if !resumed || restarted_from_zero {
                    return Err(error);
                }
                restarted_from_zero = true;
                events(Event::Restart {
                    digest: digest.clone(),
                    reason: error.to_string(),
                });
            }
            Failure::Restart { reason } => {
                discard(&mut partial, &path)?;
                if attempt >= policy.attempts {
                    return Err(RegistryError::CannotResume {
                        digest: digest.clone(),
                        reason,
                    });
                }
                attempt += 1;
                events(Event::Restart {
                    digest: digest.clone(),
                    reason: reason.to_string(),
                });
            }
            Failure::Other(error) if error.is_retryable() && attempt < policy.attempts => {
                wait_before_retry(policy, events, &digest.to_string(), attempt, &error);
                attempt += 1;
            }
            Failure::Other(error) => return Err(error),
        }
    }
    store.commit_partial(digest)?;
    events(Event::BlobDone {
        digest: digest.clone(),
        size,
    });
    Ok(received)
}

/// One request, streamed into the partial file, verified at the end.
fn try_download(
    client: &mut Client,
    store: &Store,
    reference: &Reference,
    descriptor: &Descriptor,
    partial: &mut Flock<File>,
    received: &mut u64,
    events: &mut dyn FnMut(Event),
) -> Result<(), Failure> {
    let digest = &descriptor.digest;
    let size = descriptor.size;
    let path = store.partial_path(digest);
    let (mut offset, mut hasher) = rehash(partial, &path)?;
    if offset > size {
        return Err(Failure::Restart {
            reason: "the partial file is longer than the blob",
        });
    }
    let mut resumed = offset > 0;
    if offset < size {
        events(Event::BlobStart {
            digest: digest.clone(),
            size,
            offset,
        });
        let (url, mut body) = match client.open_blob(reference, digest, offset)? {
            BlobAnswer::Rest { url, body } => (url, body),
            BlobAnswer::Whole { url, body } => {
                if offset > 0 {
                    discard(partial, &path)?;
                    offset = 0;
                    hasher = Sha256::new();
                    resumed = false;
                    events(Event::Restart {
                        digest: digest.clone(),
                        reason: "the registry ignored the Range request".to_string(),
                    });
                }
                (url, body)
            }
            BlobAnswer::RangeNotSatisfiable => {
                return Err(Failure::Restart {
                    reason: "the registry answered 416 to the Range request",
                })
            }
        };
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let window = stall_window();
        let mut window_started = Instant::now();
        let mut window_from = offset;
        let mut next_progress = offset + PROGRESS_STEP_BYTES;
        let mut progress_said = Instant::now();
        let mut next_sync = offset + SYNC_STEP_BYTES;
        loop {
            let count = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Failure::Other(RegistryError::ReadBody { url, source })),
            };
            if window_started.elapsed() >= window {
                if offset + count as u64 - window_from < STALL_MIN_BYTES {
                    return Err(Failure::Other(RegistryError::ReadBody {
                        url,
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "fewer than {STALL_MIN_BYTES} bytes in {} s: broken off",
                                window.as_secs()
                            ),
                        ),
                    }));
                }
                window_started = Instant::now();
                window_from = offset + count as u64;
            }
            let chunk = buffer.get(..count).unwrap_or_default();
            if offset + count as u64 > size {
                return Err(Failure::Content {
                    error: RegistryError::SizeMismatch {
                        digest: digest.clone(),
                        expected: size,
                        actual: offset + count as u64,
                    },
                    resumed,
                });
            }
            partial
                .write_all(chunk)
                .map_err(store_error("write", &path))?;
            hasher.update(chunk);
            offset += count as u64;
            *received += count as u64;
            if offset >= next_sync {
                next_sync = offset + SYNC_STEP_BYTES;
                // What is on disk survives a power cut and is resumed from: without this the
                // page cache holds it, and a cut loses everything since the last writeback.
                partial.sync_data().map_err(store_error("sync", &path))?;
            }
            // Every step, and every second of a slow download.
            if offset >= next_progress || progress_said.elapsed() >= PROGRESS_INTERVAL {
                next_progress = offset + PROGRESS_STEP_BYTES;
                progress_said = Instant::now();
                events(Event::BlobProgress {
                    digest: digest.clone(),
                    done: offset,
                    size,
                });
            }
        }
        if offset < size {
            return Err(Failure::Other(RegistryError::ReadBody {
                url,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the answer ended after {offset} of {size} bytes"),
                ),
            }));
        }
    }
    let actual = digest_of(hasher)?;
    if actual != *digest {
        return Err(Failure::Content {
            error: RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            },
            resumed,
        });
    }
    partial.sync_all().map_err(store_error("sync", &path))?;
    Ok(())
}

/// The stall window: [`STALL_WINDOW`], or the test rig's [`STALL_WINDOW_ENV`].
fn stall_window() -> Duration {
    std::env::var(STALL_WINDOW_ENV)
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(STALL_WINDOW, Duration::from_secs)
}

/// Refuses a blob larger than the store's filesystem has room for (a manifest may claim any
/// size; the registry is not trusted to stop at a sane one), before a byte is downloaded.
fn check_room(store: &Store, digest: &berth_oci::Digest, size: u64) -> Result<(), RegistryError> {
    let Some(room) = berth_oci::Room::at(store.root()) else {
        // No figure, no refusal: the download still stops at the claimed size.
        return Ok(());
    };
    if !room.fits(size) {
        return Err(RegistryError::NoRoom {
            digest: digest.clone(),
            size,
            free: room.free,
            reserve: room.reserve,
            store: store.root().to_path_buf(),
        });
    }
    Ok(())
}
