//! A fake OCI registry for the tests: a small HTTP/1.1 server on 127.0.0.1 in a thread, one
//! request per connection, serving manifests and blobs, with an optional bearer-token
//! challenge whose token endpoint checks Basic credentials, `Range` requests, and faults on
//! demand (corrupt content, a status answered once, a connection cut mid-body).

#![allow(dead_code, reason = "each test binary uses part of the support code")]
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test support")]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use berth_oci::{Digest, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_LAYER_TAR};
use berth_registry::{AuthFile, Client, ClientConfig, RetryPolicy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonderland";
pub const TOKEN: &str = "fake-token-1";
const SERVICE: &str = "fake-registry";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    /// By `repository/reference` (a tag or a digest): media type and bytes.
    pub manifests: HashMap<String, (String, Vec<u8>)>,
    pub blobs: HashMap<String, Vec<u8>>,
    /// Require a bearer token (obtained with Basic `USER:PASSWORD`).
    pub auth: bool,
    /// Blobs served with one byte changed.
    pub corrupt: HashSet<String>,
    /// Blob digests answered with this status once.
    pub fail_once: HashMap<String, u16>,
    /// Blob digests always answered with 503.
    pub fail_always: HashSet<String>,
    /// Blob digests whose next answer is cut after this many body bytes.
    pub cut_once: HashMap<String, usize>,
    /// Answer `Range` requests with the whole blob, as a server without range support does.
    pub ignore_range: bool,
    pub seen: Vec<Seen>,
}

pub struct FakeRegistry {
    pub addr: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    pub fn start(state: State) -> FakeRegistry {
        FakeRegistry::start_with(state, None)
    }

    /// Serves HTTPS with this TLS configuration (see [`tls_server`]).
    pub fn start_tls(state: State, tls: Arc<ServerConfig>) -> FakeRegistry {
        FakeRegistry::start_with(state, Some(tls))
    }

    fn start_with(state: State, tls: Option<Arc<ServerConfig>>) -> FakeRegistry {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, addr) = (state.clone(), stop.clone(), addr.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (state, addr, tls) = (state.clone(), addr.clone(), tls.clone());
                    thread::spawn(move || {
                        // A client that hangs up early (or refuses our certificate) is no
                        // failure of the server.
                        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                        let origin = format!("{scheme}://{addr}");
                        let _ = match tls {
                            Some(config) => ServerConnection::new(config)
                                .map_err(io::Error::other)
                                .and_then(|connection| {
                                    handle(StreamOwned::new(connection, stream), &state, &origin)
                                }),
                            None => handle(stream, &state, &origin),
                        };
                    });
                }
            })
        };
        FakeRegistry {
            addr,
            scheme,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// A client that speaks plain HTTP to this server (HTTPS when it serves that) and
    /// retries quickly.
    pub fn client(&self, auth: Option<&Path>) -> Client {
        Client::new(self.client_config(auth)).unwrap()
    }

    pub fn client_config(&self, auth: Option<&Path>) -> ClientConfig {
        let auth = match auth {
            Some(path) => AuthFile::load(path).unwrap(),
            None => AuthFile::default(),
        };
        ClientConfig {
            insecure: if self.scheme == "http" {
                vec![self.addr.clone()]
            } else {
                Vec::new()
            },
            auth,
            retry: RetryPolicy {
                attempts: 4,
                first_delay: Duration::from_millis(10),
            },
            ..ClientConfig::default()
        }
    }

    /// Writes a Docker `config.json` with this server's credentials into `dir`.
    pub fn auth_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("auth.json");
        let auth = BASE64.encode(format!("{USER}:{PASSWORD}"));
        fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr),
        )
        .unwrap();
        path
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_after: Option<usize>,
}

impl Answer {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_after: None,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn handle(stream: impl Read + Write, state: &Mutex<State>, origin: &str) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let answer = {
        let mut state = state.lock().unwrap();
        let answer = route(&mut state, path, &headers, origin);
        state.seen.push(Seen {
            path: path.to_string(),
            query: query.to_string(),
            range: headers.get("range").cloned(),
            authorization: headers.get("authorization").cloned(),
            status: answer.status,
        });
        answer
    };
    write_answer(reader.get_mut(), answer)
}

fn route(state: &mut State, path: &str, headers: &HashMap<String, String>, origin: &str) -> Answer {
    if path == "/token" {
        let expected = format!("Basic {}", BASE64.encode(format!("{USER}:{PASSWORD}")));
        return if headers.get("authorization") == Some(&expected) {
            Answer::new(200, format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#))
                .header("Content-Type", "application/json")
        } else {
            Answer::new(401, r#"{"details":"bad credentials"}"#)
        };
    }
    let Some(api) = path.strip_prefix("/v2/") else {
        return not_found();
    };
    let (repository, kind, reference) =
        if let Some((repo, reference)) = api.rsplit_once("/manifests/") {
            (repo, "manifests", reference)
        } else if let Some((repo, digest)) = api.rsplit_once("/blobs/") {
            (repo, "blobs", digest)
        } else if api.is_empty() {
            ("", "ping", "")
        } else {
            return not_found();
        };
    if state.auth && headers.get("authorization") != Some(&format!("Bearer {TOKEN}")) {
        let challenge = format!(
            r#"Bearer realm="{origin}/token",service="{SERVICE}",scope="repository:{repository}:pull""#
        );
        return Answer::new(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
        .header("WWW-Authenticate", challenge);
    }
    match kind {
        "ping" => Answer::new(200, "{}"),
        "manifests" => match state.manifests.get(&format!("{repository}/{reference}")) {
            Some((media_type, bytes)) => {
                Answer::new(200, bytes.clone()).header("Content-Type", media_type.clone())
            }
            None => Answer::new(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        },
        _ => blob(state, reference, headers),
    }
}

fn blob(state: &mut State, digest: &str, headers: &HashMap<String, String>) -> Answer {
    if let Some(status) = state.fail_once.remove(digest) {
        return Answer::new(status, "try again later");
    }
    if state.fail_always.contains(digest) {
        return Answer::new(503, "try again later");
    }
    let Some(mut content) = state.blobs.get(digest).cloned() else {
        return Answer::new(
            404,
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
        );
    };
    if state.corrupt.contains(digest) {
        if let Some(byte) = content.last_mut() {
            *byte ^= 0xff;
        }
    }
    let cut_after = state.cut_once.remove(digest);
    let range_start = headers
        .get("range")
        .filter(|_| !state.ignore_range)
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .map(|start| start.parse::<usize>().unwrap());
    let mut answer = match range_start {
        Some(start) if start >= content.len() => {
            Answer::new(416, "").header("Content-Range", format!("bytes */{}", content.len()))
        }
        Some(start) => {
            let total = content.len();
            Answer::new(206, content.split_off(start)).header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", total - 1),
            )
        }
        None => Answer::new(200, content),
    };
    answer.cut_after = cut_after;
    answer.header("Content-Type", "application/octet-stream")
}

fn not_found() -> Answer {
    Answer::new(404, "404 page not found\n")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn write_answer(stream: &mut impl Write, answer: Answer) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status),
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let body = match answer.cut_after {
        Some(cut) => &answer.body[..cut.min(answer.body.len())],
        None => &answer.body[..],
    };
    stream.write_all(body)?;
    stream.flush()
}

/// A private CA (its certificate in PEM) and a server configuration whose certificate it
/// signed, for `127.0.0.1` and `localhost`.
pub fn tls_server() -> (String, Arc<ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let chain = vec![CertificateDer::from(server.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    (ca.pem(), Arc::new(config))
}

/// An image as the tests build them: uncompressed "layers" of arbitrary bytes (nothing here
/// unpacks them), a config listing their digests as diff_ids, and the manifest.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    pub fn new(architecture: &str, layers: Vec<Vec<u8>>) -> TestImage {
        TestImage::with_layer_media_type(architecture, layers, MEDIA_TYPE_LAYER_TAR)
    }

    pub fn with_layer_media_type(
        architecture: &str,
        layers: Vec<Vec<u8>>,
        layer_media_type: &str,
    ) -> TestImage {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|layer| format!("\"{}\"", Digest::sha256_of(layer)))
            .collect();
        let config = format!(
            r#"{{"architecture":"{architecture}","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        )
        .into_bytes();
        let layer_descriptors: Vec<String> = layers
            .iter()
            .map(|layer| descriptor(layer_media_type, layer))
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_IMAGE_MANIFEST}","config":{},"layers":[{}]}}"#,
            descriptor(CONFIG_MEDIA_TYPE, &config),
            layer_descriptors.join(",")
        )
        .into_bytes();
        TestImage {
            config,
            layers,
            manifest,
        }
    }

    pub fn digest(&self) -> Digest {
        Digest::sha256_of(&self.manifest)
    }

    pub fn blob_digests(&self) -> Vec<Digest> {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .map(|blob| Digest::sha256_of(blob))
            .collect()
    }

    /// Serves this image's blobs, and its manifest under its digest and under `tag`.
    pub fn serve(&self, state: &mut State, repository: &str, tag: Option<&str>) {
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            state
                .blobs
                .insert(Digest::sha256_of(blob).to_string(), blob.clone());
        }
        let entry = (MEDIA_TYPE_IMAGE_MANIFEST.to_string(), self.manifest.clone());
        state
            .manifests
            .insert(format!("{repository}/{}", self.digest()), entry.clone());
        if let Some(tag) = tag {
            state.manifests.insert(format!("{repository}/{tag}"), entry);
        }
    }
}

/// An OCI index of `(image, architecture, variant)`, served under `tag` and its digest.
pub fn serve_index(
    state: &mut State,
    repository: &str,
    tag: &str,
    images: &[(&TestImage, &str, Option<&str>)],
) -> Digest {
    let entries: Vec<String> = images
        .iter()
        .map(|(image, architecture, variant)| {
            image.serve(state, repository, None);
            let variant = variant.map_or(String::new(), |v| format!(r#","variant":"{v}""#));
            format!(
                r#"{{"mediaType":"{MEDIA_TYPE_IMAGE_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"{architecture}","os":"linux"{variant}}}}}"#,
                image.digest(),
                image.manifest.len()
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_IMAGE_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes();
    let digest = Digest::sha256_of(&index);
    let entry = (MEDIA_TYPE_IMAGE_INDEX.to_string(), index);
    state
        .manifests
        .insert(format!("{repository}/{digest}"), entry.clone());
    state.manifests.insert(format!("{repository}/{tag}"), entry);
    digest
}

fn descriptor(media_type: &str, blob: &[u8]) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        Digest::sha256_of(blob),
        blob.len()
    )
}

/// `len` bytes that differ for each `seed` and do not compress to nothing.
pub fn blob_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("berth-registry-{name}-"))
                .tempdir()
                .expect("create the test directory"),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}
