//! A newc cpio archive, gzip-compressed, as the kernel unpacks it into its rootfs.
//!
//! Entries are kept in memory in insertion order, parents added before children; owners are
//! root and timestamps fixed, so the same inputs give the same bytes.

use std::collections::BTreeSet;
use std::io::{Cursor, Write};

use cpio::newc::{Builder, ModeFileType};
use flate2::write::GzEncoder;
use flate2::Compression;

/// Fixed modification time of every entry, for reproducible archives.
const MTIME: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    File,
    CharDevice { major: u32, minor: u32 },
    Symlink,
}

#[derive(Debug)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    data: Vec<u8>,
}

/// An initramfs under construction.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
    directories: BTreeSet<String>,
}

fn relative(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl Initramfs {
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    /// Adds a directory and any missing parents.
    pub fn directory(&mut self, path: &str, mode: u32) -> &mut Self {
        let path = relative(path);
        if path.is_empty() || self.directories.contains(&path) {
            return self;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.directory(parent, 0o755);
        }
        self.directories.insert(path.clone());
        self.entries.push(Entry {
            path,
            kind: Kind::Directory,
            mode,
            data: Vec::new(),
        });
        self
    }

    fn leaf(&mut self, path: &str, kind: Kind, mode: u32, data: Vec<u8>) -> &mut Self {
        let path = relative(path);
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.directory(parent, 0o755);
        }
        self.entries.push(Entry {
            path,
            kind,
            mode,
            data,
        });
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> &mut Self {
        self.leaf(path, Kind::File, mode, data)
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.leaf(path, Kind::CharDevice { major, minor }, mode, Vec::new())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.leaf(path, Kind::Symlink, 0o777, target.as_bytes().to_vec())
    }

    /// Paths in archive order, for tests and listings.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str())
    }

    /// The uncompressed newc archive.
    pub fn to_cpio(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            let inode = u32::try_from(index + 1).map_err(std::io::Error::other)?;
            let file_type = match entry.kind {
                Kind::Directory => ModeFileType::Directory,
                Kind::File => ModeFileType::Regular,
                Kind::CharDevice { .. } => ModeFileType::Char,
                Kind::Symlink => ModeFileType::Symlink,
            };
            let mut builder = Builder::new(&entry.path)
                .ino(inode)
                .uid(0)
                .gid(0)
                .mtime(MTIME)
                .nlink(if entry.kind == Kind::Directory { 2 } else { 1 })
                .mode(entry.mode)
                .set_mode_file_type(file_type);
            if let Kind::CharDevice { major, minor } = entry.kind {
                builder = builder.rdev_major(major).rdev_minor(minor);
            }
            let size = u32::try_from(entry.data.len()).map_err(std::io::Error::other)?;
            let mut writer = builder.write(&mut out, size);
            writer.write_all(&entry.data)?;
            writer.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        Ok(out)
    }

    /// The gzip-compressed archive: every kernel berth supports unpacks gzip.
    pub fn to_gzip(&self) -> std::io::Result<Vec<u8>> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&self.to_cpio()?)?;
        encoder.finish()
    }
}

/// Lists (path, mode, data) of a newc archive; used by tests to read back what was written.
pub fn read_cpio(archive: &[u8]) -> std::io::Result<Vec<(String, u32, Vec<u8>)>> {
    let mut entries = Vec::new();
    let mut cursor = Cursor::new(archive);
    loop {
        let mut reader = cpio::newc::Reader::new(cursor)?;
        if reader.entry().is_trailer() {
            return Ok(entries);
        }
        let name = reader.entry().name().to_string();
        let mode = reader.entry().mode();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut data)?;
        entries.push((name, mode, data));
        cursor = reader.finish()?;
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_contents_round_trip() {
        let mut initramfs = Initramfs::new();
        initramfs
            .file(
                "/etc/berth/manifest.toml",
                0o644,
                b"hostname = \"a\"\n".to_vec(),
            )
            .char_device("/dev/console", 0o600, 5, 1)
            .file("/init", 0o755, b"\x7fELF".to_vec());
        let paths: Vec<&str> = initramfs.paths().collect();
        assert_eq!(
            paths,
            [
                "etc",
                "etc/berth",
                "etc/berth/manifest.toml",
                "dev",
                "dev/console",
                "init"
            ]
        );
        let entries = read_cpio(&initramfs.to_cpio().unwrap()).unwrap();
        let (_, mode, data) = entries.iter().find(|(p, _, _)| p == "init").unwrap();
        assert_eq!(
            (mode & 0o777, data.as_slice()),
            (0o755, b"\x7fELF".as_slice())
        );
        let (_, console_mode, _) = entries.iter().find(|(p, _, _)| p == "dev/console").unwrap();
        assert_eq!(console_mode & 0o170000, 0o020000, "a character device");
    }

    #[test]
    fn same_inputs_same_bytes() {
        let build = || {
            let mut i = Initramfs::new();
            i.file("/a/b", 0o644, vec![1, 2, 3]);
            i.to_gzip().unwrap()
        };
        assert_eq!(build(), build());
    }
}
