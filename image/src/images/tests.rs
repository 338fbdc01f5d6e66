//! Image archives built here by hand, the way `docker save` and `skopeo copy ...
//! oci-archive:` lay them out, imported and read back with berth-oci's layout reader.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_oci::{
    index_json, Descriptor, Digest, ImageManifest, Layout, MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_LAYER_TAR_GZIP, OCI_LAYOUT_FILE_CONTENT,
};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::*;

const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// A scratch directory under the system temp dir, removed when dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(label: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("berth-image-archive-{label}-"))
                .tempdir()
                .unwrap(),
        )
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// A tar archive built member by member.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, size: usize) -> Header {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(0);
        header.set_size(size as u64);
        header
    }

    fn file(mut self, name: &str, data: &[u8]) -> Tar {
        let mut header = Tar::header(EntryType::Regular, data.len());
        self.0.append_data(&mut header, name, data).unwrap();
        self
    }

    fn dir(mut self, name: &str) -> Tar {
        let mut header = Tar::header(EntryType::Directory, 0);
        self.0.append_data(&mut header, name, &[][..]).unwrap();
        self
    }

    fn symlink(mut self, name: &str, target: &str) -> Tar {
        let mut header = Tar::header(EntryType::Symlink, 0);
        self.0.append_link(&mut header, name, target).unwrap();
        self
    }

    /// A file whose name is written as is: the tar crate refuses `..` in names it writes.
    fn raw_file(mut self, name: &str, data: &[u8]) -> Tar {
        let mut header = Tar::header(EntryType::Regular, data.len());
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

/// A layer tar holding one file.
fn layer(name: &str, content: &str) -> Vec<u8> {
    Tar::new().file(name, content.as_bytes()).finish()
}

fn config(arch: &str, diff_ids: &[Digest]) -> Vec<u8> {
    let diff_ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["sh"],"Env":null}},
            "rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[]}}"#,
        diff_ids.join(",")
    )
    .into_bytes()
}

/// One image of a docker save archive: its config and layer tars.
struct Saved {
    tags: Vec<&'static str>,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

impl Saved {
    fn new(tags: &[&'static str], arch: &str, layers: Vec<Vec<u8>>) -> Saved {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::sha256_of(l)).collect();
        Saved {
            tags: tags.to_vec(),
            config: config(arch, &diff_ids),
            layers,
        }
    }
}

/// A docker save archive as skopeo's `docker-archive:` writes it: `<digest>.tar` layers,
/// `<digest>.json` configs, and `<layer id>/layer.tar` symbolic links that `manifest.json`
/// names (classic `docker save` puts the tar itself there).
fn docker_archive(images: &[Saved]) -> Vec<u8> {
    let mut tar = Tar::new();
    let mut manifest = Vec::new();
    for image in images {
        let mut layer_names = Vec::new();
        for layer in &image.layers {
            let hex = Digest::sha256_of(layer).hex().to_string();
            let id = Digest::sha256_of(hex.as_bytes()).hex().to_string();
            tar = tar
                .file(&format!("{hex}.tar"), layer)
                .dir(&id)
                .symlink(&format!("{id}/layer.tar"), &format!("../{hex}.tar"));
            layer_names.push(format!("{id}/layer.tar"));
        }
        let config_name = format!("{}.json", Digest::sha256_of(&image.config).hex());
        tar = tar.file(&config_name, &image.config);
        manifest.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": image.tags,
            "Layers": layer_names,
        }));
    }
    tar.file(
        "manifest.json",
        &serde_json::to_vec(&serde_json::Value::Array(manifest)).unwrap(),
    )
    .finish()
}

/// An OCI layout as a list of members: one image with one gzip layer, named `reference`.
fn oci_layout_members(reference: &str, arch: &str, layer_tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let blob = |media_type: &str, data: &[u8]| Descriptor {
        media_type: media_type.to_string(),
        digest: Digest::sha256_of(data),
        size: data.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let layer_blob = gzip(layer_tar);
    let config = config(arch, &[Digest::sha256_of(layer_tar)]);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_IMAGE_MANIFEST.to_string()),
        config: blob(CONFIG_MEDIA_TYPE, &config),
        layers: vec![blob(MEDIA_TYPE_LAYER_TAR_GZIP, &layer_blob)],
    };
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let index = index_json(&[(
        reference.to_string(),
        blob(MEDIA_TYPE_IMAGE_MANIFEST, &manifest),
    )]);
    let mut members = vec![
        (
            "oci-layout".to_string(),
            OCI_LAYOUT_FILE_CONTENT.as_bytes().to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for data in [layer_blob, config, manifest] {
        let name = format!("blobs/sha256/{}", Digest::sha256_of(&data).hex());
        members.push((name, data));
    }
    members
}

/// An oci-archive as skopeo writes it: the layout's directories and files.
fn oci_archive(reference: &str, arch: &str, layer_tar: &[u8]) -> Vec<u8> {
    let mut tar = Tar::new().dir("blobs/").dir("blobs/sha256/");
    for (name, data) in oci_layout_members(reference, arch, layer_tar) {
        tar = tar.file(&name, &data);
    }
    tar.finish()
}

fn write(scratch: &Scratch, name: &str, data: &[u8]) -> PathBuf {
    let path = scratch.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// The only layer of `reference` in the layout at `dir`, uncompressed, after checking that it
/// is a gzip blob whose content is its diff_id.
fn only_layer(dir: &Path, reference: &str) -> Vec<u8> {
    let layout = Layout::open(dir).unwrap();
    let image = layout.resolve(reference).unwrap();
    let layers: Vec<_> = image.layers().collect();
    assert_eq!(layers.len(), 1);
    let (descriptor, diff_id) = layers[0];
    assert_eq!(descriptor.media_type, MEDIA_TYPE_LAYER_TAR_GZIP);
    let tar = gunzip(&layout.read_descriptor(descriptor).unwrap());
    assert_eq!(Digest::sha256_of(&tar), *diff_id);
    tar
}

#[test]
fn docker_save_archive_becomes_a_layout_with_gzip_layers() {
    let scratch = Scratch::new("docker");
    let layer_tar = layer("hello", "from docker");
    let saved = Saved::new(
        &["docker.io/library/busybox-save:1"],
        "amd64",
        vec![layer_tar.clone()],
    );
    let archive = docker_archive(std::slice::from_ref(&saved));
    // By content, not by name: neither file is called .tar.
    for (file, data) in [
        ("plain.img", archive.clone()),
        ("packed.img", gzip(&archive)),
    ] {
        let path = write(&scratch, file, &data);
        let imported =
            archive::import(&path, Some("busybox-save:1"), &scratch.join("work")).unwrap();
        assert_eq!(only_layer(imported.layout(), "busybox-save:1"), layer_tar);
        let layout = Layout::open(imported.layout()).unwrap();
        let image = layout.resolve("busybox-save:1").unwrap();
        assert_eq!(image.config_digest, Digest::sha256_of(&saved.config));
        assert_eq!(image.manifest.config.media_type, CONFIG_MEDIA_TYPE);
        assert_eq!(
            image.manifest.media_type.as_deref(),
            Some(MEDIA_TYPE_IMAGE_MANIFEST)
        );
        assert_eq!(image.config.architecture, "amd64");
        let work = imported.layout().parent().unwrap().to_path_buf();
        drop(imported);
        assert!(!work.exists(), "{} is left behind", work.display());
    }
}

#[test]
fn docker_archive_images_are_picked_by_name_then_tag_or_all_taken() {
    let scratch = Scratch::new("docker-two");
    let images = [
        Saved::new(
            &["docker.io/library/web:1"],
            "amd64",
            vec![layer("w", "web")],
        ),
        Saved::new(
            &["db:2", "db:latest"],
            "amd64",
            vec![layer("d", "db"), layer("e", "db too")],
        ),
    ];
    let path = write(&scratch, "two", &docker_archive(&images));
    let work = scratch.join("work");

    let imported = archive::import(&path, Some("mine:2"), &work).unwrap();
    let layout = Layout::open(imported.layout()).unwrap();
    assert_eq!(layout.references(), ["mine:2"]);
    let db = layout.resolve("mine:2").unwrap();
    assert_eq!(db.config_digest, Digest::sha256_of(&images[1].config));
    assert_eq!(db.manifest.layers.len(), 2);

    let imported = archive::import(&path, None, &work).unwrap();
    let layout = Layout::open(imported.layout()).unwrap();
    assert_eq!(layout.references(), ["web:1", "db:2", "db:latest"]);
    assert_eq!(only_layer(imported.layout(), "web:1"), layer("w", "web"));

    let err = archive::import(&path, Some("cache:7"), &work).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("image archive {}", path.display()))
            && message.contains("web:1, db:2, db:latest"),
        "{message}"
    );
}

#[test]
fn docker_layer_that_differs_from_its_diff_id_is_refused() {
    let scratch = Scratch::new("docker-bad");
    let mut saved = Saved::new(&["web:1"], "amd64", vec![layer("a", "original")]);
    saved.config = config("amd64", &[Digest::sha256_of(b"something else")]);
    let path = write(&scratch, "bad.tar", &docker_archive(&[saved]));
    let err = archive::import(&path, Some("web:1"), &scratch.join("work")).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("/layer.tar hashes to"),
        "{message}"
    );
}

#[test]
fn oci_archive_is_read_as_the_layout_it_holds() {
    let scratch = Scratch::new("oci");
    let layer_tar = layer("hello", "from oci");
    let archive = oci_archive("1", "arm64", &layer_tar);
    let path = write(&scratch, "oci.tar.gz", &gzip(&archive));
    let imported = archive::import(&path, Some("busybox-oci:1"), &scratch.join("work")).unwrap();
    assert_eq!(only_layer(imported.layout(), "1"), layer_tar);
    assert_eq!(
        Layout::open(imported.layout())
            .unwrap()
            .resolve("1")
            .unwrap()
            .config
            .architecture,
        "arm64"
    );
}

#[test]
fn newer_docker_save_with_an_oci_layout_is_an_oci_archive() {
    let scratch = Scratch::new("docker-oci");
    let layer_tar = layer("hello", "from docker 25");
    let mut tar = Tar::new();
    for (name, data) in oci_layout_members("latest", "amd64", &layer_tar) {
        tar = tar.file(&name, &data);
    }
    // Its manifest.json names blobs/ paths; the layout is what is read.
    let tar = tar.file(
        "manifest.json",
        br#"[{"Config":"blobs/sha256/none","RepoTags":["web:latest"],"Layers":[]}]"#,
    );
    let path = write(&scratch, "saved", &tar.finish());
    let imported = archive::import(&path, Some("web:latest"), &scratch.join("work")).unwrap();
    assert_eq!(only_layer(imported.layout(), "latest"), layer_tar);
}

#[test]
fn members_leading_out_of_the_archive_are_refused() {
    let scratch = Scratch::new("hostile");
    let work = scratch.join("work");
    let escaping = Tar::new().raw_file("../escape", b"x").finish();
    let path = write(&scratch, "escaping", &escaping);
    let err = archive::import(&path, None, &work).unwrap_err();
    assert!(
        err.to_string()
            .contains("`../escape`: its name leads out of the archive"),
        "{err}"
    );
    assert!(!scratch.join("escape").exists());

    let linking = Tar::new().symlink("manifest.json", "/etc/passwd").finish();
    let path = write(&scratch, "linking", &linking);
    let err = archive::import(&path, None, &work).unwrap_err();
    assert!(err.to_string().contains("a link that leads out"), "{err}");
}

#[test]
fn files_that_are_no_image_archive_are_refused_by_content() {
    let scratch = Scratch::new("not");
    let work = scratch.join("work");
    let text = write(&scratch, "image.tar", b"just some text, not a tar at all\n");
    let err = archive::import(&text, None, &work).unwrap_err();
    assert!(matches!(err, ImageError::NotAnArchive { .. }), "{err:?}");
    assert!(err.to_string().contains("not a tar archive"), "{err}");

    let other_tar = write(
        &scratch,
        "other",
        &Tar::new().file("README", b"hi").finish(),
    );
    let err = archive::import(&other_tar, None, &work).unwrap_err();
    assert!(err.to_string().contains("neither `oci-layout`"), "{err}");

    let mut saved = Saved::new(&["web:1"], "amd64", vec![layer("a", "b")]);
    saved.layers.clear();
    let short = write(&scratch, "short", &docker_archive(&[saved]));
    let err = archive::import(&short, None, &work).unwrap_err();
    assert!(
        err.to_string().contains("lists 1 diff_ids for 0 layers"),
        "{err}"
    );
}

#[test]
fn archives_and_layouts_bake_into_one_store() {
    let scratch = Scratch::new("bake");
    let imports = scratch.join("imports");
    let docker = write(
        &scratch,
        "docker",
        &docker_archive(&[Saved::new(
            &["docker.io/library/busybox-save:1"],
            "amd64",
            vec![layer("a", "docker")],
        )]),
    );
    let oci = write(
        &scratch,
        "oci",
        &oci_archive("1", "amd64", &layer("a", "oci")),
    );
    let sources = [
        ImageSource::from_str(&format!("busybox-save:1={}", docker.display())).unwrap(),
        ImageSource::from_str(&format!("busybox-oci:1={}", oci.display())).unwrap(),
    ];
    let mut initramfs = Initramfs::new();
    let names = bake_with_import_dir(&sources, Arch::X86_64, &mut initramfs, &imports).unwrap();
    assert_eq!(names, ["busybox-save:1", "busybox-oci:1"]);
    let blobs = initramfs
        .paths()
        .filter(|p| p.starts_with("usr/lib/berth/images/blobs/sha256/"))
        .count();
    assert_eq!(blobs, 6, "two manifests, two configs, two layers");
    assert_eq!(std::fs::read_dir(&imports).unwrap().count(), 0);

    let err =
        bake_with_import_dir(&sources, Arch::Aarch64, &mut Initramfs::new(), &imports).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image busybox-save:1 from image archive {} is built for amd64, not aarch64 (arm64)",
            docker.display()
        )
    );
}
