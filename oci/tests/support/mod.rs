//! Helpers shared by the integration tests: scratch directories, layers built in memory, and
//! reading back what unpacking wrote.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

pub const MTIME: u64 = 1_700_000_000;

/// A scratch directory under the system temp dir, removed when dropped.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("berth-oci-test-{label}-"))
                .tempdir()
                .unwrap(),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.0.path().join(relative)
    }
}

/// A layer's tar stream, built entry by entry.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        LayerTar::new()
    }
}

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(0);
        header
    }

    fn append(&mut self, mut header: Header, path: &str, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append(Self::header(EntryType::Directory, mode), path, b"")
    }

    pub fn dir_with(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        let mut header = Self::header(EntryType::Directory, mode);
        header.set_mtime(mtime);
        self.append(header, path, b"")
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.append(Self::header(EntryType::Regular, mode), path, data)
    }

    pub fn owned_file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, mode);
        header.set_uid(uid);
        header.set_gid(gid);
        self.append(header, path, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(EntryType::Symlink, 0o777);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(EntryType::Link, 0o644);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn node(
        &mut self,
        path: &str,
        kind: EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let mut header = Self::header(kind, mode);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.append(header, path, b"")
    }

    /// A regular file whose name is written as is: the tar crate's own writer refuses `..`
    /// and absolute names, which is exactly what these tests need to feed the unpacker.
    pub fn raw_name(&mut self, name: &[u8]) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, 0o644);
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
        header.set_cksum();
        self.builder.append(&header, io::empty()).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// The value of extended attribute `name` on `path` itself, or the OS error.
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut value = vec![0u8; 256];
    // SAFETY: `path` and `name` are NUL-terminated and outlive the call; the buffer pointer and
    // length describe `value` exactly, and the kernel writes at most that many bytes into it.
    let length = unsafe {
        nix::libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if length < 0 {
        return Err(io::Error::last_os_error());
    }
    value.truncate(usize::try_from(length).unwrap());
    Ok(value)
}

/// Fails with an explanation when `dir`'s filesystem cannot hold `trusted.*` xattrs (they need
/// root, and a filesystem such as ext4, xfs, btrfs or tmpfs), instead of letting an opaque
/// directory test fail with a bare "operation not supported".
pub fn require_trusted_xattrs(dir: &Path) {
    let probe = dir.join("xattr-probe");
    std::fs::create_dir(&probe).unwrap();
    let path = CString::new(probe.as_os_str().as_bytes()).unwrap();
    // SAFETY: as in `lgetxattr`: NUL-terminated strings and a value buffer described exactly,
    // which the kernel only reads.
    let result = unsafe {
        nix::libc::lsetxattr(
            path.as_ptr(),
            c"trusted.probe".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    let error = io::Error::last_os_error();
    std::fs::remove_dir(&probe).unwrap();
    assert!(
        result == 0,
        "cannot set trusted.* xattrs in {} ({error}): these tests need root and a filesystem \
         with trusted xattrs; point TMPDIR at one (ext4, xfs, btrfs, tmpfs)",
        dir.display()
    );
}
