//! `berth_oci::unpack_layer` on an uncompressed tar layer (its diff_id computed, so the unpack
//! runs to the end), as init unpacks pulled and baked layers. Besides not panicking: nothing
//! lands outside the layer directory (a sentinel file beside it keeps its content, mode,
//! times and link count, and the sandbox holds nothing new), and an unpacked layer holds no
//! `.wh.` name (every whiteout became an overlayfs one). The sandbox has a fixed path,
//! `/tmp/berth-fuzz-unpack`, so that seeds can aim absolute symlinks and hard links at it.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_oci::{unpack_layer, Digest, MEDIA_TYPE_LAYER_TAR};
use libfuzzer_sys::fuzz_target;

const SANDBOX: &str = "/tmp/berth-fuzz-unpack";
const SENTINEL: &str = "sentinel";
const SENTINEL_CONTENT: &[u8] = b"outside the layer\n";

fuzz_target!(|data: &[u8]| {
    let sandbox = Path::new(SANDBOX);
    let own = sandbox.join(std::process::id().to_string());
    let sentinel = sandbox.join(SENTINEL);
    fs::create_dir_all(&own).unwrap();
    if fs::read(&sentinel).ok().as_deref() != Some(SENTINEL_CONTENT) {
        fs::write(&sentinel, SENTINEL_CONTENT).unwrap();
    }
    let before = snapshot(&sentinel);
    let layer = own.join("layer");
    let _ = fs::remove_dir_all(&layer);

    let result = unpack_layer(data, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(data), &layer);
    if std::env::var_os("BERTH_FUZZ_SHOW").is_some() {
        // Replaying one input: what became of it.
        eprintln!("unpack: {result:?}");
    }

    assert_eq!(
        snapshot(&sentinel),
        before,
        "the sentinel beside the layer changed"
    );
    assert_eq!(
        fs::read(&sentinel).unwrap(),
        SENTINEL_CONTENT,
        "the sentinel was written to"
    );
    for entry in fs::read_dir(sandbox).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            name == SENTINEL || name.parse::<u32>().is_ok(),
            "`{name}` appeared in the sandbox"
        );
    }
    for entry in fs::read_dir(&own).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(name, "layer", "an entry landed beside the layer directory");
    }
    if result.is_ok() {
        let mut names = Vec::new();
        walk(&layer, &mut names);
        for path in names {
            assert!(
                !path
                    .file_name()
                    .unwrap()
                    .as_encoded_bytes()
                    .starts_with(b".wh."),
                "{} is left as a plain file",
                path.display()
            );
        }
    } else {
        assert!(!layer.exists(), "a failed unpack leaves its directory");
    }
    let _ = fs::remove_dir_all(&layer);
});

/// What a write, chmod, chown, utime or hard link through an escape would change.
fn snapshot(path: &Path) -> (u64, u32, u32, u32, u64, i64, i64, u64) {
    let m = fs::symlink_metadata(path).unwrap();
    (
        m.len(),
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
    )
}

/// Every path under `dir`, not following symlinks.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, out);
        }
        out.push(path);
    }
}
