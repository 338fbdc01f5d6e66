//! What a tar entry's name means: where inside the layer it lands, and whether it is content,
//! an OCI whiteout, an opaque-directory marker, or AUFS bookkeeping to drop.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS's own files (`.wh..wh.plnk`, `.wh..wh.aufs`, ...) and the opaque marker share it.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The role of an entry, from its normalised path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryRole<'a> {
    /// A file, directory, link or node to create at the path (the empty path is the layer root).
    Content,
    /// `dir/.wh.NAME`: NAME existed in a lower layer and is deleted in this one.
    Whiteout { parent: &'a Path, hidden: &'a OsStr },
    /// `dir/.wh..wh..opq`: `dir` hides everything the lower layers have in it.
    OpaqueMarker { dir: &'a Path },
    /// AUFS bookkeeping that Docker once exported; meaningless to overlayfs.
    AufsMetadata,
}

/// The entry's path relative to the layer directory. A leading `./` or `/` is dropped, as every
/// tar does; anything still absolute after that, or any `..`, could reach outside the layer.
pub(crate) fn normalise(raw: &[u8]) -> Result<PathBuf, String> {
    let stripped = raw
        .strip_prefix(b"./")
        .or_else(|| raw.strip_prefix(b"/"))
        .unwrap_or(raw);
    if stripped.starts_with(b"/") {
        return Err("the path is absolute".to_string());
    }
    let mut relative = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(stripped)).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("the path contains a `..` component".to_string()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("the path is absolute".to_string())
            }
        }
    }
    Ok(relative)
}

/// Classifies a path that [`normalise`] returned.
pub(crate) fn role(relative: &Path) -> Result<EntryRole<'_>, String> {
    let Some(name) = relative.file_name() else {
        return Ok(EntryRole::Content);
    };
    let parent = relative.parent().unwrap_or(Path::new(""));
    for ancestor in parent.components() {
        let ancestor = ancestor.as_os_str().as_bytes();
        if ancestor.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(EntryRole::AufsMetadata);
        }
        if ancestor.starts_with(WHITEOUT_PREFIX) {
            return Err("a whiteout name is used as a directory".to_string());
        }
    }
    let name_bytes = name.as_bytes();
    if name_bytes == OPAQUE_MARKER {
        return Ok(EntryRole::OpaqueMarker { dir: parent });
    }
    if name_bytes.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(EntryRole::AufsMetadata);
    }
    match name_bytes.strip_prefix(WHITEOUT_PREFIX) {
        None => Ok(EntryRole::Content),
        Some(b"" | b"." | b"..") => Err("the whiteout names no file".to_string()),
        Some(hidden) => Ok(EntryRole::Whiteout {
            parent,
            hidden: OsStr::from_bytes(hidden),
        }),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn leading_dot_slash_and_slash_are_dropped() {
        assert_eq!(normalise(b"./etc/passwd").unwrap(), Path::new("etc/passwd"));
        assert_eq!(normalise(b"/etc/passwd").unwrap(), Path::new("etc/passwd"));
        assert_eq!(
            normalise(b"usr//bin/./sh").unwrap(),
            Path::new("usr/bin/sh")
        );
        assert_eq!(normalise(b"./").unwrap(), Path::new(""));
        assert_eq!(normalise(b".").unwrap(), Path::new(""));
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert!(normalise(b"../etc").unwrap_err().contains(".."));
        assert!(normalise(b"a/../../etc").unwrap_err().contains(".."));
        assert!(normalise(b"//etc/passwd").unwrap_err().contains("absolute"));
        assert!(normalise(b".//etc").unwrap_err().contains("absolute"));
    }

    #[test]
    fn whiteouts_and_markers_are_recognised() {
        assert_eq!(role(Path::new("etc/hosts")).unwrap(), EntryRole::Content);
        assert_eq!(role(Path::new("")).unwrap(), EntryRole::Content);
        assert_eq!(
            role(Path::new("etc/.wh.hosts")).unwrap(),
            EntryRole::Whiteout {
                parent: Path::new("etc"),
                hidden: OsStr::new("hosts")
            }
        );
        assert_eq!(
            role(Path::new(".wh.etc")).unwrap(),
            EntryRole::Whiteout {
                parent: Path::new(""),
                hidden: OsStr::new("etc")
            }
        );
        assert_eq!(
            role(Path::new("var/lib/.wh..wh..opq")).unwrap(),
            EntryRole::OpaqueMarker {
                dir: Path::new("var/lib")
            }
        );
        assert_eq!(
            role(Path::new(".wh..wh.plnk/123")).unwrap(),
            EntryRole::AufsMetadata
        );
        assert_eq!(
            role(Path::new(".wh..wh.aufs")).unwrap(),
            EntryRole::AufsMetadata
        );
        assert!(role(Path::new("a/.wh..")).is_err());
        assert!(role(Path::new("a/.wh.")).is_err());
        assert!(role(Path::new("a/.wh.b/c")).is_err());
    }
}
