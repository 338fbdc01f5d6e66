//! Opening image layouts written here the way `umoci`/`skopeo` write them, resolving images by
//! name, and refusing blobs that do not match their descriptors.

#![expect(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    reason = "test code: a failed check panics"
)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use berth_oci::{
    index_json, layer_dir, unpack_layer_into_store, Descriptor, Digest, ImageManifest, Layout,
    OciError, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_LAYER_TAR_GZIP,
    OCI_LAYOUT_FILE_CONTENT,
};
use support::{gzip, LayerTar, Scratch};

const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Writes `data` as a blob of the layout at `root` and returns its descriptor.
fn write_blob(root: &Path, media_type: &str, data: &[u8]) -> Descriptor {
    let digest = Digest::sha256_of(data);
    let dir = root.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(digest.hex()), data).unwrap();
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: data.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

/// An image with one gzip layer and the given diff_ids in its config; returns the manifest's
/// descriptor, the layer blob and its diff_id.
fn write_image(root: &Path, command: &str, extra_diff_ids: usize) -> (Descriptor, Vec<u8>, Digest) {
    let mut layer = LayerTar::new();
    layer.file("hello", 0o644, command.as_bytes());
    let tar = layer.finish();
    let diff_id = Digest::sha256_of(&tar);
    let blob = gzip(&tar);
    let layer_descriptor = write_blob(root, MEDIA_TYPE_LAYER_TAR_GZIP, &blob);
    let diff_ids: Vec<String> =
        std::iter::repeat_n(format!("\"{diff_id}\""), 1 + extra_diff_ids).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux",
            "config":{{"Cmd":["{command}"],"Env":null,"Entrypoint":null,"WorkingDir":"/"}},
            "rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[]}}"#,
        diff_ids.join(",")
    );
    let config_descriptor = write_blob(root, CONFIG_MEDIA_TYPE, config.as_bytes());
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_IMAGE_MANIFEST.to_string()),
        config: config_descriptor,
        layers: vec![layer_descriptor],
    };
    let manifest_json = serde_json::to_vec(&manifest).unwrap();
    (
        write_blob(root, MEDIA_TYPE_IMAGE_MANIFEST, &manifest_json),
        blob,
        diff_id,
    )
}

fn write_layout(root: &Path, images: &[(String, Descriptor)]) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("oci-layout"), OCI_LAYOUT_FILE_CONTENT).unwrap();
    fs::write(root.join("index.json"), index_json(images)).unwrap();
}

#[test]
fn resolves_an_image_by_name_and_unpacks_its_layers() {
    let scratch = Scratch::new("resolve");
    let root = scratch.join("layout");
    let (web, web_blob, web_diff_id) = write_image(&root, "/bin/web", 0);
    let (db, _, _) = write_image(&root, "/bin/db", 0);
    write_layout(
        &root,
        &[("web".to_string(), web.clone()), ("db".to_string(), db)],
    );

    let layout = Layout::open(&root).unwrap();
    assert_eq!(layout.root(), root);
    assert_eq!(layout.references(), ["web", "db"]);
    assert_eq!(
        layout.blob_path(&web.digest),
        root.join("blobs/sha256").join(web.digest.hex())
    );

    let image = layout.resolve("web").unwrap();
    assert_eq!(image.reference, "web");
    assert_eq!(image.manifest_digest, web.digest);
    assert_eq!(image.config_digest, image.manifest.config.digest);
    let run = image.config.config.as_ref().unwrap();
    assert_eq!(run.cmd, Some(vec!["/bin/web".to_string()]));
    assert_eq!(
        (run.env.as_ref(), run.working_dir.as_deref()),
        (None, Some("/"))
    );

    let layers: Vec<_> = image.layers().collect();
    assert_eq!(layers.len(), 1);
    let (descriptor, diff_id) = layers[0];
    assert_eq!(*diff_id, web_diff_id);
    let blob = layout.read_descriptor(descriptor).unwrap();
    assert_eq!(blob, web_blob);
    // Mapped, the same bytes, with the same checks.
    let mapped = layout.map_descriptor(descriptor).unwrap();
    assert_eq!(&*mapped, web_blob.as_slice());

    let store = scratch.join("store");
    assert!(unpack_layer_into_store(&blob, &descriptor.media_type, diff_id, &store).unwrap());
    assert_eq!(
        fs::read(layer_dir(&store, diff_id).join("hello")).unwrap(),
        b"/bin/web"
    );
}

#[test]
fn index_json_names_each_image_and_keeps_its_annotations() {
    let scratch = Scratch::new("index");
    let (mut manifest, _, _) = write_image(scratch.path(), "/bin/sh", 0);
    manifest.annotations.insert(
        "org.opencontainers.image.version".to_string(),
        "1.2".to_string(),
    );
    let json = index_json(&[("app:1.2".to_string(), manifest.clone())]);
    let index: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MEDIA_TYPE_IMAGE_INDEX);
    let listed = &index["manifests"][0];
    assert_eq!(listed["digest"], manifest.digest.to_string());
    assert_eq!(
        listed["annotations"]["org.opencontainers.image.ref.name"],
        "app:1.2"
    );
    assert_eq!(
        listed["annotations"]["org.opencontainers.image.version"],
        "1.2"
    );
}

#[test]
fn unknown_reference_names_it_and_lists_the_known_ones() {
    let scratch = Scratch::new("unknown");
    let root = scratch.join("layout");
    let (web, _, _) = write_image(&root, "/bin/web", 0);
    write_layout(
        &root,
        &[("web".to_string(), web.clone()), ("db".to_string(), web)],
    );

    let err = Layout::open(&root).unwrap().resolve("nope").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no image `nope` in {} (known: web, db)", root.display())
    );
}

#[test]
fn a_flipped_byte_is_a_digest_mismatch() {
    let scratch = Scratch::new("flipped");
    let root = scratch.join("layout");
    let (web, _, _) = write_image(&root, "/bin/web", 0);
    write_layout(&root, &[("web".to_string(), web.clone())]);
    let layout = Layout::open(&root).unwrap();
    let path = layout.blob_path(&web.digest);
    let mut data = fs::read(&path).unwrap();
    data[0] ^= 1;
    fs::write(&path, &data).unwrap();

    let err = layout.read_blob(&web.digest).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "blob {} in {}: digest mismatch, content hashes to {}",
            web.digest,
            path.display(),
            Digest::sha256_of(&data)
        )
    );
    assert!(matches!(
        layout.resolve("web"),
        Err(OciError::BlobDigestMismatch { .. })
    ));
    assert!(matches!(
        layout.map_descriptor(&web),
        Err(OciError::BlobDigestMismatch { .. })
    ));
}

#[test]
fn a_wrong_size_is_refused_before_reading() {
    let scratch = Scratch::new("size");
    let root = scratch.join("layout");
    let mut descriptor = write_blob(&root, CONFIG_MEDIA_TYPE, b"{}");
    write_layout(&root, &[]);
    descriptor.size = 3;
    let layout = Layout::open(&root).unwrap();
    assert!(matches!(
        layout.map_descriptor(&descriptor),
        Err(OciError::BlobSizeMismatch { .. })
    ));
    let err = layout.read_descriptor(&descriptor).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            OciError::BlobSizeMismatch {
                expected: 3,
                actual: 2,
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains(&descriptor.digest.to_string()),
        "{message}"
    );
}

#[test]
fn nested_image_indexes_are_not_supported_yet() {
    let scratch = Scratch::new("nested");
    let root = scratch.join("layout");
    let nested = write_blob(
        &root,
        MEDIA_TYPE_IMAGE_INDEX,
        br#"{"schemaVersion":2,"manifests":[]}"#,
    );
    write_layout(&root, &[("multi".to_string(), nested)]);
    let err = Layout::open(&root).unwrap().resolve("multi").unwrap_err();
    assert!(
        err.to_string()
            .contains("image indexes are not supported yet"),
        "{err}"
    );
}

#[test]
fn layer_and_diff_id_counts_must_agree() {
    let scratch = Scratch::new("counts");
    let root = scratch.join("layout");
    let (web, _, _) = write_image(&root, "/bin/web", 1);
    write_layout(&root, &[("web".to_string(), web)]);
    let err = Layout::open(&root).unwrap().resolve("web").unwrap_err();
    assert!(
        matches!(
            err,
            OciError::LayerCountMismatch {
                layers: 1,
                diff_ids: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn layout_marker_is_required_and_checked() {
    let scratch = Scratch::new("marker");
    let root = scratch.join("layout");
    write_layout(&root, &[]);
    assert!(Layout::open(&root).unwrap().references().is_empty());

    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    let err = Layout::open(&root).unwrap_err();
    assert!(err.to_string().contains("`2.0.0`"), "{err}");

    fs::remove_file(root.join("oci-layout")).unwrap();
    let err = Layout::open(&root).unwrap_err();
    assert!(
        err.to_string()
            .contains(&root.join("oci-layout").display().to_string()),
        "{err}"
    );
}
