//! The image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`)
//! that `berth_oci::Layout` reads, plus `partial/` for downloads in progress.
//!
//! Only a verified blob gets its final name: downloads go to `partial/<hex>`, are hashed as
//! they arrive, and are renamed into `blobs/sha256/` after their size and digest checked out
//! and the file was synced, the directory synced after the rename. So a power cut mid-pull
//! leaves at most a partial file, which the next pull re-hashes and resumes, and a name under
//! `blobs/` can be trusted by its size alone. `index.json` is replaced atomically (temporary
//! file, fsync, rename).
//!
//! Concurrency: a pull holds a shared `flock` on the store directory and [`gc`] an exclusive
//! one, so a collection never deletes the blobs of a pull in progress; `index.json` updates
//! are serialised by an exclusive lock on the `oci-layout` file (never replaced); each partial
//! file is locked while it is written, so two pulls of the same blob take turns.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_oci::{
    Descriptor, Digest, ImageIndex, ImageManifest, INDEX_FILE, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST,
    OCI_LAYOUT_FILE, OCI_LAYOUT_FILE_CONTENT,
};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::RegistryError;

/// Where downloads in progress live, inside the store.
pub const PARTIAL_DIR: &str = "partial";
/// The annotation recording what a stored image was pulled as: the normalised reference
/// pinned to the stored manifest's digest.
pub const PULLED_ANNOTATION: &str = "io.berth.image.pulled";
const BLOBS_DIR: &str = "blobs";
const SHA256_DIR: &str = "sha256";
const LAYOUT_VERSION: &str = "1.0.0";
/// How deep an index of indexes is followed when collecting (the store itself only ever
/// records manifests; a layout written by other tools may nest one level).
const MAX_INDEX_DEPTH: usize = 2;

/// Whether a lock on the store lets others hold it at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Pulls: several at once.
    Shared,
    /// Collection: alone.
    Exclusive,
}

/// An opened image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

impl Store {
    /// Opens the store at `root`, creating its directories, `oci-layout` and an empty
    /// `index.json` when they are missing.
    pub fn create(root: &Path) -> Result<Store, RegistryError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [store.sha256_dir(), store.partial_dir()] {
            fs::create_dir_all(&dir).map_err(store_error("create", &dir))?;
        }
        let marker = root.join(OCI_LAYOUT_FILE);
        if !marker.exists() {
            write_atomically(&marker, OCI_LAYOUT_FILE_CONTENT.as_bytes())?;
        }
        store.check_marker()?;
        let index = root.join(INDEX_FILE);
        if !index.exists() {
            let _lock = store.lock_index()?;
            if !index.exists() {
                store.write_index(&empty_index())?;
            }
        }
        Ok(store)
    }

    /// Opens an existing store; refuses a directory that is no image layout.
    pub fn open(root: &Path) -> Result<Store, RegistryError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        store.check_marker()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.sha256_dir().join(digest.hex())
    }

    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir().join(digest.hex())
    }

    fn sha256_dir(&self) -> PathBuf {
        self.root.join(BLOBS_DIR).join(SHA256_DIR)
    }

    fn partial_dir(&self) -> PathBuf {
        self.root.join(PARTIAL_DIR)
    }

    fn check_marker(&self) -> Result<(), RegistryError> {
        let path = self.root.join(OCI_LAYOUT_FILE);
        let data = fs::read(&path).map_err(|source| RegistryError::InvalidStore {
            path: path.clone(),
            reason: format!("not an image store: {source}"),
        })?;
        let marker: LayoutMarker =
            serde_json::from_slice(&data).map_err(|source| RegistryError::InvalidStore {
                path: path.clone(),
                reason: format!("invalid JSON: {source}"),
            })?;
        if marker.image_layout_version != LAYOUT_VERSION {
            return Err(RegistryError::InvalidStore {
                path,
                reason: format!(
                    "image layout version `{}`, expected {LAYOUT_VERSION}",
                    marker.image_layout_version
                ),
            });
        }
        Ok(())
    }

    /// Takes the store lock: shared for pulls, exclusive for collection. Held until dropped.
    pub fn lock(&self, mode: LockMode) -> Result<Flock<File>, RegistryError> {
        let arg = match mode {
            LockMode::Shared => FlockArg::LockShared,
            LockMode::Exclusive => FlockArg::LockExclusive,
        };
        lock_file(&self.root, arg)
    }

    fn lock_index(&self) -> Result<Flock<File>, RegistryError> {
        lock_file(&self.root.join(OCI_LAYOUT_FILE), FlockArg::LockExclusive)
    }

    /// Whether the blob is stored with the expected size. A blob of the wrong size can only
    /// come from outside berth (ours are verified before they get their name): it is removed,
    /// so it gets downloaded again.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> Result<bool, RegistryError> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(metadata) if metadata.len() == size => Ok(true),
            Ok(_) => {
                fs::remove_file(&path).map_err(store_error("remove the wrong-sized", &path))?;
                Ok(false)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(RegistryError::Store {
                action: "inspect",
                path,
                source,
            }),
        }
    }

    /// Stores a small blob held in memory (a manifest) after checking its digest.
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), RegistryError> {
        let actual = Digest::sha256_of(data);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.has_blob(digest, data.len() as u64)? {
            return Ok(());
        }
        let staging =
            self.partial_dir()
                .join(format!("{}.write-{}", digest.hex(), std::process::id()));
        write_synced(&staging, data)?;
        let path = self.blob_path(digest);
        fs::rename(&staging, &path).map_err(store_error("rename into place", &path))?;
        sync_dir(&self.sha256_dir())
    }

    /// The partial file of a blob, created if needed and locked against other pulls of the
    /// same blob; `None` when the blob got stored meanwhile (by the pull we waited for).
    pub(crate) fn open_partial(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<Flock<File>>, RegistryError> {
        let path = self.partial_path(digest);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(store_error("open", &path))?;
            let locked = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                RegistryError::Store {
                    action: "lock",
                    path: path.clone(),
                    source: io::Error::from(errno),
                }
            })?;
            if self.has_blob(digest, size)? {
                return Ok(None);
            }
            // The file we locked may have been renamed into place by the pull we waited for;
            // only the file still under the partial name is ours to write.
            let ours = locked.metadata().map_err(store_error("inspect", &path))?;
            match fs::metadata(&path) {
                Ok(current) if current.ino() == ours.ino() && current.dev() == ours.dev() => {
                    return Ok(Some(locked))
                }
                Ok(_) => continue,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(RegistryError::Store {
                        action: "inspect",
                        path,
                        source,
                    })
                }
            }
        }
    }

    /// Gives a verified, synced partial file its final name.
    pub(crate) fn commit_partial(&self, digest: &Digest) -> Result<(), RegistryError> {
        let from = self.partial_path(digest);
        let to = self.blob_path(digest);
        fs::rename(&from, &to).map_err(store_error("rename into place", &from))?;
        sync_dir(&self.sha256_dir())?;
        sync_dir(&self.partial_dir())
    }

    /// `index.json`, parsed.
    pub fn index(&self) -> Result<ImageIndex, RegistryError> {
        let path = self.root.join(INDEX_FILE);
        let data = fs::read(&path).map_err(store_error("read", &path))?;
        serde_json::from_slice(&data).map_err(|source| RegistryError::InvalidStore {
            path,
            reason: format!("invalid JSON: {source}"),
        })
    }

    /// Adds an image to `index.json`, replacing the entry with the same `ref.name`.
    pub fn record_image(&self, descriptor: Descriptor) -> Result<(), RegistryError> {
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        let name = descriptor.reference().map(str::to_string);
        index
            .manifests
            .retain(|entry| name.is_none() || entry.reference() != name.as_deref());
        index.manifests.push(descriptor);
        self.write_index(&index)
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), RegistryError> {
        let path = self.root.join(INDEX_FILE);
        let data = serde_json::to_vec(index).map_err(|source| RegistryError::InvalidStore {
            path: path.clone(),
            reason: format!("cannot serialise the index: {source}"),
        })?;
        write_atomically(&path, &data)
    }

    /// The blobs a manifest (or index) stored here refers to, itself included, with their
    /// sizes as the descriptors give them.
    fn referenced_blobs(
        &self,
        descriptor: &Descriptor,
        depth: usize,
        blobs: &mut BTreeMap<Digest, u64>,
    ) -> Result<(), RegistryError> {
        blobs.insert(descriptor.digest.clone(), descriptor.size);
        let path = self.blob_path(&descriptor.digest);
        let data = fs::read(&path).map_err(store_error("read the manifest", &path))?;
        let actual = Digest::sha256_of(&data);
        if actual != descriptor.digest {
            return Err(RegistryError::DigestMismatch {
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        let invalid = |source: serde_json::Error| RegistryError::InvalidStore {
            path: path.clone(),
            reason: format!("invalid manifest: {source}"),
        };
        match descriptor.media_type.as_str() {
            MEDIA_TYPE_IMAGE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
                let manifest: ImageManifest = serde_json::from_slice(&data).map_err(invalid)?;
                for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    blobs.insert(blob.digest.clone(), blob.size);
                }
                Ok(())
            }
            MEDIA_TYPE_IMAGE_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST if depth < MAX_INDEX_DEPTH => {
                let index: ImageIndex = serde_json::from_slice(&data).map_err(invalid)?;
                for entry in &index.manifests {
                    self.referenced_blobs(entry, depth + 1, blobs)?;
                }
                Ok(())
            }
            other => Err(RegistryError::InvalidStore {
                path,
                reason: format!(
                    "index entry of media type `{other}`: cannot tell which blobs it uses"
                ),
            }),
        }
    }

    /// Every file under `blobs/sha256/` named by a digest, with its size.
    fn stored_blobs(&self) -> Result<BTreeMap<Digest, u64>, RegistryError> {
        let dir = self.sha256_dir();
        let mut blobs = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(blobs),
            Err(source) => {
                return Err(RegistryError::Store {
                    action: "list",
                    path: dir,
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(store_error("list", &dir))?;
            let name = entry.file_name();
            // Files not named by a digest are not ours: leave them alone.
            let Some(digest) = name
                .to_str()
                .and_then(|hex| Digest::parse(&format!("{SHA256_DIR}:{hex}")).ok())
            else {
                continue;
            };
            let metadata = entry
                .metadata()
                .map_err(store_error("inspect", &entry.path()))?;
            if metadata.is_file() {
                blobs.insert(digest, metadata.len());
            }
        }
        Ok(blobs)
    }
}

/// What [`gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// The `ref.name`s dropped from `index.json`.
    pub removed_refs: Vec<String>,
    pub removed_blobs: Vec<Digest>,
    pub freed_bytes: u64,
    /// What the blobs left in the store add up to.
    pub kept_bytes: u64,
}

/// Drops the images whose `ref.name` is not in `keep_refs` from `index.json`, then deletes
/// every blob no remaining image uses (manifest, config, layers). Waits for pulls in
/// progress. `partial/` is left alone: its files are resumed by the next pull of their blob.
pub fn gc(store: &Path, keep_refs: &[String]) -> Result<GcReport, RegistryError> {
    let store = Store::open(store)?;
    let _alone = store.lock(LockMode::Exclusive)?;
    let mut index = store.index()?;
    let mut report = GcReport::default();
    let (kept, removed): (Vec<Descriptor>, Vec<Descriptor>) =
        index.manifests.into_iter().partition(|entry| {
            entry
                .reference()
                .is_some_and(|name| keep_refs.iter().any(|keep| keep == name))
        });
    index.manifests = kept;
    if !removed.is_empty() {
        report.removed_refs = removed
            .iter()
            .map(|entry| entry.reference().unwrap_or("<unnamed>").to_string())
            .collect();
        // The index first: a crash after it leaves unused blobs, never an image without
        // its blobs.
        let _index_lock = store.lock_index()?;
        store.write_index(&index)?;
    }

    let mut referenced = BTreeMap::new();
    for entry in &index.manifests {
        store.referenced_blobs(entry, 0, &mut referenced)?;
    }
    for (digest, size) in store.stored_blobs()? {
        if referenced.contains_key(&digest) {
            report.kept_bytes += size;
            continue;
        }
        let path = store.blob_path(&digest);
        fs::remove_file(&path).map_err(store_error("remove", &path))?;
        report.freed_bytes += size;
        report.removed_blobs.push(digest);
    }
    if !report.removed_blobs.is_empty() {
        sync_dir(&store.sha256_dir())?;
    }
    Ok(report)
}

/// One image's share of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageUsage {
    /// Its `ref.name`.
    pub reference: String,
    pub digest: Digest,
    /// Bytes of blobs only this image uses.
    pub unique_bytes: u64,
    /// Bytes of blobs it shares with other images.
    pub shared_bytes: u64,
}

/// What the store's images take up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub images: Vec<ImageUsage>,
    /// Every blob file in the store, each counted once.
    pub total_bytes: u64,
    /// Blobs no image uses (what [`gc`] would free with every image kept).
    pub unreferenced_bytes: u64,
}

/// The sizes of the store's images, unique and shared, and of the store.
pub fn usage(store: &Path) -> Result<Usage, RegistryError> {
    let store = Store::open(store)?;
    let _lock = store.lock(LockMode::Shared)?;
    let index = store.index()?;
    let mut per_image = Vec::new();
    let mut users: BTreeMap<Digest, usize> = BTreeMap::new();
    for entry in &index.manifests {
        let mut blobs = BTreeMap::new();
        store.referenced_blobs(entry, 0, &mut blobs)?;
        for digest in blobs.keys() {
            *users.entry(digest.clone()).or_default() += 1;
        }
        per_image.push((entry, blobs));
    }
    let images = per_image
        .into_iter()
        .map(|(entry, blobs)| {
            let (shared, unique): (Vec<_>, Vec<_>) = blobs
                .iter()
                .partition(|(digest, _)| users.get(*digest).copied().unwrap_or(0) > 1);
            ImageUsage {
                reference: entry.reference().unwrap_or_default().to_string(),
                digest: entry.digest.clone(),
                unique_bytes: unique.iter().map(|(_, size)| **size).sum(),
                shared_bytes: shared.iter().map(|(_, size)| **size).sum(),
            }
        })
        .collect();
    let stored = store.stored_blobs()?;
    let referenced: BTreeSet<&Digest> = users.keys().collect();
    Ok(Usage {
        images,
        total_bytes: stored.values().sum(),
        unreferenced_bytes: stored
            .iter()
            .filter(|(digest, _)| !referenced.contains(digest))
            .map(|(_, size)| size)
            .sum(),
    })
}

/// Hashes a partial file from its start and leaves its cursor at the end: where a resumed
/// download goes on, and the hash state to go on with.
pub(crate) fn rehash(file: &mut File, path: &Path) -> Result<(u64, Sha256), RegistryError> {
    file.seek(SeekFrom::Start(0))
        .map_err(store_error("rewind", path))?;
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let count = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(RegistryError::Store {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let chunk = buffer.get(..count).unwrap_or_default();
        hasher.update(chunk);
        length += count as u64;
    }
    Ok((length, hasher))
}

/// Empties a partial file, for a download that starts again from its first byte.
pub(crate) fn discard(file: &mut File, path: &Path) -> Result<(), RegistryError> {
    file.set_len(0).map_err(store_error("truncate", path))?;
    file.seek(SeekFrom::Start(0))
        .map(|_| ())
        .map_err(store_error("rewind", path))
}

/// The digest a finished hash stands for.
pub(crate) fn digest_of(hasher: Sha256) -> Result<Digest, RegistryError> {
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(Digest::parse(&format!("{SHA256_DIR}:{hex}"))?)
}

fn empty_index() -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_IMAGE_INDEX.to_string()),
        manifests: Vec::new(),
    }
}

fn lock_file(path: &Path, arg: FlockArg) -> Result<Flock<File>, RegistryError> {
    let file = File::open(path).map_err(store_error("open for locking", path))?;
    Flock::lock(file, arg).map_err(|(_, errno)| RegistryError::Store {
        action: "lock",
        path: path.to_path_buf(),
        source: io::Error::from(errno),
    })
}

/// Writes `data` beside `path` and renames it over `path`, syncing file and directory.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), RegistryError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write_synced(&staging, data)?;
    fs::rename(&staging, path).map_err(store_error("rename into place", path))?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), RegistryError> {
    let mut file = File::create(path).map_err(store_error("create", path))?;
    file.write_all(data).map_err(store_error("write", path))?;
    file.sync_all().map_err(store_error("sync", path))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(store_error("sync the directory", dir))
}

pub(crate) fn store_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Store {
        action,
        path: path.to_path_buf(),
        source,
    }
}
