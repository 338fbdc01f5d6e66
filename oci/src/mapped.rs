//! A blob mapped into memory instead of read into it: the image store's blobs live in the
//! root tmpfs (or on the data disk), so a mapping shares their pages with the page cache
//! rather than holding a second copy on the heap while a layer is unpacked. On a small host
//! the copy of a large layer was the largest allocation of a container start.

use std::fs::File;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A read-only, private mapping of a whole file.
#[derive(Debug)]
pub struct MappedBlob {
    /// None for an empty file, which cannot be mapped.
    mapping: Option<(NonNull<std::ffi::c_void>, NonZeroUsize)>,
}

impl MappedBlob {
    pub fn map(file: &File, len: u64) -> std::io::Result<MappedBlob> {
        let Some(len) = usize::try_from(len).ok().and_then(NonZeroUsize::new) else {
            return Ok(MappedBlob { mapping: None });
        };
        // SAFETY: a fresh read-only private mapping of a file we hold open, at an address the
        // kernel picks; no existing memory is touched. The store's blobs are never written in
        // place (a blob is only ever renamed into place whole), so the bytes stay as mapped.
        let address = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE,
                file,
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(MappedBlob {
            mapping: Some((address, len)),
        })
    }
}

impl Deref for MappedBlob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self.mapping {
            // SAFETY: the mapping is `len` readable bytes from `address` and lives as long as
            // `self`; nothing writes to it (PROT_READ, and the file is not written in place).
            Some((address, len)) => unsafe {
                std::slice::from_raw_parts(address.as_ptr().cast::<u8>(), len.get())
            },
            None => &[],
        }
    }
}

impl Drop for MappedBlob {
    fn drop(&mut self) {
        if let Some((address, len)) = self.mapping.take() {
            // SAFETY: unmaps exactly the mapping `map` made; no slice of it outlives `self`.
            let _ = unsafe { munmap(address, len.get()) };
        }
    }
}
