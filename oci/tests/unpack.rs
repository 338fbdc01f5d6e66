//! Unpacking layers into overlayfs lower directories, through the public API. These tests run
//! as root: they create device nodes, chown files and set `trusted.*` xattrs.

#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test code: a failed check panics"
)]

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_oci::{
    layer_dir, unpack_layer, unpack_layer_into_store, unpack_layer_into_store_with_limits,
    unpack_layer_with_limits, Digest, OciError, UnpackLimits, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD,
};
use support::{gzip, lgetxattr, require_trusted_xattrs, zstd, LayerTar, Scratch, MTIME};
use tar::EntryType;

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn files_directories_links_and_nodes_keep_their_metadata() {
    let scratch = Scratch::new("metadata");
    let mut layer = LayerTar::new();
    layer
        .dir("./", 0o755)
        .dir("etc/", 0o750)
        .owned_file("etc/motd", 0o640, 1000, 100, b"hello\n")
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, b"\x7fELF")
        .owned_file("bin/su", 0o4755, 0, 0, b"su")
        .symlink("bin/sh", "busybox")
        .hardlink("bin/ls", "bin/busybox")
        // A directory listed after its children, with a restrictive mode and an old mtime.
        .file("opt/app/run", 0o700, b"#!/bin/sh\n")
        .dir_with("opt/app/", 0o2710, 1_000_000)
        .node("dev/null", EntryType::Char, 1, 3, 0o666)
        .node("dev/vda", EntryType::Block, 254, 0, 0o660)
        .node("run/fifo", EntryType::Fifo, 0, 0, 0o600);
    let tar = layer.finish();
    let diff_id = Digest::sha256_of(&tar);
    let dest = scratch.join("layer");

    let stats = unpack_layer(&gzip(&tar), MEDIA_TYPE_LAYER_TAR_GZIP, &diff_id, &dest).unwrap();
    assert_eq!(stats.entries, 13);
    assert_eq!(stats.bytes, tar.len() as u64);

    assert_eq!(mode_of(&dest.join("etc")), 0o750);
    let motd = fs::metadata(dest.join("etc/motd")).unwrap();
    assert_eq!(
        (motd.mode() & 0o7777, motd.uid(), motd.gid()),
        (0o640, 1000, 100)
    );
    assert_eq!(u64::try_from(motd.mtime()).unwrap(), MTIME);
    assert_eq!(fs::read(dest.join("etc/motd")).unwrap(), b"hello\n");
    assert_eq!(mode_of(&dest.join("bin/su")), 0o4755, "setuid bit kept");
    assert_eq!(
        fs::read_link(dest.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(dest.join("bin/ls")).unwrap().ino(),
        fs::metadata(dest.join("bin/busybox")).unwrap().ino(),
        "hard link shares the inode"
    );
    let app = fs::metadata(dest.join("opt/app")).unwrap();
    assert_eq!(
        app.mode() & 0o7777,
        0o2710,
        "late directory entry sets the mode"
    );
    assert_eq!(
        app.mtime(),
        1_000_000,
        "directory mtime survives its children"
    );
    assert_eq!(
        u64::try_from(fs::metadata(&dest).unwrap().mtime()).unwrap(),
        MTIME,
        "root entry applies"
    );

    let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (nix::sys::stat::makedev(1, 3), 0o666)
    );
    let vda = fs::symlink_metadata(dest.join("dev/vda")).unwrap();
    assert!(vda.file_type().is_block_device());
    assert_eq!(vda.rdev(), nix::sys::stat::makedev(254, 0));
    assert!(fs::symlink_metadata(dest.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

/// Found with the seed corpus of `fuzz/fuzz_targets/unpack.rs`: GNU tar (and Python's
/// tarfile) leave a fifo's device fields empty, NULs that do not read as a number, and the
/// whole layer was refused for it.
#[test]
fn a_fifo_without_device_numbers_is_unpacked() {
    let scratch = Scratch::new("gnu-fifo");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Fifo);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(0);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, "run/fifo", &b""[..])
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let dest = scratch.join("layer");

    unpack_layer(&tar, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(&tar), &dest).unwrap();

    assert!(fs::symlink_metadata(dest.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn whiteouts_become_overlayfs_whiteouts_and_opaque_directories() {
    let scratch = Scratch::new("whiteouts");
    require_trusted_xattrs(scratch.path());
    let mut layer = LayerTar::new();
    layer
        .dir("etc/", 0o755)
        .file("etc/.wh.hosts", 0o644, b"")
        .file("var/lib/.wh..wh..opq", 0o644, b"")
        .file("var/lib/kept", 0o644, b"same layer")
        .file(".wh..wh.aufs", 0o644, b"")
        .file(".wh..wh.plnk/1234", 0o644, b"aufs");
    let tar = layer.finish();
    let dest = scratch.join("layer");

    unpack_layer(&tar, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(&tar), &dest).unwrap();

    let hosts = fs::symlink_metadata(dest.join("etc/hosts")).unwrap();
    assert!(hosts.file_type().is_char_device(), "{hosts:?}");
    assert_eq!((hosts.rdev(), hosts.mode() & 0o7777), (0, 0));
    assert!(!dest.join("etc/.wh.hosts").exists());
    assert_eq!(
        lgetxattr(&dest.join("var/lib"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert!(!dest.join("var/lib/.wh..wh..opq").exists());
    assert_eq!(fs::read(dest.join("var/lib/kept")).unwrap(), b"same layer");
    assert!(lgetxattr(&dest.join("etc"), "trusted.overlay.opaque").is_err());
    let mut top: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["etc", "var"], "no whiteout or aufs files written");
}

#[test]
fn whiteouts_only_hide_lower_layers() {
    let scratch = Scratch::new("same-layer");
    require_trusted_xattrs(scratch.path());
    let mut layer = LayerTar::new();
    layer
        // An entry before its whiteout stays.
        .file("kept", 0o644, b"kept")
        .file(".wh.kept", 0o644, b"")
        // A directory recreated after its whiteout hides the lower one's content.
        .file(".wh.data", 0o644, b"")
        .dir("data/", 0o755)
        .file("data/new", 0o644, b"new")
        // So does one recreated implicitly, by a path under it.
        .file(".wh.cache", 0o644, b"")
        .file("cache/entry", 0o644, b"x");
    let tar = layer.finish();
    let dest = scratch.join("layer");

    unpack_layer(&tar, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(&tar), &dest).unwrap();

    assert_eq!(fs::read(dest.join("kept")).unwrap(), b"kept");
    for dir in ["data", "cache"] {
        assert!(
            fs::symlink_metadata(dest.join(dir)).unwrap().is_dir(),
            "{dir}"
        );
        assert_eq!(
            lgetxattr(&dest.join(dir), "trusted.overlay.opaque").unwrap(),
            b"y",
            "{dir}"
        );
    }
    assert_eq!(fs::read(dest.join("data/new")).unwrap(), b"new");
}

#[test]
fn entries_escaping_the_layer_are_refused_by_name() {
    for (name, reason) in [
        (&b"../evil"[..], "`..`"),
        (b"a/../../evil", "`..`"),
        (b"//etc/evil", "absolute"),
    ] {
        let scratch = Scratch::new("escape");
        let mut layer = LayerTar::new();
        layer.file("ok", 0o644, b"").raw_name(name);
        let tar = layer.finish();
        let dest = scratch.join("layer");

        let err =
            unpack_layer(&tar, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(&tar), &dest).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, OciError::UnsafeEntry { .. }), "{message}");
        assert!(
            message.contains(&format!("`{}`", String::from_utf8_lossy(name))),
            "{message}"
        );
        assert!(message.contains(reason), "{message}");
        assert!(!dest.exists(), "a failed unpack leaves no directory");
        assert!(!scratch.join("evil").exists());
    }
}

#[test]
fn symlinks_never_lead_outside_the_layer() {
    let scratch = Scratch::new("symlinks");
    let outside = scratch.join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_text = outside.to_str().unwrap();

    // A whiteout through a symlink is refused, even one that points inside the layer.
    let mut layer = LayerTar::new();
    layer
        .dir("real/", 0o755)
        .symlink("link", "real")
        .file("link/.wh.x", 0o644, b"");
    let tar = layer.finish();
    let err = unpack_layer(
        &tar,
        MEDIA_TYPE_LAYER_TAR,
        &Digest::sha256_of(&tar),
        &scratch.join("a"),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("`link/.wh.x`") && message.contains("symlink"),
        "{message}"
    );

    // So are files, opaque markers and device nodes through a symlink out of the layer.
    for entry in [
        "escape/file",
        "escape/.wh..wh..opq",
        "escape/.wh.file",
        "escape/fifo",
    ] {
        let mut layer = LayerTar::new();
        layer.symlink("escape", outside_text);
        if entry.ends_with("fifo") {
            layer.node(entry, EntryType::Fifo, 0, 0, 0o644);
        } else {
            layer.file(entry, 0o644, b"");
        }
        let tar = layer.finish();
        let dest = scratch.join("b");
        let err =
            unpack_layer(&tar, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(&tar), &dest).unwrap_err();
        assert!(err.to_string().contains(&format!("`{entry}`")), "{err}");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "{entry} wrote outside"
        );
        assert!(
            lgetxattr(&outside, "trusted.overlay.opaque").is_err(),
            "{entry}"
        );
        assert!(!dest.exists());
    }
}

#[test]
fn zstd_layers_and_trailing_padding_are_hashed_whole() {
    let scratch = Scratch::new("zstd");
    let mut layer = LayerTar::new();
    layer.file("hello", 0o644, b"hello from zstd");
    let mut tar = layer.finish();
    // Some writers pad the archive past its end marker; diff_id covers the padding too.
    tar.extend_from_slice(&[0u8; 4096]);
    let dest = scratch.join("layer");

    let stats = unpack_layer(
        &zstd(&tar),
        MEDIA_TYPE_LAYER_TAR_ZSTD,
        &Digest::sha256_of(&tar),
        &dest,
    )
    .unwrap();
    assert_eq!(stats.bytes, tar.len() as u64);
    assert_eq!(fs::read(dest.join("hello")).unwrap(), b"hello from zstd");
}

#[test]
fn docker_gzip_layers_are_accepted_and_unknown_media_types_named() {
    let scratch = Scratch::new("media-types");
    let mut layer = LayerTar::new();
    layer.file("f", 0o644, b"");
    let tar = layer.finish();
    let diff_id = Digest::sha256_of(&tar);
    let docker = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    unpack_layer(&gzip(&tar), docker, &diff_id, &scratch.join("docker")).unwrap();

    let bzip2 = "application/vnd.oci.image.layer.v1.tar+bzip2";
    let err = unpack_layer(&tar, bzip2, &diff_id, &scratch.join("bzip2")).unwrap_err();
    assert!(err.to_string().contains(bzip2), "{err}");
    assert!(!scratch.join("bzip2").exists());
}

#[test]
fn an_existing_destination_is_refused_and_left_alone() {
    let scratch = Scratch::new("existing");
    let dest = scratch.join("layer");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("mine"), b"keep").unwrap();
    let tar = LayerTar::new().finish();
    let err =
        unpack_layer(&tar, MEDIA_TYPE_LAYER_TAR, &Digest::sha256_of(&tar), &dest).unwrap_err();
    assert!(matches!(err, OciError::CreateLayerDir { .. }), "{err}");
    assert_eq!(fs::read(dest.join("mine")).unwrap(), b"keep");
}

#[test]
fn store_unpacks_a_layer_once() {
    let scratch = Scratch::new("store");
    let store = scratch.join("store");
    let mut layer = LayerTar::new();
    layer
        .dir("etc/", 0o755)
        .file("etc/os-release", 0o644, b"ID=berth\n");
    let tar = layer.finish();
    let blob = gzip(&tar);
    let diff_id = Digest::sha256_of(&tar);

    assert!(unpack_layer_into_store(&blob, MEDIA_TYPE_LAYER_TAR_GZIP, &diff_id, &store).unwrap());
    let dir = layer_dir(&store, &diff_id);
    assert_eq!(dir, store.join("sha256").join(diff_id.hex()));
    assert_eq!(fs::read(dir.join("etc/os-release")).unwrap(), b"ID=berth\n");
    assert!(!unpack_layer_into_store(&blob, MEDIA_TYPE_LAYER_TAR_GZIP, &diff_id, &store).unwrap());
    assert_eq!(
        fs::read_dir(store.join("sha256")).unwrap().count(),
        1,
        "no partial left"
    );
}

#[test]
fn diff_id_mismatch_leaves_nothing_in_the_store() {
    let scratch = Scratch::new("mismatch");
    let store = scratch.join("store");
    let mut layer = LayerTar::new();
    layer.file("f", 0o644, b"content");
    let tar = layer.finish();
    let wrong = Digest::sha256_of(b"something else");

    let err = unpack_layer_into_store(&gzip(&tar), MEDIA_TYPE_LAYER_TAR_GZIP, &wrong, &store)
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, OciError::DiffIdMismatch { .. }), "{message}");
    assert!(message.contains(&wrong.to_string()), "{message}");
    assert!(
        message.contains(&Digest::sha256_of(&tar).to_string()),
        "{message}"
    );
    assert!(!layer_dir(&store, &wrong).exists());
    assert_eq!(
        fs::read_dir(store.join("sha256")).unwrap().count(),
        0,
        "no partial left"
    );
}

#[test]
fn corrupt_compressed_data_is_a_read_error() {
    let scratch = Scratch::new("corrupt");
    let mut layer = LayerTar::new();
    layer.file("f", 0o644, &[5u8; 10_000]);
    let tar = layer.finish();
    let mut blob = gzip(&tar);
    let middle = blob.len() / 2;
    blob[middle] ^= 0xff;
    let dest = scratch.join("layer");
    let err = unpack_layer(
        &blob,
        MEDIA_TYPE_LAYER_TAR_GZIP,
        &Digest::sha256_of(&tar),
        &dest,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            OciError::ReadLayer { .. }
                | OciError::UnpackEntry { .. }
                | OciError::DiffIdMismatch { .. }
        ),
        "{err}"
    );
    assert!(!dest.exists());
}

fn limits(max_bytes: u64, max_entries: u64) -> UnpackLimits {
    UnpackLimits {
        max_bytes,
        max_entries,
        keep_reserve: true,
    }
}

#[test]
fn a_layer_with_more_entries_than_the_limit_is_refused() {
    let scratch = Scratch::new("entries");
    let mut layer = LayerTar::new();
    for i in 0..5 {
        layer.file(&format!("f{i}"), 0o644, b"x");
    }
    let tar = layer.finish();
    let diff_id = Digest::sha256_of(&tar);

    let dest = scratch.join("four");
    let err = unpack_layer_with_limits(
        &tar,
        MEDIA_TYPE_LAYER_TAR,
        &diff_id,
        &dest,
        &limits(u64::MAX, 4),
    )
    .unwrap_err();
    assert!(
        matches!(err, OciError::TooManyEntries { limit: 4, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&diff_id.to_string()), "{message}");
    assert!(message.contains("more than 4 entries"), "{message}");
    assert!(!dest.exists(), "nothing left of the refused layer");

    // Exactly at the limit is fine.
    let dest = scratch.join("five");
    let stats = unpack_layer_with_limits(
        &tar,
        MEDIA_TYPE_LAYER_TAR,
        &diff_id,
        &dest,
        &limits(u64::MAX, 5),
    )
    .unwrap();
    assert_eq!(stats.entries, 5);
}

#[test]
fn a_layer_that_inflates_past_the_byte_limit_is_refused() {
    let scratch = Scratch::new("bytes");
    let mut layer = LayerTar::new();
    layer.file("zeros", 0o644, &vec![0u8; 1 << 20]);
    let tar = layer.finish();
    let blob = gzip(&tar);
    assert!(blob.len() < 16 << 10, "a small blob: {} bytes", blob.len());
    let diff_id = Digest::sha256_of(&tar);
    let size = tar.len() as u64;

    let dest = scratch.join("small");
    let err = unpack_layer_with_limits(
        &blob,
        MEDIA_TYPE_LAYER_TAR_GZIP,
        &diff_id,
        &dest,
        &limits(64 << 10, u64::MAX),
    )
    .unwrap_err();
    assert!(
        matches!(err, OciError::LayerTooLarge { limit, .. } if limit == 64 << 10),
        "{err}"
    );
    assert!(err.to_string().contains(&diff_id.to_string()), "{err}");
    assert!(!dest.exists(), "nothing left of the refused layer");

    // One byte short of the stream is refused too, the whole stream is not.
    let err = unpack_layer_with_limits(
        &blob,
        MEDIA_TYPE_LAYER_TAR_GZIP,
        &diff_id,
        &scratch.join("short"),
        &limits(size - 1, u64::MAX),
    )
    .unwrap_err();
    assert!(matches!(err, OciError::LayerTooLarge { .. }), "{err}");
    let stats = unpack_layer_with_limits(
        &blob,
        MEDIA_TYPE_LAYER_TAR_GZIP,
        &diff_id,
        &scratch.join("exact"),
        &limits(size, u64::MAX),
    )
    .unwrap();
    assert_eq!(stats.bytes, size);
}

#[test]
fn a_refused_layer_leaves_nothing_in_the_store_and_stale_partials_go() {
    let scratch = Scratch::new("store-limits");
    let store = scratch.join("store");
    let mut layer = LayerTar::new();
    layer.file("a", 0o644, b"a").file("b", 0o644, b"b");
    let tar = layer.finish();
    let diff_id = Digest::sha256_of(&tar);
    // What an unpacker killed past its time limit left: its process is gone.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = store
        .join("sha256")
        .join(format!(".{}.partial-{dead_pid}", diff_id.hex()));
    fs::create_dir_all(stale.join("half")).unwrap();

    let err = unpack_layer_into_store_with_limits(
        &tar,
        MEDIA_TYPE_LAYER_TAR,
        &diff_id,
        &store,
        &limits(u64::MAX, 1),
    )
    .unwrap_err();
    assert!(matches!(err, OciError::TooManyEntries { .. }), "{err}");
    assert!(!layer_dir(&store, &diff_id).exists());
    assert_eq!(
        fs::read_dir(store.join("sha256")).unwrap().count(),
        0,
        "neither a partial nor the stale one left"
    );

    let stats = unpack_layer_into_store_with_limits(
        &tar,
        MEDIA_TYPE_LAYER_TAR,
        &diff_id,
        &store,
        &UnpackLimits::default(),
    )
    .unwrap()
    .unwrap();
    assert_eq!((stats.entries, stats.bytes), (2, tar.len() as u64));
    assert!(layer_dir(&store, &diff_id).join("b").is_file());
}

#[test]
fn a_corrupt_gzip_stream_names_the_layer_and_the_reason() {
    let scratch = Scratch::new("corrupt-gzip");
    // A gzip header, then a deflate block of the reserved type 3.
    let blob = [
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let diff_id = Digest::sha256_of(b"never compared");
    let store = scratch.join("store");
    let err =
        unpack_layer_into_store(&blob, MEDIA_TYPE_LAYER_TAR_GZIP, &diff_id, &store).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, OciError::ReadLayer { .. }), "{message}");
    assert!(message.contains(&diff_id.to_string()), "{message}");
    assert!(message.contains("corrupt deflate stream"), "{message}");
    assert_eq!(fs::read_dir(store.join("sha256")).unwrap().count(), 0);
}
