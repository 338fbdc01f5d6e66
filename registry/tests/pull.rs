//! Pulls from a fake registry into a temporary store, read back with `berth_oci::Layout`.

#![expect(clippy::indexing_slicing, reason = "test code: a failed check panics")]
#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::fs;

use berth_oci::{Digest, Layout, REF_NAME_ANNOTATION};
use berth_registry::{
    gc, pull, usage, Arch, Client, Event, PullReport, Reference, RegistryError, Store,
    PULLED_ANNOTATION,
};
use support::{blob_bytes, serve_index, FakeRegistry, State, TempDir, TestImage, TOKEN};

const LAYER_BYTES: usize = 300_000;

fn run_pull(
    client: &mut Client,
    store: &TempDir,
    reference: &str,
    arch: Arch,
) -> (Result<PullReport, RegistryError>, Vec<Event>) {
    let mut events = Vec::new();
    let parsed = Reference::parse(reference).unwrap();
    let result = pull(
        client,
        store.path(),
        &parsed,
        reference,
        arch,
        &mut |event| events.push(event),
    );
    (result, events)
}

#[test]
fn pulls_the_platform_image_of_an_index_with_bearer_auth() {
    let shared_layer = blob_bytes(1, LAYER_BYTES);
    let amd64 = TestImage::new("amd64", vec![shared_layer.clone(), blob_bytes(2, 1000)]);
    let arm64 = TestImage::new("arm64", vec![shared_layer, blob_bytes(3, 1000)]);
    let mut state = State {
        auth: true,
        ..State::default()
    };
    let index_digest = serve_index(
        &mut state,
        "team/app",
        "1.4",
        &[(&amd64, "amd64", None), (&arm64, "arm64", Some("v8"))],
    );
    let registry = FakeRegistry::start(state);
    let dir = TempDir::new("index-auth");
    let auth = registry.auth_file(dir.path());
    let store = TempDir::new("index-auth-store");
    let mut client = registry.client(Some(&auth));

    let reference = format!("{}/team/app:1.4", registry.addr);
    let (result, events) = run_pull(&mut client, &store, &reference, Arch::X86_64);
    let report = result.unwrap();
    assert_eq!(report.digest, amd64.digest());
    assert_eq!(report.reference, reference);
    assert_eq!(report.name, reference);
    assert_eq!(report.layers, 2);
    let blob_bytes: u64 = std::iter::once(&amd64.config)
        .chain(&amd64.layers)
        .map(|blob| blob.len() as u64)
        .sum();
    assert_eq!(report.bytes, blob_bytes + amd64.manifest.len() as u64);
    assert!(report.downloaded > blob_bytes, "{report:?}");
    assert!(events.iter().any(
        |event| matches!(event, Event::Manifest { platform, .. } if platform == "linux/amd64")
    ));

    // The existing reader finds the image by the name given, with its digests verified.
    let layout = Layout::open(store.path()).unwrap();
    let image = layout.resolve(&reference).unwrap();
    assert_eq!(image.manifest_digest, amd64.digest());
    assert_eq!(image.config.architecture, "amd64");
    assert_eq!(image.layers().count(), 2);
    let entry = &layout.index().manifests[0];
    assert_eq!(
        entry.annotations.get(PULLED_ANNOTATION).unwrap(),
        &format!("{reference}@{}", amd64.digest())
    );
    let platform = entry.platform.as_ref().unwrap();
    assert_eq!(
        (platform.os.as_str(), platform.architecture.as_str()),
        ("linux", "amd64")
    );

    // The anonymous try was challenged, the token endpoint saw the credentials and the scope,
    // and the token was then reused without another challenge.
    let seen = registry.seen();
    let token_requests: Vec<_> = seen.iter().filter(|r| r.path == "/token").collect();
    assert_eq!(token_requests.len(), 1, "{seen:#?}");
    assert!(
        token_requests[0].query.contains("service=fake-registry"),
        "{seen:#?}"
    );
    assert!(
        token_requests[0]
            .query
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{seen:#?}"
    );
    assert_eq!(
        seen.iter().filter(|r| r.status == 401).count(),
        1,
        "{seen:#?}"
    );
    let bearer = format!("Bearer {TOKEN}");
    assert!(seen
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .all(|r| r.authorization.as_deref() == Some(bearer.as_str())));
    // Nothing of the arm64 image was fetched.
    let arm64_only = Digest::sha256_of(&arm64.layers[1]);
    assert!(!seen
        .iter()
        .any(|r| r.path.ends_with(&arm64_only.to_string())));

    // Pulling again downloads the manifests only and replaces the index entry.
    let (again, _) = run_pull(&mut client, &store, &reference, Arch::X86_64);
    let again = again.unwrap();
    assert!(again.downloaded < 2000, "{again:?}");
    // By the index's digest, the same manifest; stored under a second name.
    let by_digest = format!("{}/team/app@{index_digest}", registry.addr);
    let (pinned, _) = run_pull(&mut client, &store, &by_digest, Arch::X86_64);
    assert_eq!(pinned.unwrap().digest, amd64.digest());
    let layout = Layout::open(store.path()).unwrap();
    assert_eq!(layout.references(), [reference.clone(), by_digest.clone()]);

    // arm64 from the same index, into the same store: the shared layer is not fetched again.
    let arm_name = format!("{}/team/app:1.4-arm", registry.addr);
    let mut events = Vec::new();
    let arm = pull(
        &mut client,
        store.path(),
        &Reference::parse(&reference).unwrap(),
        &arm_name,
        Arch::Aarch64,
        &mut |event| events.push(event),
    )
    .unwrap();
    assert_eq!(arm.digest, arm64.digest());
    let shared = Digest::sha256_of(&arm64.layers[0]);
    assert!(events
        .iter()
        .any(|event| matches!(event, Event::BlobPresent { digest, .. } if *digest == shared)));
    let layout = Layout::open(store.path()).unwrap();
    let arm_image = layout.resolve(&arm_name).unwrap();
    assert_eq!(arm_image.config.architecture, "arm64");
    let arm_entry = layout
        .index()
        .manifests
        .iter()
        .find(|entry| entry.reference() == Some(arm_name.as_str()))
        .unwrap();
    assert_eq!(
        arm_entry.platform.as_ref().unwrap().variant.as_deref(),
        Some("v8")
    );
}

#[test]
fn the_ref_name_is_stored_exactly_as_given() {
    let image = TestImage::new("amd64", vec![blob_bytes(4, 100)]);
    let mut state = State::default();
    // Only Docker Hub puts one-component names under `library/`.
    image.serve(&mut state, "busybox", Some("1.35"));
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("ref-name");
    let mut client = registry.client(None);
    let reference = Reference::parse(&format!("{}/busybox:1.35", registry.addr)).unwrap();
    let report = pull(
        &mut client,
        store.path(),
        &reference,
        "busybox:1.35",
        Arch::X86_64,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.name, "busybox:1.35");
    let layout = Layout::open(store.path()).unwrap();
    assert_eq!(layout.references(), ["busybox:1.35"]);
    assert!(layout.resolve("busybox:1.35").is_ok());
    assert_eq!(
        layout.index().manifests[0]
            .annotations
            .get(REF_NAME_ANNOTATION)
            .unwrap(),
        "busybox:1.35"
    );
}

#[test]
fn without_credentials_the_token_endpoint_refusal_is_reported() {
    let image = TestImage::new("amd64", vec![blob_bytes(5, 100)]);
    let mut state = State {
        auth: true,
        ..State::default()
    };
    image.serve(&mut state, "private/app", Some("1"));
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("no-credentials");
    let mut client = registry.client(None);
    let (result, _) = run_pull(
        &mut client,
        &store,
        &format!("{}/private/app:1", registry.addr),
        Arch::X86_64,
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("anonymous access was refused"),
        "{message}"
    );
    assert!(message.contains("/token"), "{message}");
}

#[test]
fn missing_manifest_reports_the_registry_error() {
    let registry = FakeRegistry::start(State::default());
    let store = TempDir::new("missing");
    let mut client = registry.client(None);
    let (result, _) = run_pull(
        &mut client,
        &store,
        &format!("{}/nothing/here:1", registry.addr),
        Arch::X86_64,
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("HTTP 404: MANIFEST_UNKNOWN: manifest unknown"),
        "{message}"
    );
    assert!(
        message.contains("/v2/nothing/here/manifests/1"),
        "{message}"
    );
}

#[test]
fn corrupted_blob_is_refused_and_never_stored_under_its_name() {
    let image = TestImage::new("amd64", vec![blob_bytes(6, LAYER_BYTES)]);
    let layer = Digest::sha256_of(&image.layers[0]);
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    state.corrupt.insert(layer.to_string());
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("corrupt");
    let mut client = registry.client(None);
    let reference = format!("{}/team/app:1", registry.addr);
    let (result, _) = run_pull(&mut client, &store, &reference, Arch::X86_64);
    let message = result.unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("digest mismatch for {layer}: got sha256:")),
        "{message}"
    );
    let opened = Store::open(store.path()).unwrap();
    assert!(!opened.blob_path(&layer).exists());
    // The bad download was thrown away, not kept for resuming.
    let partial = opened.partial_path(&layer);
    assert!(!partial.exists() || fs::metadata(&partial).unwrap().len() == 0);
    // Tried once: a digest mismatch from zero is not retried.
    let layer_requests = registry
        .seen()
        .iter()
        .filter(|r| r.path.ends_with(&layer.to_string()))
        .count();
    assert_eq!(layer_requests, 1);
    // No image was named.
    assert!(Layout::open(store.path()).unwrap().references().is_empty());
}

#[test]
fn a_partial_download_resumes_with_range() {
    let image = TestImage::new("amd64", vec![blob_bytes(7, LAYER_BYTES)]);
    let layer = Digest::sha256_of(&image.layers[0]);
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    let registry = FakeRegistry::start(state);
    let store_dir = TempDir::new("resume");
    let store = Store::create(store_dir.path()).unwrap();
    let half = LAYER_BYTES / 2;
    fs::write(store.partial_path(&layer), &image.layers[0][..half]).unwrap();

    let mut client = registry.client(None);
    let reference = format!("{}/team/app:1", registry.addr);
    let (result, events) = run_pull(&mut client, &store_dir, &reference, Arch::X86_64);
    let report = result.unwrap();
    let range = format!("bytes={half}-");
    let seen = registry.seen();
    let layer_requests: Vec<_> = seen
        .iter()
        .filter(|r| r.path.ends_with(&layer.to_string()))
        .collect();
    assert_eq!(layer_requests.len(), 1, "{seen:#?}");
    assert_eq!(layer_requests[0].range.as_deref(), Some(range.as_str()));
    assert_eq!(layer_requests[0].status, 206);
    assert!(events.contains(&Event::BlobStart {
        digest: layer.clone(),
        size: LAYER_BYTES as u64,
        offset: half as u64,
    }));
    // Only the second half of the layer came over the network.
    let others = (image.config.len() + image.manifest.len()) as u64;
    assert_eq!(report.downloaded, others + (LAYER_BYTES - half) as u64);
    assert_eq!(fs::read(store.blob_path(&layer)).unwrap(), image.layers[0]);
    assert!(!store.partial_path(&layer).exists());
    Layout::open(store_dir.path())
        .unwrap()
        .resolve(&reference)
        .unwrap();
}

#[test]
fn a_registry_ignoring_range_restarts_the_blob_from_zero() {
    let image = TestImage::new("amd64", vec![blob_bytes(8, LAYER_BYTES)]);
    let layer = Digest::sha256_of(&image.layers[0]);
    let mut state = State {
        ignore_range: true,
        ..State::default()
    };
    image.serve(&mut state, "team/app", Some("1"));
    let registry = FakeRegistry::start(state);
    let store_dir = TempDir::new("ignore-range");
    let store = Store::create(store_dir.path()).unwrap();
    fs::write(store.partial_path(&layer), &image.layers[0][..1000]).unwrap();
    let mut client = registry.client(None);
    let (result, events) = run_pull(
        &mut client,
        &store_dir,
        &format!("{}/team/app:1", registry.addr),
        Arch::X86_64,
    );
    result.unwrap();
    assert!(events
        .iter()
        .any(|event| matches!(event, Event::Restart { reason, .. } if reason.contains("ignored the Range"))));
    assert_eq!(fs::read(store.blob_path(&layer)).unwrap(), image.layers[0]);
}

#[test]
fn a_wrong_partial_file_is_discarded_and_downloaded_again() {
    let image = TestImage::new("amd64", vec![blob_bytes(9, LAYER_BYTES)]);
    let layer = Digest::sha256_of(&image.layers[0]);
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    let registry = FakeRegistry::start(state);
    let store_dir = TempDir::new("wrong-partial");
    let store = Store::create(store_dir.path()).unwrap();
    // Right length, wrong bytes: the resumed download cannot match its digest.
    fs::write(store.partial_path(&layer), blob_bytes(99, LAYER_BYTES / 2)).unwrap();
    let mut client = registry.client(None);
    let (result, events) = run_pull(
        &mut client,
        &store_dir,
        &format!("{}/team/app:1", registry.addr),
        Arch::X86_64,
    );
    result.unwrap();
    assert!(events.iter().any(
        |event| matches!(event, Event::Restart { reason, .. } if reason.contains("digest mismatch"))
    ));
    assert_eq!(fs::read(store.blob_path(&layer)).unwrap(), image.layers[0]);

    // A partial file longer than the blob is discarded before anything is asked for.
    let other = TempDir::new("long-partial");
    let other_store = Store::create(other.path()).unwrap();
    let mut too_long = image.layers[0].clone();
    too_long.extend_from_slice(b"trailing garbage");
    fs::write(other_store.partial_path(&layer), &too_long).unwrap();
    let (result, _) = run_pull(
        &mut client,
        &other,
        &format!("{}/team/app:1", registry.addr),
        Arch::X86_64,
    );
    result.unwrap();
    assert_eq!(
        fs::read(other_store.blob_path(&layer)).unwrap(),
        image.layers[0]
    );
}

#[test]
fn server_errors_and_broken_connections_are_retried() {
    let image = TestImage::new("amd64", vec![blob_bytes(10, LAYER_BYTES)]);
    let config = Digest::sha256_of(&image.config);
    let layer = Digest::sha256_of(&image.layers[0]);
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    state.fail_once.insert(config.to_string(), 503);
    state.cut_once.insert(layer.to_string(), LAYER_BYTES / 3);
    let registry = FakeRegistry::start(state);
    let store_dir = TempDir::new("retry");
    let mut client = registry.client(None);
    let reference = format!("{}/team/app:1", registry.addr);
    let (result, events) = run_pull(&mut client, &store_dir, &reference, Arch::X86_64);
    result.unwrap();
    let retries: Vec<&Event> = events
        .iter()
        .filter(|event| matches!(event, Event::Retry { .. }))
        .collect();
    assert_eq!(retries.len(), 2, "{events:#?}");
    // The cut download went on from where the connection broke.
    let seen = registry.seen();
    let resumed = seen
        .iter()
        .find(|r| r.path.ends_with(&layer.to_string()) && r.range.is_some())
        .unwrap();
    assert_eq!(
        resumed.range.as_deref(),
        Some(&*format!("bytes={}-", LAYER_BYTES / 3))
    );
    Layout::open(store_dir.path())
        .unwrap()
        .resolve(&reference)
        .unwrap();
}

#[test]
fn persistent_server_errors_give_up_after_four_tries() {
    let image = TestImage::new("amd64", vec![blob_bytes(11, 100)]);
    let layer = Digest::sha256_of(&image.layers[0]);
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    state.fail_always.insert(layer.to_string());
    let registry = FakeRegistry::start(state);
    let store_dir = TempDir::new("give-up");
    let mut client = registry.client(None);
    let (result, events) = run_pull(
        &mut client,
        &store_dir,
        &format!("{}/team/app:1", registry.addr),
        Arch::X86_64,
    );
    let message = result.unwrap_err().to_string();
    assert!(message.contains("HTTP 503: try again later"), "{message}");
    let retries = events
        .iter()
        .filter(|event| matches!(event, Event::Retry { .. }))
        .count();
    assert_eq!(retries, 3);
    let layer_requests = registry
        .seen()
        .iter()
        .filter(|r| r.path.ends_with(&layer.to_string()))
        .count();
    assert_eq!(layer_requests, 4);

    // A 404 is an answer, not a failure to retry.
    let (result, events) = run_pull(
        &mut client,
        &store_dir,
        &format!("{}/team/other:1", registry.addr),
        Arch::X86_64,
    );
    assert!(result.unwrap_err().to_string().contains("HTTP 404"));
    assert!(!events
        .iter()
        .any(|event| matches!(event, Event::Retry { .. })));
}

#[test]
fn unsupported_layer_media_types_are_refused_before_any_download() {
    let image = TestImage::with_layer_media_type(
        "amd64",
        vec![blob_bytes(12, 100)],
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    );
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("layer-type");
    let mut client = registry.client(None);
    let (result, _) = run_pull(
        &mut client,
        &store,
        &format!("{}/team/app:1", registry.addr),
        Arch::X86_64,
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("media type `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`"),
        "{message}"
    );
    assert!(!registry.seen().iter().any(|r| r.path.contains("/blobs/")));
}

#[test]
fn an_index_without_the_platform_lists_what_it_has() {
    let amd64 = TestImage::new("amd64", vec![blob_bytes(13, 100)]);
    let mut state = State::default();
    serve_index(&mut state, "team/app", "1", &[(&amd64, "amd64", None)]);
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("no-platform");
    let mut client = registry.client(None);
    let (result, _) = run_pull(
        &mut client,
        &store,
        &format!("{}/team/app:1", registry.addr),
        Arch::Aarch64,
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("no image for linux/arm64/v8 in the index; it has linux/amd64"),
        "{message}"
    );
}

#[test]
fn a_single_manifest_for_another_arch_is_refused() {
    let arm64 = TestImage::new("arm64", vec![blob_bytes(14, 100)]);
    let mut state = State::default();
    arm64.serve(&mut state, "team/app", Some("1"));
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("wrong-arch");
    let mut client = registry.client(None);
    let (result, _) = run_pull(
        &mut client,
        &store,
        &format!("{}/team/app:1", registry.addr),
        Arch::X86_64,
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("is for linux/arm64, not linux/amd64"),
        "{message}"
    );
}

#[test]
fn a_manifest_not_matching_the_digest_asked_for_is_refused() {
    let image = TestImage::new("amd64", vec![blob_bytes(15, 100)]);
    let mut state = State::default();
    image.serve(&mut state, "team/app", Some("1"));
    // Serve the manifest under a digest it does not have.
    let wrong = Digest::sha256_of(b"something else");
    let entry = state
        .manifests
        .get(&format!("team/app/{}", image.digest()))
        .unwrap()
        .clone();
    state.manifests.insert(format!("team/app/{wrong}"), entry);
    let registry = FakeRegistry::start(state);
    let store = TempDir::new("manifest-digest");
    let mut client = registry.client(None);
    let (result, _) = run_pull(
        &mut client,
        &store,
        &format!("{}/team/app@{wrong}", registry.addr),
        Arch::X86_64,
    );
    let message = result.unwrap_err().to_string();
    assert_eq!(
        message,
        format!("digest mismatch for {wrong}: got {}", image.digest())
    );
}

#[test]
fn gc_removes_only_the_blobs_no_kept_image_uses() {
    let shared_layer = blob_bytes(16, LAYER_BYTES);
    let first = TestImage::new("amd64", vec![shared_layer.clone(), blob_bytes(17, 5000)]);
    let second = TestImage::new("amd64", vec![shared_layer.clone(), blob_bytes(18, 7000)]);
    let mut state = State::default();
    first.serve(&mut state, "team/first", Some("1"));
    second.serve(&mut state, "team/second", Some("1"));
    let registry = FakeRegistry::start(state);
    let store_dir = TempDir::new("gc");
    let mut client = registry.client(None);
    let first_name = format!("{}/team/first:1", registry.addr);
    let second_name = format!("{}/team/second:1", registry.addr);
    run_pull(&mut client, &store_dir, &first_name, Arch::X86_64)
        .0
        .unwrap();
    run_pull(&mut client, &store_dir, &second_name, Arch::X86_64)
        .0
        .unwrap();

    let size = |blob: &[u8]| blob.len() as u64;
    let own =
        |image: &TestImage| size(&image.manifest) + size(&image.config) + size(&image.layers[1]);
    let before = usage(store_dir.path()).unwrap();
    assert_eq!(before.images.len(), 2);
    assert_eq!(before.images[0].reference, first_name);
    assert_eq!(before.images[0].shared_bytes, LAYER_BYTES as u64);
    assert_eq!(before.images[0].unique_bytes, own(&first));
    assert_eq!(before.images[1].unique_bytes, own(&second));
    assert_eq!(
        before.total_bytes,
        own(&first) + own(&second) + LAYER_BYTES as u64
    );
    assert_eq!(before.unreferenced_bytes, 0);

    let report = gc(store_dir.path(), std::slice::from_ref(&first_name)).unwrap();
    assert_eq!(report.removed_refs, std::slice::from_ref(&second_name));
    let mut removed = report.removed_blobs.clone();
    removed.sort();
    let mut expected: Vec<Digest> = vec![
        second.digest(),
        Digest::sha256_of(&second.config),
        Digest::sha256_of(&second.layers[1]),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(report.freed_bytes, own(&second));
    assert_eq!(report.kept_bytes, own(&first) + LAYER_BYTES as u64);

    let layout = Layout::open(store_dir.path()).unwrap();
    assert_eq!(layout.references(), std::slice::from_ref(&first_name));
    let image = layout.resolve(&first_name).unwrap();
    for (descriptor, _) in image.layers() {
        layout.read_descriptor(descriptor).unwrap();
    }
    assert!(layout.resolve(&second_name).is_err());

    // Nothing left to collect the second time; keeping nothing empties the store.
    let again = gc(store_dir.path(), std::slice::from_ref(&first_name)).unwrap();
    assert!(again.removed_refs.is_empty() && again.removed_blobs.is_empty());
    let all = gc(store_dir.path(), &[]).unwrap();
    assert_eq!(all.removed_refs, [first_name]);
    assert_eq!(all.kept_bytes, 0);
    assert_eq!(usage(store_dir.path()).unwrap().total_bytes, 0);
}

#[test]
fn gc_refuses_a_directory_that_is_no_store() {
    let dir = TempDir::new("not-a-store");
    let message = gc(dir.path(), &[]).unwrap_err().to_string();
    assert!(message.contains("not an image store"), "{message}");
}
