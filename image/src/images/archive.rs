//! `--image NAME:TAG=FILE`: an image archive, as `skopeo copy ... oci-archive:FILE:TAG`,
//! `skopeo copy ... docker-archive:FILE:NAME:TAG` and `docker save` write them, plain or
//! gzip-compressed, turned into an OCI image layout in a work directory of its own that
//! [`super::bake`] then reads like any other layout.
//!
//! What an archive is comes from its content, never from its name: gzip by its magic bytes, tar
//! by its `ustar` magic; a tar holding `oci-layout` is an OCI layout already (newer Docker writes
//! one beside `manifest.json`), one holding only `manifest.json` is a classic `docker save`
//! archive, converted by [`super::docker`].
//!
//! Members are unpacked under the work directory by their normalised names only: an absolute
//! name, a name or link leading out of the archive, or an entry that is neither file, directory
//! nor link refuses the archive. Links become hard links to the file they lead to, so nothing
//! on disk points outside the work directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use berth_oci::OCI_LAYOUT_FILE;
use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::{docker, ImageError};

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A tar archive is a sequence of 512-byte blocks, a header first.
const TAR_BLOCK: usize = 512;
/// Where a tar header's magic sits: `ustar` for POSIX ustar and pax, `ustar ` for GNU tar.
const USTAR_MAGIC_OFFSET: usize = 257;
const USTAR_MAGIC: &[u8] = b"ustar";
/// Links followed in a row before a member is taken for a loop.
const MAX_LINK_HOPS: usize = 16;
/// The list of images in a `docker save` archive.
pub(super) const DOCKER_MANIFEST: &str = "manifest.json";
/// Inside the work directory: the archive's members, and the layout converted from them.
const MEMBERS_DIR: &str = "archive";
const LAYOUT_DIR: &str = "layout";

/// A directory of its own under the import directory, removed with its contents when dropped.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(import_dir: &Path, archive: &Path) -> Result<WorkDir, ImageError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = import_dir.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let error = |source| ImageError::WorkDir {
            archive: archive.to_path_buf(),
            path: path.clone(),
            source,
        };
        // Left behind by an earlier process that had the same id and was killed.
        match fs::remove_dir_all(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(error(err)),
            _ => {}
        }
        fs::create_dir_all(&path).map_err(error)?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: a leftover only costs disk space under the cache, and the next process
        // with this id clears it.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// An archive imported as an OCI layout; the layout is removed when this is dropped.
#[derive(Debug)]
pub(super) struct Imported {
    _work: WorkDir,
    layout: PathBuf,
}

impl Imported {
    pub(super) fn layout(&self) -> &Path {
        &self.layout
    }
}

/// Imports the archive at `archive` into a fresh directory under `import_dir`. For a docker
/// archive, `name` (`NAME:TAG`) picks the image to convert and becomes its name in the layout;
/// without it every image is converted under the names its `RepoTags` give.
pub(super) fn import(
    archive: &Path,
    name: Option<&str>,
    import_dir: &Path,
) -> Result<Imported, ImageError> {
    let work = WorkDir::create(import_dir, archive)?;
    let members = Members::unpack(archive, &work.path.join(MEMBERS_DIR))?;
    let layout = if members.has(OCI_LAYOUT_FILE) {
        members.root.clone()
    } else if members.has(DOCKER_MANIFEST) {
        let layout = work.path.join(LAYOUT_DIR);
        docker::convert(&members, name, &layout)?;
        layout
    } else {
        return Err(ImageError::NotAnArchive {
            archive: archive.to_path_buf(),
            reason: "the tar archive holds neither `oci-layout` (an OCI archive) nor \
                     `manifest.json` (a docker save archive)",
        });
    };
    Ok(Imported {
        _work: work,
        layout,
    })
}

/// An archive's members unpacked under `root`, known by their normalised names (`a/b`).
#[derive(Debug)]
pub(super) struct Members {
    archive: PathBuf,
    root: PathBuf,
    files: BTreeSet<String>,
}

impl Members {
    /// Unpacks the archive's files and links under `root`.
    fn unpack(archive: &Path, root: &Path) -> Result<Members, ImageError> {
        let read_error = |source| ImageError::ReadArchive {
            archive: archive.to_path_buf(),
            source,
        };
        let mut members = Members {
            archive: archive.to_path_buf(),
            root: root.to_path_buf(),
            files: BTreeSet::new(),
        };
        members.create_dir(root)?;
        let mut tar = tar::Archive::new(open_tar_stream(archive)?);
        // Link name to the normalised name of what it points at.
        let mut links = BTreeMap::new();
        for entry in tar.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let entry_error = |reason: String| ImageError::ArchiveMember {
                archive: archive.to_path_buf(),
                member: raw_name.clone(),
                reason,
            };
            let kind = entry.header().entry_type();
            if kind == EntryType::XGlobalHeader {
                // pax metadata for the entries that follow, not a member.
                continue;
            }
            if raw_name.starts_with('/') {
                return Err(entry_error("an absolute name".to_string()));
            }
            let name = normalise(&[], &raw_name)
                .ok_or_else(|| entry_error("its name leads out of the archive".to_string()))?;
            match kind {
                EntryType::Directory => members.create_dir(&root.join(&name))?,
                EntryType::Regular | EntryType::Continuous => {
                    if name.is_empty() {
                        return Err(entry_error("a file without a name".to_string()));
                    }
                    let path = root.join(&name);
                    if let Some(parent) = path.parent() {
                        members.create_dir(parent)?;
                    }
                    let mut file = File::create(&path).map_err(|e| members.work_error(&path, e))?;
                    io::copy(&mut entry, &mut file).map_err(read_error)?;
                    links.remove(&name);
                    members.files.insert(name);
                }
                EntryType::Symlink | EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    // A hard link names its target from the archive's top, a symbolic link
                    // from the directory it sits in.
                    let base: Vec<&str> = match kind {
                        EntryType::Symlink => name.split('/').collect(),
                        _ => Vec::new(),
                    };
                    let base = base.split_last().map_or(&[][..], |(_, dir)| dir);
                    let target = Some(target)
                        .filter(|t| !t.starts_with('/'))
                        .and_then(|t| normalise(base, &t))
                        .ok_or_else(|| {
                            entry_error("a link that leads out of the archive".into())
                        })?;
                    members.files.remove(&name);
                    links.insert(name, target);
                }
                other => {
                    return Err(entry_error(format!(
                        "a {other:?} entry, which an image archive does not hold"
                    )))
                }
            }
        }
        members.link(&links)?;
        Ok(members)
    }

    /// Makes each link that ends at a file a hard link to it; a link leading nowhere stays
    /// absent, and whatever names it is then missing.
    fn link(&mut self, links: &BTreeMap<String, String>) -> Result<(), ImageError> {
        for (name, first) in links {
            let mut target = first;
            for _ in 0..MAX_LINK_HOPS {
                match links.get(target) {
                    Some(next) if !self.files.contains(target) => target = next,
                    _ => break,
                }
            }
            if !self.files.contains(target) {
                continue;
            }
            let path = self.root.join(name);
            if let Some(parent) = path.parent() {
                self.create_dir(parent)?;
            }
            let original = self.root.join(target);
            fs::hard_link(&original, &path)
                .or_else(|_| fs::copy(&original, &path).map(|_| ()))
                .map_err(|e| self.work_error(&path, e))?;
            self.files.insert(name.clone());
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> Result<(), ImageError> {
        fs::create_dir_all(path).map_err(|e| self.work_error(path, e))
    }

    pub(super) fn work_error(&self, path: &Path, source: io::Error) -> ImageError {
        ImageError::WorkDir {
            archive: self.archive.clone(),
            path: path.to_path_buf(),
            source,
        }
    }

    pub(super) fn archive(&self) -> &Path {
        &self.archive
    }

    fn has(&self, name: &str) -> bool {
        self.files.contains(name)
    }

    /// The unpacked file that `name` (as `named_by` writes it) stands for.
    pub(super) fn file(&self, name: &str, named_by: &str) -> Result<PathBuf, ImageError> {
        Some(name)
            .filter(|n| !n.starts_with('/'))
            .and_then(|n| normalise(&[], n))
            .filter(|n| self.files.contains(n))
            .map(|n| self.root.join(n))
            .ok_or_else(|| ImageError::MissingMember {
                archive: self.archive.clone(),
                member: name.to_string(),
                named_by: named_by.to_string(),
            })
    }

    /// The content of the member `name`.
    pub(super) fn read(&self, name: &str, named_by: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.file(name, named_by)?;
        fs::read(&path).map_err(|e| self.work_error(&path, e))
    }
}

/// The archive's tar stream: gunzipped when the file is gzip, and checked to be a tar.
fn open_tar_stream(archive: &Path) -> Result<impl Read, ImageError> {
    let read_error = |source| ImageError::ReadArchive {
        archive: archive.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(File::open(archive).map_err(read_error)?);
    let gzip = file
        .fill_buf()
        .map_err(read_error)?
        .starts_with(&GZIP_MAGIC);
    let mut stream: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let not_tar = || ImageError::NotAnArchive {
        archive: archive.to_path_buf(),
        reason: if gzip {
            "it is gzip-compressed, but not a tar archive"
        } else {
            "it is a file, but not a tar archive (nor a gzip-compressed one)"
        },
    };
    let mut header = vec![0u8; TAR_BLOCK];
    stream.read_exact(&mut header).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            not_tar()
        } else {
            read_error(err)
        }
    })?;
    if header.get(USTAR_MAGIC_OFFSET..USTAR_MAGIC_OFFSET + USTAR_MAGIC.len()) != Some(USTAR_MAGIC) {
        return Err(not_tar());
    }
    Ok(Cursor::new(header).chain(stream))
}

/// `name` as a relative name inside the archive (`a/b`), read from the directory `base`, with
/// `.`, `..` and repeated slashes resolved; `None` when it would leave the archive.
fn normalise(base: &[&str], name: &str) -> Option<String> {
    let mut parts: Vec<&str> = base.to_vec();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn names_are_normalised_inside_the_archive() {
        assert_eq!(normalise(&[], "./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalise(&["d"], "../x.tar").as_deref(), Some("x.tar"));
        assert_eq!(normalise(&[], "a/../../etc/passwd"), None);
        assert_eq!(normalise(&[], "./").as_deref(), Some(""));
    }
}
