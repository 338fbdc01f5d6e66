//! A hostile registry (issue 23's hostile inputs), against the host build of berth-pull, the
//! same code the guest runs as a daemon init supervises: a manifest that redirects to itself,
//! a layer that trickles a byte at a time, a layer whose manifest claims a terabyte, a layer
//! answered with more bytes than its manifest claims, and a manifest that never ends. Each
//! pull fails with an error naming the cause, within a bound, and leaves no blob behind.
//!
//! No QEMU: the registry speaks to berth-pull over the loopback, and what is checked (the
//! HTTP client, the download loop, the store) is the same code on both arches.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_tests::registry::{run_berth_pull_with_env, Digest};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;

/// How a pull of a hostile registry may take at most, retries included.
const PULL_LIMIT: Duration = Duration::from_secs(60);
/// The stall window berth-pull is given in the trickle case (its default is a minute).
const STALL_WINDOW_SECS: &str = "2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// The manifest redirects to itself.
    RedirectLoop,
    /// The layer comes a byte every 100 ms.
    Trickle,
    /// The manifest claims the layer is a terabyte.
    HugeClaim,
    /// The layer is answered with 64 KiB more than the manifest says.
    LongerThanClaimed,
    /// The manifest's body never ends.
    EndlessManifest,
}

/// A one-layer image: (manifest, config, layer) bytes.
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl Image {
    fn new(claim_layer_size: Option<u64>) -> Image {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        let body = b"hello from a hostile registry\n";
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "hello.txt", &body[..])
            .unwrap_or_else(|e| panic!("{e}"));
        let tar = tar.into_inner().unwrap_or_else(|e| panic!("{e}"));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&tar).unwrap_or_else(|e| panic!("{e}"));
        let layer = gz.finish().unwrap_or_else(|e| panic!("{e}"));
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).0]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config).0,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": Digest::of(&layer).0,
                "size": claim_layer_size.unwrap_or(layer.len() as u64),
            }],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Image {
            manifest,
            config,
            layer,
        }
    }
}

/// Answers one request; what it asked for is logged.
fn answer(
    mut stream: TcpStream,
    image: &Image,
    misbehaviour: Misbehaviour,
    log: &Mutex<Vec<String>>,
) {
    let mut request = String::new();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let _ = reader.read_line(&mut request);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    if let Ok(mut log) = log.lock() {
        log.push(path.clone());
    }
    let config_path = format!("/v2/test/blobs/{}", Digest::of(&image.config));
    let layer_path = format!("/v2/test/blobs/{}", Digest::of(&image.layer));
    let send = |stream: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
    };
    if path == "/v2/" {
        send(&mut stream, "200 OK", "", b"{}");
    } else if path.starts_with("/v2/test/manifests/") {
        match misbehaviour {
            Misbehaviour::RedirectLoop => {
                let location = format!("Location: {path}\r\n");
                send(&mut stream, "307 Temporary Redirect", &location, b"");
            }
            Misbehaviour::EndlessManifest => {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n",
                );
                let chunk = vec![b' '; 64 << 10];
                while stream.write_all(&chunk).is_ok() {}
            }
            _ => send(
                &mut stream,
                "200 OK",
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
                &image.manifest,
            ),
        }
    } else if path == config_path {
        send(&mut stream, "200 OK", "", &image.config);
    } else if path == layer_path {
        match misbehaviour {
            Misbehaviour::Trickle => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    image.layer.len()
                );
                for byte in &image.layer {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Misbehaviour::LongerThanClaimed => {
                let mut body = image.layer.clone();
                body.extend(std::iter::repeat_n(0u8, 64 << 10));
                send(&mut stream, "200 OK", "", &body);
            }
            _ => send(&mut stream, "200 OK", "", &image.layer),
        }
    } else {
        send(&mut stream, "404 Not Found", "", b"");
    }
}

/// Serves `image` with `misbehaviour` on the loopback; its address and the paths asked for.
fn serve(image: Image, misbehaviour: Misbehaviour) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    let image = Arc::new(image);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(stream) = stream else { continue };
            let (image, log) = (Arc::clone(&image), Arc::clone(&log));
            std::thread::spawn(move || answer(stream, &image, misbehaviour, &log));
        }
    });
    (addr, seen)
}

/// Pulls from a registry that misbehaves so; the pull's error and what it asked for.
fn pull_fails(
    misbehaviour: Misbehaviour,
    claim: Option<u64>,
) -> (String, Vec<String>, std::path::PathBuf) {
    let image = Image::new(claim);
    let (addr, log) = serve(image, misbehaviour);
    let dir = berth_tests::log_dir(&format!("hostile-registry-{misbehaviour:?}"));
    let store = dir.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let started = Instant::now();
    let run = run_berth_pull_with_env(
        &store,
        Arch::X86_64,
        &["--insecure", &addr],
        &format!("{addr}/test:1"),
        &[("BERTH_PULL_STALL_WINDOW_SECS", STALL_WINDOW_SECS)],
    );
    let took = started.elapsed();
    assert!(
        !run.success,
        "{misbehaviour:?}: the pull succeeded: {}",
        run.stdout
    );
    assert!(
        took < PULL_LIMIT,
        "{misbehaviour:?}: the pull took {took:?}: {}",
        run.stdout
    );
    let asked = log.lock().map(|l| l.clone()).unwrap_or_default();
    (run.error(), asked, store)
}

/// No blob of the layer is in the store. A partial download may stay (of at most the
/// claimed size): a later pull resumes it, as after a power cut.
fn no_layer_stored(store: &Path, misbehaviour: Misbehaviour) {
    let layer = Digest::of(&Image::new(None).layer);
    let found: Vec<String> = walk(store)
        .into_iter()
        .filter(|p| p.contains(layer.hex()) && !p.contains("/partial/"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    assert!(
        found.is_empty(),
        "{misbehaviour:?}: left in the store: {found:?}"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path.display().to_string()]
            }
        })
        .collect()
}

#[test]
fn rig_a_hostile_registry_costs_one_failed_pull_with_its_reason() {
    let (error, _, _) = pull_fails(Misbehaviour::RedirectLoop, None);
    assert!(
        error.to_lowercase().contains("redirect"),
        "redirect loop: {error}"
    );

    let (error, _, store) = pull_fails(Misbehaviour::Trickle, None);
    assert!(error.contains("broken off"), "trickle: {error}");
    no_layer_stored(&store, Misbehaviour::Trickle);

    let (error, asked, store) = pull_fails(Misbehaviour::HugeClaim, Some(1 << 40));
    assert!(error.contains("bytes free"), "huge claim: {error}");
    let layer = Digest::of(&Image::new(None).layer);
    assert!(
        !asked.iter().any(|p| p.ends_with(&layer.0)),
        "the terabyte layer was asked for: {asked:?}"
    );
    no_layer_stored(&store, Misbehaviour::HugeClaim);

    let (error, _, store) = pull_fails(Misbehaviour::LongerThanClaimed, None);
    assert!(
        error.contains("size mismatch"),
        "longer than claimed: {error}"
    );
    no_layer_stored(&store, Misbehaviour::LongerThanClaimed);

    let (error, _, _) = pull_fails(Misbehaviour::EndlessManifest, None);
    assert!(!error.is_empty(), "endless manifest: no error");
}
