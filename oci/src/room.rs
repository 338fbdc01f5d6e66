//! Room on a store's filesystem: what a pull or an unpack must leave free.
//!
//! A layer's compressed size says nothing of what it inflates to, and a registry's size claim
//! is not trusted either, so both the download and the unpack look at the filesystem itself
//! and stop while the host still has room for its logs and its containers' own writes.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The most room kept free on a store's filesystem.
const RESERVE_BYTES: u64 = 64 << 20;
/// The reserve as a share of the filesystem, one part in this many: a small store (a tmpfs in
/// a 256 MiB guest) can still take small images.
const RESERVE_SHARE: u64 = 16;
/// How many stream bytes an unpack reads between two looks at the free space.
const CHECK_STEP_BYTES: u64 = 4 << 20;

/// The room kept free on a store's filesystem of `total` bytes: 64 MiB, or a sixteenth of a
/// smaller filesystem.
pub fn store_reserve(total: u64) -> u64 {
    RESERVE_BYTES.min(total / RESERVE_SHARE)
}

/// Free space on a filesystem, beside the reserve it must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    /// What [`store_reserve`] keeps free there.
    pub reserve: u64,
}

impl Room {
    /// The free space and reserve of the filesystem holding `path`; `None` when the kernel
    /// gives no figure (then nothing is refused on its account).
    pub fn at(path: &Path) -> Option<Room> {
        let stat = nix::sys::statvfs::statvfs(path).ok()?;
        #[allow(clippy::useless_conversion, reason = "the field types differ by arch")]
        let block = u64::from(stat.fragment_size());
        #[allow(clippy::useless_conversion, reason = "the field types differ by arch")]
        let free = u64::from(stat.blocks_available()).saturating_mul(block);
        #[allow(clippy::useless_conversion, reason = "the field types differ by arch")]
        let total = u64::from(stat.blocks()).saturating_mul(block);
        Some(Room {
            free,
            reserve: store_reserve(total),
        })
    }

    /// Whether `bytes` more fit while the reserve stays free.
    pub fn fits(&self, bytes: u64) -> bool {
        bytes.saturating_add(self.reserve) <= self.free
    }
}

/// Passes a layer's uncompressed stream through, looking at the room left where it is
/// unpacked every few MiB, and fails every read once the filesystem is down to its reserve:
/// a decompression bomb stops there instead of filling the host's disk (or, on a tmpfs, its
/// memory). The stream's length stands for what is written, which it bounds but for metadata.
pub(crate) struct RoomGuard<R> {
    inner: R,
    dest: PathBuf,
    enabled: bool,
    unchecked: u64,
    /// The room seen when the guard stopped the stream.
    pub(crate) exhausted: Option<Room>,
}

impl<R: Read> RoomGuard<R> {
    pub(crate) fn new(inner: R, dest: &Path, enabled: bool) -> RoomGuard<R> {
        RoomGuard {
            inner,
            dest: dest.to_path_buf(),
            enabled,
            unchecked: 0,
            exhausted: None,
        }
    }

    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for RoomGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exhausted.is_some() {
            return Err(out_of_room());
        }
        let count = self.inner.read(buf)?;
        self.unchecked = self.unchecked.saturating_add(count as u64);
        if self.enabled && self.unchecked >= CHECK_STEP_BYTES {
            self.unchecked = 0;
            // The next step must fit too: the check runs before those bytes are written.
            if let Some(room) = Room::at(&self.dest).filter(|r| !r.fits(CHECK_STEP_BYTES)) {
                self.exhausted = Some(room);
                return Err(out_of_room());
            }
        }
        Ok(count)
    }
}

fn out_of_room() -> io::Error {
    io::Error::other("the layer's filesystem is down to its reserve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_store_keeps_the_full_reserve() {
        assert_eq!(store_reserve(20 << 30), RESERVE_BYTES);
    }

    #[test]
    fn a_small_store_keeps_a_sixteenth() {
        // A 128 MiB tmpfs (a 256 MiB guest) must still take a 1.4 MiB image.
        assert_eq!(store_reserve(128 << 20), 8 << 20);
        assert_eq!(store_reserve(0), 0);
    }

    #[test]
    fn room_fits_only_above_the_reserve() {
        let room = Room {
            free: 100,
            reserve: 60,
        };
        assert!(room.fits(40));
        assert!(!room.fits(41));
        assert!(!room.fits(u64::MAX));
    }

    #[test]
    fn the_guard_passes_a_stream_where_there_is_room() {
        let dir = std::env::temp_dir();
        let data = vec![7u8; (4 << 20) * 2 + 5];
        let mut guard = RoomGuard::new(&data[..], &dir, true);
        let mut out = Vec::new();
        guard.read_to_end(&mut out).ok();
        // The test machine's temporary directory has room for 8 MiB more than its reserve.
        assert_eq!(out.len(), data.len());
        assert!(guard.exhausted.is_none());
    }
}
