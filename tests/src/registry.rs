//! The registry rig: a real OCI registry (Debian's `docker-registry`, the CNCF distribution
//! server) on the host's loopback, images pushed into it with `skopeo`, and an HTTP proxy in
//! front of it that asks for Bearer tokens, throttles blob bodies and logs every request, so
//! the pull tests can see what the puller asked for.
//!
//! In QEMU's user networking the guest reaches the host's `127.0.0.1` as `10.0.2.2`: every
//! server here listens on loopback and gives both addresses ([`Registry::guest_addr`]).
//!
//! The helpers panic with what failed and where its evidence is, as the rest of the test
//! helpers do: they only ever run inside a test.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use berth_arch::Arch;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::images::{busybox_layout, BUSYBOX_TAG};
use crate::{target_dir, workspace_root};

/// The registry server Debian's `docker-registry` package installs.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// Where QEMU's user networking puts the host's loopback, as the guest sees it.
pub const GUEST_HOST_IP: &str = "10.0.2.2";
/// The `service` the auth proxy's challenges and tokens name.
pub const TOKEN_SERVICE: &str = "berth-test";

/// How long the registry may take to answer `GET /v2/` after it starts.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports are chosen by binding port 0 and letting go of it; another process may take the
/// port in between, so a start is tried this many times.
const REGISTRY_START_ATTEMPTS: u32 = 5;
/// Timeouts of the rig's own HTTP exchanges (the proxy's client side and its upstream).
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(30);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest request or response head the rig reads.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Bodies are relayed in chunks of this size (the throttle's step).
const RELAY_CHUNK_BYTES: usize = 16 << 10;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Every manifest media type, for `Accept`.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// The tag of the variant with one small extra layer, and of the one with a large layer.
pub const EXTRA_TAG: &str = "extra";
pub const LARGE_TAG: &str = "large";
/// The small extra layer's one file and its content.
pub const EXTRA_FILE: &str = "extra.txt";
pub const EXTRA_CONTENT: &str = "an extra layer on top of busybox\n";
/// The large layer: one file of pseudo-random bytes (incompressible, and stored without
/// compression in its gzip stream, so the blob is as large as the file).
pub const LARGE_FILE: &str = "large.bin";
pub const LARGE_LAYER_BYTES: u64 = 48 << 20;
/// Bump when the large layer's recipe changes, so the cached one is rebuilt.
const LARGE_LAYER_RECIPE: u32 = 1;
/// A fixed time for the layers' tar entries and history, so their digests never change.
const FIXED_MTIME: u64 = 1_700_000_000;
const FIXED_CREATED: &str = "2023-11-14T22:13:20Z";

fn fail(what: impl std::fmt::Display) -> ! {
    panic!("registry rig: {what}")
}

/// A `docker-registry serve` process on `127.0.0.1:PORT`, storing under `DIR/storage`;
/// killed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry with its config, storage and log (`registry.log`) in `dir`, and
    /// waits until `GET /v2/` answers.
    pub fn start(dir: &Path) -> Registry {
        // Two registries started at once must not pick the same free port.
        static STARTING: Mutex<()> = Mutex::new(());
        let _starting = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        fs::create_dir_all(dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
        let storage = dir.join("storage");
        let log = dir.join("registry.log");
        let mut failures = Vec::new();
        for attempt in 1..=REGISTRY_START_ATTEMPTS {
            let port = free_port();
            // A header only this registry sends, so the readiness check cannot be answered
            // by some other server that took the port first.
            let marker = format!("{}-{port}-{attempt}", std::process::id());
            let config = dir.join("config.yml");
            fs::write(&config, registry_config(&storage, port, &marker))
                .unwrap_or_else(|e| fail(format!("{}: {e}", config.display())));
            let log_file =
                File::create(&log).unwrap_or_else(|e| fail(format!("{}: {e}", log.display())));
            let log_err = log_file
                .try_clone()
                .unwrap_or_else(|e| fail(format!("{}: {e}", log.display())));
            let child = Command::new(REGISTRY_BINARY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| {
                    fail(format!(
                        "cannot run {REGISTRY_BINARY}: {e} (apt-get install docker-registry)"
                    ))
                });
            let mut registry = Registry {
                child,
                port,
                storage: storage.clone(),
                log: log.clone(),
            };
            match registry.wait_ready(&marker) {
                Ok(()) => return registry,
                Err(why) => {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    failures.push(format!("port {port}: {why}; log: {}", text.trim()));
                }
            }
        }
        fail(format!(
            "docker-registry did not start in {REGISTRY_START_ATTEMPTS} tries: {}",
            failures.join(" | ")
        ))
    }

    fn wait_ready(&mut self, marker: &str) -> Result<(), String> {
        let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited: {status}"));
            }
            if let Ok(answer) = http_request(&self.host_addr(), "GET", "/v2/", &[]) {
                if answer.header("x-berth-registry") == Some(marker) && answer.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer to GET /v2/ within {REGISTRY_START_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for the host.
    pub fn host_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `10.0.2.2:PORT`, for a guest on QEMU's user networking.
    pub fn guest_addr(&self) -> String {
        format!("{GUEST_HOST_IP}:{}", self.port)
    }

    /// The registry's log (its stdout and stderr), for failure messages.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Where the filesystem driver keeps the blob `digest` (`sha256:HEX` or `HEX`), for tests
    /// that corrupt one.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// Flips one byte (in the middle) of the stored blob `digest`: same size, wrong content.
    pub fn corrupt_blob(&self, digest: &str) {
        flip_byte(&self.blob_path(digest));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use crate::free_port;

fn registry_config(storage: &Path, port: u16, marker: &str) -> String {
    format!(
        "version: 0.1
log:
  level: info
  fields:
    service: berth-test-registry
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Berth-Registry: [\"{marker}\"]
",
        storage = storage.display()
    )
}

/// Flips the bits of the byte in the middle of `path`.
pub fn flip_byte(path: &Path) {
    let mut data = fs::read(path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    let middle = data.len() / 2;
    match data.get_mut(middle) {
        Some(byte) => *byte ^= 0xff,
        None => fail(format!("{} is empty", path.display())),
    }
    fs::write(path, data).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
}

fn run_checked(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| fail(format!("{shown}: {e}")));
    if !output.status.success() {
        fail(format!(
            "{shown}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    output
}

/// Pushes the image tagged `tag_in_layout` in the OCI layout `layout` to
/// Pushes `blob` as the one layer (of `media_type`) of an OCI 1.1 artifact
/// (`artifactType`, the empty config), as `oras push` would, to `registry_addr/repo:tag`:
/// the blob and the empty config by monolithic upload, then the manifest. Its digest.
pub fn push_artifact(
    registry_addr: &str,
    repo: &str,
    tag: &str,
    artifact_type: &str,
    media_type: &str,
    blob: &[u8],
) -> Result<String, String> {
    const EMPTY: &[u8] = b"{}";
    for data in [EMPTY, blob] {
        let started = http_request_with_body(
            registry_addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Some(&[]),
        )?;
        let location = started
            .header("location")
            .filter(|_| started.status == 202)
            .ok_or_else(|| format!("starting an upload: HTTP {}", started.status))?;
        let path = location
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_else(|| location.to_string());
        let separator = if path.contains('?') { '&' } else { '?' };
        let digest = Digest::of(data);
        let put = http_request_with_body(
            registry_addr,
            "PUT",
            &format!("{path}{separator}digest={}", digest.0),
            &[("Content-Type", "application/octet-stream")],
            Some(data),
        )?;
        if put.status != 201 {
            return Err(format!(
                "uploading {}: HTTP {} {}",
                digest.0,
                put.status,
                String::from_utf8_lossy(&put.body)
            ));
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": Digest::of(EMPTY).0,
            "size": EMPTY.len(),
        },
        "layers": [{
            "mediaType": media_type,
            "digest": Digest::of(blob).0,
            "size": blob.len(),
            "annotations": {"org.opencontainers.image.title": "update.berth"},
        }],
    })
    .to_string();
    let put = http_request_with_body(
        registry_addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        Some(manifest.as_bytes()),
    )?;
    if put.status != 201 {
        return Err(format!(
            "the manifest: HTTP {} {}",
            put.status,
            String::from_utf8_lossy(&put.body)
        ));
    }
    Ok(Digest::of(manifest.as_bytes()).0)
}

/// `registry_addr/repo_tag` (`REPO:TAG`) with skopeo, every platform of an index included.
pub fn push(layout: &Path, tag_in_layout: &str, registry_addr: &str, repo_tag: &str) {
    run_checked(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag_in_layout}", layout.display()))
            .arg(format!("docker://{registry_addr}/{repo_tag}")),
    );
}

/// The digest the registry serves the manifest (or index) `repo:tag` under.
pub fn digest_of(registry_addr: &str, repo: &str, tag: &str) -> String {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let answer = http_request(registry_addr, "GET", &path, &[("Accept", MANIFEST_ACCEPT)])
        .unwrap_or_else(|e| fail(format!("GET {registry_addr}{path}: {e}")));
    if answer.status != 200 {
        fail(format!(
            "GET {registry_addr}{path}: HTTP {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let digest = Digest::of(&answer.body).to_string();
    if let Some(header) = answer.header("docker-content-digest") {
        assert_eq!(
            header, digest,
            "GET {registry_addr}{path}: Docker-Content-Digest disagrees with the body"
        );
    }
    digest
}

// ---------------------------------------------------------------------------------------
// Building layouts
// ---------------------------------------------------------------------------------------

/// A sha256 digest as `sha256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(pub String);

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Digest(format!("sha256:{hex}"))
    }

    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI layout being written: blobs go in as they are made, `index.json` last.
struct LayoutWriter {
    root: PathBuf,
}

impl LayoutWriter {
    /// A fresh, empty layout at `root` (whatever was there is removed).
    fn create(root: &Path) -> LayoutWriter {
        let _ = fs::remove_dir_all(root);
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap_or_else(|e| fail(format!("{}: {e}", blobs.display())));
        write_file(
            &root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        LayoutWriter {
            root: root.to_path_buf(),
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Writes a blob; returns its descriptor fields (digest, size).
    fn add_blob(&self, data: &[u8]) -> (Digest, u64) {
        let digest = Digest::of(data);
        write_file(&self.blob_path(&digest), data);
        (digest, data.len() as u64)
    }

    /// Adds a JSON document as a blob and returns its descriptor.
    fn add_json(&self, media_type: &str, document: &Value) -> Value {
        let data = serde_json::to_vec(document).unwrap_or_else(|e| fail(e));
        let (digest, size) = self.add_blob(&data);
        json!({"mediaType": media_type, "digest": digest.0, "size": size})
    }

    /// Brings in a blob file made elsewhere (hard-linked when it can be, else copied).
    fn link_blob(&self, source: &Path, digest: &Digest) {
        let dest = self.blob_path(digest);
        if dest.exists() {
            return;
        }
        if fs::hard_link(source, &dest).is_err() {
            fs::copy(source, &dest).unwrap_or_else(|e| {
                fail(format!("{} -> {}: {e}", source.display(), dest.display()))
            });
        }
    }

    /// Copies every blob the manifest `manifest_digest` of `from` needs.
    fn copy_image(&self, from: &SourceImage) {
        for digest in from.blobs() {
            self.link_blob(&from.blob_path(&digest), &digest);
        }
    }

    /// Writes `index.json` naming `descriptor` as `tag`.
    fn finish(self, descriptor: &Value, tag: &str) -> PathBuf {
        let mut named = descriptor.clone();
        named["annotations"] = json!({ REF_NAME: tag });
        let index = json!({"schemaVersion": 2, "manifests": [named]});
        write_file(
            &self.root.join("index.json"),
            &serde_json::to_vec(&index).unwrap_or_else(|e| fail(e)),
        );
        self.root
    }
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
}

fn read_json(path: &Path) -> Value {
    let data = fs::read(path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    serde_json::from_slice(&data).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())))
}

fn digest_field(value: &Value, what: &str) -> Digest {
    value["digest"]
        .as_str()
        .map(|d| Digest(d.to_string()))
        .unwrap_or_else(|| fail(format!("{what} has no digest: {value}")))
}

/// One single-platform image in an existing layout (busybox's, as umoci wrote it).
#[derive(Debug, Clone)]
struct SourceImage {
    layout: PathBuf,
    /// Its descriptor in `index.json`.
    descriptor: Value,
    manifest: Value,
    config: Value,
}

impl SourceImage {
    fn open(layout: &Path, tag: &str) -> SourceImage {
        let index = read_json(&layout.join("index.json"));
        let descriptor = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|d| d["annotations"][REF_NAME].as_str() == Some(tag))
            })
            .cloned()
            .unwrap_or_else(|| fail(format!("{}: no image tagged {tag}", layout.display())));
        let mut image = SourceImage {
            layout: layout.to_path_buf(),
            manifest: Value::Null,
            config: Value::Null,
            descriptor,
        };
        image.manifest = read_json(&image.blob_path(&digest_field(&image.descriptor, "index")));
        image.config = read_json(
            &image.blob_path(&digest_field(&image.manifest["config"], "manifest config")),
        );
        image
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.join("blobs/sha256").join(digest.hex())
    }

    fn layers(&self) -> Vec<Value> {
        self.manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Manifest, config and layers.
    fn blobs(&self) -> Vec<Digest> {
        let mut blobs = vec![
            digest_field(&self.descriptor, "index entry"),
            digest_field(&self.manifest["config"], "manifest config"),
        ];
        blobs.extend(self.layers().iter().map(|l| digest_field(l, "layer")));
        blobs
    }
}

/// An OCI layout in `dir` whose `index.json` has one entry, `1.35`, pointing at an image
/// index that lists the amd64 and arm64 busybox images (with their platforms), made from the
/// two single-arch layouts of [`busybox_layout`].
pub fn multi_arch_layout(dir: &Path) -> PathBuf {
    let writer = LayoutWriter::create(dir);
    let mut manifests = Vec::new();
    for arch in Arch::ALL {
        let layout = busybox_layout(arch).unwrap_or_else(|e| fail(e));
        let image = SourceImage::open(&layout, BUSYBOX_TAG);
        writer.copy_image(&image);
        let mut entry = image.descriptor.clone();
        if let Some(fields) = entry.as_object_mut() {
            fields.remove("annotations");
        }
        entry["mediaType"] = json!(MEDIA_TYPE_MANIFEST);
        entry["platform"] = json!({
            "architecture": image.config["architecture"],
            "os": image.config["os"],
        });
        manifests.push(entry);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": manifests,
    });
    let descriptor = writer.add_json(MEDIA_TYPE_INDEX, &index);
    writer.finish(&descriptor, BUSYBOX_TAG)
}

/// The digest of the index [`multi_arch_layout`] wrote (its one `index.json` entry).
pub fn layout_digest(layout: &Path) -> String {
    let index = read_json(&layout.join("index.json"));
    digest_field(&index["manifests"][0], "index.json entry").0
}

/// An image made of busybox's layers plus one more, in a layout of its own.
#[derive(Debug, Clone)]
pub struct Variant {
    pub layout: PathBuf,
    /// Its tag inside the layout.
    pub tag: String,
    pub manifest_digest: String,
    /// busybox's layers, shared with the busybox image.
    pub base_layers: Vec<String>,
    pub extra_layer: String,
    pub extra_layer_size: u64,
    /// Manifest, config and layers.
    pub total_bytes: u64,
}

/// busybox for `arch` plus a small layer holding `/extra.txt`, tagged [`EXTRA_TAG`], in `dir`.
pub fn variant_with_extra_file(arch: Arch, dir: &Path) -> Variant {
    let tar = small_layer_tar(EXTRA_FILE, EXTRA_CONTENT.as_bytes());
    let diff_id = Digest::of(&tar);
    let gz = gzip(&tar, Compression::best());
    let writer = LayoutWriter::create(dir);
    let (digest, size) = writer.add_blob(&gz);
    variant(
        arch,
        writer,
        EXTRA_TAG,
        &digest,
        size,
        &diff_id,
        "add /extra.txt",
    )
}

/// busybox for `arch` plus a layer of one 48 MiB file of pseudo-random bytes, tagged
/// [`LARGE_TAG`], in `dir`. The layer is made once and cached under
/// `target/test-images/large-layer/`.
pub fn variant_with_large_layer(arch: Arch, dir: &Path) -> Variant {
    let layer = large_layer();
    let writer = LayoutWriter::create(dir);
    writer.link_blob(&layer.path, &layer.digest);
    variant(
        arch,
        writer,
        LARGE_TAG,
        &layer.digest,
        layer.size,
        &layer.diff_id,
        "add /large.bin",
    )
}

fn variant(
    arch: Arch,
    writer: LayoutWriter,
    tag: &str,
    layer: &Digest,
    layer_size: u64,
    diff_id: &Digest,
    created_by: &str,
) -> Variant {
    let base_layout = busybox_layout(arch).unwrap_or_else(|e| fail(e));
    let base = SourceImage::open(&base_layout, BUSYBOX_TAG);
    for (i, digest) in base.blobs().into_iter().enumerate() {
        // The base's manifest and config are not the variant's; its layers are.
        if i >= 2 {
            writer.link_blob(&base.blob_path(&digest), &digest);
        }
    }
    let mut config = base.config.clone();
    config["created"] = json!(FIXED_CREATED);
    match config["rootfs"]["diff_ids"].as_array_mut() {
        Some(diff_ids) => diff_ids.push(json!(diff_id.0)),
        None => fail("busybox's config has no rootfs.diff_ids"),
    }
    if let Some(history) = config["history"].as_array_mut() {
        history.push(json!({"created": FIXED_CREATED, "created_by": created_by}));
    }
    let config_descriptor = writer.add_json(MEDIA_TYPE_CONFIG, &config);
    let mut layers = base.layers();
    let base_layers: Vec<String> = layers.iter().map(|l| digest_field(l, "layer").0).collect();
    layers.push(json!({"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": layer.0, "size": layer_size}));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_descriptor,
        "layers": layers,
    });
    let descriptor = writer.add_json(MEDIA_TYPE_MANIFEST, &manifest);
    let size_of = |d: &Value| d["size"].as_u64().unwrap_or(0);
    let total_bytes = size_of(&descriptor)
        + size_of(&config_descriptor)
        + layers.iter().map(size_of).sum::<u64>();
    let manifest_digest = digest_field(&descriptor, "manifest").0;
    Variant {
        layout: writer.finish(&descriptor, tag),
        tag: tag.to_string(),
        manifest_digest,
        base_layers,
        extra_layer: layer.0.clone(),
        extra_layer_size: layer_size,
        total_bytes,
    }
}

fn tar_header(path: &str, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(FIXED_MTIME);
    if let Err(e) = header.set_path(path) {
        fail(format!("tar path {path}: {e}"));
    }
    header.set_cksum();
    header
}

fn small_layer_tar(path: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar_header(path, content.len() as u64);
    builder
        .append_data(&mut header, path, content)
        .and_then(|()| builder.into_inner())
        .unwrap_or_else(|e| fail(format!("building a tar: {e}")))
}

fn gzip(data: &[u8], level: Compression) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), level);
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .unwrap_or_else(|e| fail(format!("gzip: {e}")))
}

/// The cached large layer blob.
struct LargeLayer {
    path: PathBuf,
    digest: Digest,
    diff_id: Digest,
    size: u64,
}

/// Writes through to `inner` and hashes what passes.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(buf)?;
        let done = buf.get(..count).unwrap_or_default();
        self.hasher.update(done);
        self.written += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `len` pseudo-random bytes from a fixed seed (splitmix64): the same bytes every run.
struct PseudoRandom {
    state: u64,
    left: u64,
}

impl Read for PseudoRandom {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut count = 0;
        for chunk in buf.chunks_mut(8) {
            if self.left == 0 {
                break;
            }
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            let take = chunk
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            for (dst, src) in chunk.iter_mut().zip(bytes.iter()).take(take) {
                *dst = *src;
            }
            count += take;
            self.left -= take as u64;
        }
        Ok(count)
    }
}

fn large_layer() -> LargeLayer {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir().join("test-images").join("large-layer");
    let path = dir.join("layer.tar.gz");
    let stamp = dir.join(".complete");
    let recipe = format!("recipe {LARGE_LAYER_RECIPE}, {LARGE_LAYER_BYTES} bytes");
    if let Ok(text) = fs::read_to_string(&stamp) {
        let mut lines = text.lines();
        if let (Some(r), Some(digest), Some(diff_id)) = (lines.next(), lines.next(), lines.next()) {
            if r == recipe {
                if let Ok(meta) = fs::metadata(&path) {
                    return LargeLayer {
                        path,
                        digest: Digest(digest.to_string()),
                        diff_id: Digest(diff_id.to_string()),
                        size: meta.len(),
                    };
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
    let partial = dir.join("layer.tar.gz.partial");
    let file = File::create(&partial).unwrap_or_else(|e| fail(format!("{partial:?}: {e}")));
    // tar -> hash (diff_id) -> gzip (stored blocks) -> hash (digest) -> file.
    let blob = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let tar_stream = HashingWriter {
        inner: GzEncoder::new(blob, Compression::none()),
        hasher: Sha256::new(),
        written: 0,
    };
    let mut builder = tar::Builder::new(tar_stream);
    let mut header = tar_header(LARGE_FILE, LARGE_LAYER_BYTES);
    let content = PseudoRandom {
        state: 0x6265_7274_685f_7465,
        left: LARGE_LAYER_BYTES,
    };
    let built = builder
        .append_data(&mut header, LARGE_FILE, content)
        .and_then(|()| builder.into_inner())
        .and_then(|tar_stream| {
            let diff_id = Digest::from_hasher(tar_stream.hasher);
            let mut blob = tar_stream.inner.finish()?;
            blob.flush()?;
            Ok((diff_id, Digest::from_hasher(blob.hasher), blob.written))
        });
    let (diff_id, digest, size) =
        built.unwrap_or_else(|e| fail(format!("writing {}: {e}", partial.display())));
    fs::rename(&partial, &path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    write_file(
        &stamp,
        format!("{recipe}\n{digest}\n{diff_id}\n").as_bytes(),
    );
    LargeLayer {
        path,
        digest,
        diff_id,
        size,
    }
}

// ---------------------------------------------------------------------------------------
// The host's berth-pull
// ---------------------------------------------------------------------------------------

/// The host build of `berth-pull`, built once per test process.
pub fn berth_pull() -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "berth-registry",
                "--bin",
                "berth-pull",
            ])
            .status()
            .unwrap_or_else(|e| fail(format!("cannot run cargo: {e}")));
        if !status.success() {
            fail(format!("building berth-pull failed: {status}"));
        }
        *built = true;
    }
    target_dir().join("debug").join("berth-pull")
}

/// What one run of `berth-pull` did.
#[derive(Debug)]
pub struct PullRun {
    pub success: bool,
    /// The JSON line on stdout (`Value::Null` when there was none).
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
}

impl PullRun {
    /// The `error` of a failed pull's report.
    pub fn error(&self) -> String {
        self.report["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// `berth-pull --store STORE --arch ARCH ARGS... REFERENCE` on the host.
pub fn run_berth_pull(store: &Path, arch: Arch, args: &[&str], reference: &str) -> PullRun {
    run_berth_pull_with_env(store, arch, args, reference, &[])
}

/// [`run_berth_pull`] with `env` set for berth-pull alone (the tests share one process:
/// the process' own environment is everyone's).
pub fn run_berth_pull_with_env(
    store: &Path,
    arch: Arch,
    args: &[&str],
    reference: &str,
    env: &[(&str, &str)],
) -> PullRun {
    let output = berth_pull_command(store, arch, args, reference)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| fail(format!("cannot run berth-pull: {e}")));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    PullRun {
        success: output.status.success(),
        report,
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `berth-pull` command line, for tests that run it in the background.
pub fn berth_pull_command(store: &Path, arch: Arch, args: &[&str], reference: &str) -> Command {
    let mut command = Command::new(berth_pull());
    command
        .arg("--store")
        .arg(store)
        .arg("--arch")
        .arg(arch.to_string())
        .args(args)
        .arg(reference);
    command
}

/// A Docker `config.json`-style auth file with `user:pass` for `registry_addr`.
pub fn write_auth_file(path: &Path, registry_addr: &str, user: &str, pass: &str) {
    let auth = BASE64.encode(format!("{user}:{pass}"));
    let document = json!({"auths": {registry_addr: {"auth": auth}}});
    write_file(
        path,
        &serde_json::to_vec_pretty(&document).unwrap_or_else(|e| fail(e)),
    );
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client and server, enough for the distribution API
// ---------------------------------------------------------------------------------------

/// A request or response head: the first line and the headers.
#[derive(Debug, Clone)]
struct Head {
    first_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a head up to its blank line; returns it and the bytes read past it.
fn read_head(stream: &mut impl Read) -> io::Result<(Head, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let count = stream.read(&mut chunk)?;
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the head",
            ));
        }
        buffer.extend_from_slice(chunk.get(..count).unwrap_or_default());
    };
    let text = String::from_utf8_lossy(buffer.get(..end).unwrap_or_default()).into_owned();
    let rest = buffer.get(end + 4..).unwrap_or_default().to_vec();
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((
        Head {
            first_line,
            headers,
        },
        rest,
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole HTTP answer, as [`http_request`] reads it.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`); the body is read to its
/// `Content-Length` or to the end (chunked answers are decoded).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer, String> {
    http_request_with_body(addr, method, path, headers, None)
}

/// [`http_request`] with a body (sent with its `Content-Length`).
pub fn http_request_with_body(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpAnswer, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(UPSTREAM_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body.unwrap_or_default()))
        .map_err(|e| format!("send: {e}"))?;
    let (head, mut body) = read_head(&mut stream).map_err(|e| format!("read: {e}"))?;
    let status = status_of(&head.first_line)
        .ok_or_else(|| format!("not an HTTP status line: {}", head.first_line))?;
    if method != "HEAD" {
        stream
            .read_to_end(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    } else if let Some(length) = head
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body.truncate(length);
    }
    Ok(HttpAnswer {
        status,
        headers: head.headers,
        body,
    })
}

fn status_of(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let end = find(data, b"\r\n").ok_or("chunked body: no chunk size line")?;
        let line = String::from_utf8_lossy(data.get(..end).unwrap_or_default()).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| format!("chunked body: size `{size_text}`: {e}"))?;
        data = data.get(end + 2..).unwrap_or_default();
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).ok_or("chunked body: short chunk")?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

// ---------------------------------------------------------------------------------------
// The auth proxy
// ---------------------------------------------------------------------------------------

/// How a request to the proxy was authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSeen {
    /// No `Authorization` header.
    Anonymous,
    /// `Basic`, with the user it named and whether user and password were right.
    Basic { user: String, valid: bool },
    /// `Bearer`, and whether the token was one the proxy issued.
    Bearer { valid: bool },
    /// Anything else.
    Other(String),
}

/// One request the proxy answered (or is still answering: `finished` false while its body
/// streams, with `bytes` growing).
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// The `Range` header, when there was one.
    pub range: Option<String>,
    pub auth: AuthSeen,
    /// The status answered (0 until the answer's head is sent).
    pub status: u16,
    /// Body bytes sent to the client so far.
    pub bytes: u64,
    pub finished: bool,
    /// When the request arrived, since the proxy started.
    pub at: Duration,
}

impl RequestLog {
    /// The `N` of a `Range: bytes=N-` header.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.trim().parse().ok())
    }

    /// Whether this is a GET of the blob `digest`.
    pub fn is_blob(&self, digest: &str) -> bool {
        self.path.contains("/blobs/") && self.path.ends_with(digest)
    }

    pub fn is_token(&self) -> bool {
        self.path.starts_with("/token")
    }
}

#[derive(Debug)]
struct ProxyShared {
    upstream: String,
    user: String,
    pass: String,
    /// Bytes per second for blob bodies; 0 is unthrottled.
    rate: AtomicU64,
    tokens: Mutex<HashSet<String>>,
    log: Mutex<Vec<RequestLog>>,
    started: Instant,
    stop: AtomicBool,
    port: u16,
}

/// An HTTP/1.1 server on `127.0.0.1` in front of a registry that wants a Bearer token, as
/// Docker Hub and most registries do: requests without a valid token get `401` with a
/// `WWW-Authenticate: Bearer realm="http://HOST/token",service=...,scope=...` challenge
/// (HOST is the `Host` the request named, so the guest is sent to `10.0.2.2:PORT` and the
/// host to `127.0.0.1:PORT`); `GET /token` with the right Basic credentials returns a fresh
/// token; authorized requests are forwarded to the registry and the answer streamed back,
/// blob bodies at [`AuthProxy::set_rate`] bytes per second. Every request is logged.
#[derive(Debug)]
pub struct AuthProxy {
    shared: Arc<ProxyShared>,
}

impl AuthProxy {
    /// Starts the proxy in front of `registry_addr` (`127.0.0.1:PORT`), accepting `user` and
    /// `pass` at its token endpoint.
    pub fn start(registry_addr: &str, user: &str, pass: &str) -> AuthProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| fail(format!("auth proxy: cannot bind: {e}")));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| fail(format!("auth proxy: {e}")));
        let shared = Arc::new(ProxyShared {
            upstream: registry_addr.to_string(),
            user: user.to_string(),
            pass: pass.to_string(),
            rate: AtomicU64::new(0),
            tokens: Mutex::new(HashSet::new()),
            log: Mutex::new(Vec::new()),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            port,
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                thread::spawn(move || {
                    // A connection that fails is the client's problem, logged as far as it
                    // got; the proxy goes on.
                    let _ = serve_connection(&shared, stream);
                });
            }
        });
        AuthProxy { shared }
    }

    /// Throttles blob bodies to `bytes_per_sec` (0: no limit).
    pub fn with_rate(self, bytes_per_sec: u64) -> AuthProxy {
        self.set_rate(bytes_per_sec);
        self
    }

    /// Changes the blob throttle now, for the answers streaming too (0: no limit).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    pub fn port(&self) -> u16 {
        self.shared.port
    }

    pub fn host_addr(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    pub fn guest_addr(&self) -> String {
        format!("{GUEST_HOST_IP}:{}", self.shared.port)
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Body bytes of the blob `digest` sent so far, over all requests.
    pub fn blob_bytes_served(&self, digest: &str) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.is_blob(digest))
            .map(|r| r.bytes)
            .sum()
    }

    /// The request log as text, one request a line, for failure messages.
    pub fn describe(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{:>8.3}s {} {} range={} auth={:?} status={} bytes={}{}",
                    r.at.as_secs_f64(),
                    r.method,
                    r.path,
                    r.range.as_deref().unwrap_or("-"),
                    r.auth,
                    r.status,
                    r.bytes,
                    if r.finished { "" } else { " (streaming)" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for AuthProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.shared.port));
    }
}

impl ProxyShared {
    fn update(&self, index: usize, change: impl FnOnce(&mut RequestLog)) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = log.get_mut(index) {
            change(entry);
        }
    }

    fn auth_seen(&self, header: Option<&str>) -> AuthSeen {
        let Some(header) = header else {
            return AuthSeen::Anonymous;
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            AuthSeen::Bearer {
                valid: tokens.contains(value.trim()),
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = BASE64
                .decode(value.trim())
                .ok()
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default();
            let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
            AuthSeen::Basic {
                user: user.to_string(),
                valid: user == self.user && pass == self.pass,
            }
        } else {
            AuthSeen::Other(scheme.to_string())
        }
    }
}

fn serve_connection(shared: &ProxyShared, mut client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(CLIENT_READ_TIMEOUT))?;
    client.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (head, _body) = read_head(&mut client)?;
    let mut parts = head.first_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let auth = shared.auth_seen(head.header("authorization"));
    let index = {
        let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(RequestLog {
            method: method.clone(),
            path: target.clone(),
            range: head.header("range").map(str::to_string),
            auth: auth.clone(),
            status: 0,
            bytes: 0,
            finished: false,
            at: shared.started.elapsed(),
        });
        log.len() - 1
    };
    let result = answer(shared, index, &mut client, &head, &method, &target, &auth);
    shared.update(index, |entry| entry.finished = true);
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Write);
    result
}

fn answer(
    shared: &ProxyShared,
    index: usize,
    client: &mut TcpStream,
    head: &Head,
    method: &str,
    target: &str,
    auth: &AuthSeen,
) -> io::Result<()> {
    let path = target.split('?').next().unwrap_or_default();
    let host = head
        .header("host")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{GUEST_HOST_IP}:{}", shared.port));
    if path == "/token" {
        if !matches!(auth, AuthSeen::Basic { valid: true, .. }) {
            shared.update(index, |entry| entry.status = 401);
            return send_simple(
                client,
                401,
                &[(
                    "WWW-Authenticate",
                    format!("Basic realm=\"{TOKEN_SERVICE}\""),
                )],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong or missing credentials"}]}"#,
            );
        }
        let token = new_token();
        shared
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone());
        shared.update(index, |entry| entry.status = 200);
        let body = json!({"token": token, "access_token": token, "expires_in": 3600}).to_string();
        return send_simple(client, 200, &[], body.as_bytes());
    }
    if !path.starts_with("/v2") {
        shared.update(index, |entry| entry.status = 404);
        return send_simple(client, 404, &[], b"not found\n");
    }
    if !matches!(auth, AuthSeen::Bearer { valid: true }) {
        let mut challenge =
            format!("Bearer realm=\"http://{host}/token\",service=\"{TOKEN_SERVICE}\"");
        if let Some(repo) = repository_of(path) {
            challenge.push_str(&format!(",scope=\"repository:{repo}:pull\""));
        }
        shared.update(index, |entry| entry.status = 401);
        return send_simple(
            client,
            401,
            &[("WWW-Authenticate", challenge)],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
    }
    forward(shared, index, client, head, method, target, path)
}

/// `REPO` of `/v2/REPO/manifests/...`, `/v2/REPO/blobs/...` or `/v2/REPO/tags/list`.
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .find_map(|marker| rest.find(marker).and_then(|at| rest.get(..at)))
        .map(str::to_string)
}

fn send_simple(
    client: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut text = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nDocker-Distribution-Api-Version: registry/2.0\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    client.write_all(text.as_bytes())?;
    client.write_all(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    }
}

/// The headers of the registry's answer passed on to the client.
const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
    "location",
    "transfer-encoding",
];

fn forward(
    shared: &ProxyShared,
    index: usize,
    client: &mut TcpStream,
    head: &Head,
    method: &str,
    target: &str,
    path: &str,
) -> io::Result<()> {
    let mut upstream = TcpStream::connect(&shared.upstream)?;
    upstream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    upstream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        shared.upstream
    );
    for name in ["Accept", "Range", "User-Agent"] {
        if let Some(value) = head.header(name) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("\r\n");
    upstream.write_all(request.as_bytes())?;
    let (answer_head, already) = read_head(&mut upstream)?;
    let status = status_of(&answer_head.first_line).unwrap_or(502);
    let mut text = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in &answer_head.headers {
        if FORWARDED_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str("Connection: close\r\n\r\n");
    client.write_all(text.as_bytes())?;
    shared.update(index, |entry| entry.status = status);
    if method == "HEAD" {
        return Ok(());
    }
    let limit = answer_head
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok());
    let throttled = path.contains("/blobs/");
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pending = already;
    let mut buffer = vec![0u8; RELAY_CHUNK_BYTES];
    loop {
        if limit.is_some_and(|l| sent >= l) {
            break;
        }
        let chunk: Vec<u8> = if pending.is_empty() {
            let count = upstream.read(&mut buffer)?;
            if count == 0 {
                break;
            }
            buffer.get(..count).unwrap_or_default().to_vec()
        } else {
            std::mem::take(&mut pending)
        };
        let room = limit.map_or(chunk.len() as u64, |l| l - sent);
        let chunk = chunk
            .get(..usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len()))
            .unwrap_or_default();
        for piece in chunk.chunks(RELAY_CHUNK_BYTES) {
            if throttled {
                pace(shared, started, sent);
            }
            client.write_all(piece)?;
            sent += piece.len() as u64;
            shared.update(index, |entry| entry.bytes = sent);
        }
    }
    Ok(())
}

/// Sleeps until `sent` bytes are within the rate since `started`.
fn pace(shared: &ProxyShared, started: Instant, sent: u64) {
    let rate = shared.rate.load(Ordering::SeqCst);
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        thread::sleep(due - elapsed);
    }
}

/// 128 bits from the kernel's random source, in hex (or, should that fail, from the clock).
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
