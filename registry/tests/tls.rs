//! HTTPS with rustls and ring: a registry whose certificate a private CA signed is trusted
//! with `--ca` (in addition to, or instead of, the built-in roots) and refused without it.

#![expect(clippy::indexing_slicing, reason = "test code: a failed check panics")]
#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::fs;

use berth_oci::Layout;
use berth_registry::{pull, Arch, Client, ClientConfig, Event, Reference, RegistryError};
use support::{blob_bytes, tls_server, FakeRegistry, State, TempDir, TestImage};

#[test]
fn a_private_ca_is_trusted_with_ca_files_and_only_then() {
    let image = TestImage::new("amd64", vec![blob_bytes(40, 50_000)]);
    let mut state = State {
        auth: true,
        ..State::default()
    };
    image.serve(&mut state, "team/app", Some("1"));
    let (ca_pem, tls) = tls_server();
    let registry = FakeRegistry::start_tls(state, tls);
    let dir = TempDir::new("tls");
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, ca_pem).unwrap();
    let auth = registry.auth_file(dir.path());
    let reference = Reference::parse(&format!("{}/team/app:1", registry.addr)).unwrap();
    let name = reference.to_string();

    // Built-in roots only: the handshake fails, once, with a hint.
    let store = TempDir::new("tls-store");
    let mut client = registry.client(Some(&auth));
    let mut events = Vec::new();
    let error = pull(
        &mut client,
        store.path(),
        &reference,
        &name,
        Arch::X86_64,
        &mut |event| events.push(event),
    )
    .unwrap_err();
    assert!(matches!(error, RegistryError::Tls { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("--ca FILE"), "{message}");
    assert!(!events
        .iter()
        .any(|event| matches!(event, Event::Retry { .. })));

    // The CA added to the built-in roots, then instead of them: both pull over HTTPS,
    // bearer token and all.
    for bundled_roots in [true, false] {
        let store = TempDir::new(&format!("tls-store-{bundled_roots}"));
        let mut client = Client::new(ClientConfig {
            ca_files: vec![ca.clone()],
            bundled_roots,
            ..registry.client_config(Some(&auth))
        })
        .unwrap();
        let report = pull(
            &mut client,
            store.path(),
            &reference,
            &name,
            Arch::X86_64,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(report.digest, image.digest());
        Layout::open(store.path()).unwrap().resolve(&name).unwrap();
    }
    assert!(registry
        .seen()
        .iter()
        .any(|request| request.path == "/token"));
}
