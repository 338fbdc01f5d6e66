//! `scripts/demo` itself, on both arches: it builds the busybox image and
//! `examples/default.toml` and boots them with `berth run --publish`; then the web page
//! answers on the published port of this machine, and `berth ctl --image DIR ps` lists the
//! stack with the crashing worker's restarts growing. The script is run with `--profile dev`
//! (the `berth` the tests built) and `--port` (a free port, as tests run side by side); the
//! rest is the path a new user takes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_tests::free_port;
use berth_tests::{berth_cli, log_dir, workspace_root};

/// `GET /` on the loopback port; the body when the answer is a 200.
fn page(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.contains(" 200 ").then(|| body.to_string())
}

fn cli(args: &[&str]) -> std::process::Output {
    let berth = berth_cli().unwrap_or_else(|e| panic!("{e}"));
    Command::new(berth)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("berth {args:?}: {e}"))
}

/// The RESTARTS column of `name` in `berth ctl --image DIR ps`.
fn restarts(image: &str, name: &str) -> Option<u32> {
    let ps = cli(&["ctl", "--image", image, "--timeout", "30", "ps"]);
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
}

fn wait_until<T>(what: &str, ctx: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within 180 s; {ctx}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The demo's process (`berth run`, which the script became), killed when a failed check
/// unwinds: its QEMU goes with it (parent-death signal), and no guest is left holding ports.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `scripts/demo` for `arch` and checks what its hints promise.
fn demo(arch: Arch) {
    let dir = log_dir(&format!("demo-{arch}"));
    // Built first, so that the script's own builds find them fresh.
    berth_tests::guest_init(arch).unwrap_or_else(|e| panic!("{e}"));
    berth_cli().unwrap_or_else(|e| panic!("{e}"));
    let image = workspace_root()
        .join(format!("target/images/default-{arch}"))
        .display()
        .to_string();
    // A test run must not boot the image a user's demo left running, nor be fooled by it.
    let _ = std::fs::remove_dir_all(&image);
    let port = free_port();
    let stderr_log = dir.join("demo.stderr");
    let stdout_log = dir.join("demo.stdout");
    let mut run = Command::new(workspace_root().join("scripts/demo"))
        .args(["--arch", &arch.to_string(), "--profile", "dev"])
        .args(["--port", &port.to_string(), "--timeout", "900"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_log).unwrap_or_else(|e| panic!("{e}")))
        .stderr(std::fs::File::create(&stderr_log).unwrap_or_else(|e| panic!("{e}")))
        .spawn()
        .map(Running)
        .unwrap_or_else(|e| panic!("scripts/demo: {e}"));
    let ctx = format!(
        "console: {image}/run/console.log; scripts/demo's stdout: {}, stderr: {}",
        stdout_log.display(),
        stderr_log.display()
    );

    let body = wait_until("the page on the published port", &ctx, || {
        if let Ok(Some(status)) = run.0.try_wait() {
            panic!("scripts/demo ended early: {status}; {ctx}");
        }
        page(port)
    });
    assert!(body.contains("hello from berth"), "{body}; {ctx}");
    let said = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    for hint in [
        format!("curl http://127.0.0.1:{port}/"),
        format!("ctl --image target/images/default-{arch} ps"),
        "the host is ready".to_string(),
    ] {
        assert!(said.contains(&hint), "no {hint:?} in {said}; {ctx}");
    }
    let ps = cli(&["ctl", "--image", &image, "ps"]);
    let listed = String::from_utf8_lossy(&ps.stdout).into_owned();
    for (name, state) in [("setup", "stopped"), ("web", "running")] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(name) && l.contains(state)),
            "{name} {state}: {listed}; {ctx}"
        );
    }
    let first = wait_until("a worker restart", &ctx, || {
        restarts(&image, "worker").filter(|n| *n >= 1)
    });
    wait_until("another worker restart", &ctx, || {
        restarts(&image, "worker").filter(|n| *n > first)
    });

    let off = cli(&["ctl", "--image", &image, "poweroff"]);
    assert!(off.status.success(), "{off:?}; {ctx}");
    let status = wait_until("the demo's exit", &ctx, || run.0.try_wait().ok().flatten());
    assert!(status.success(), "scripts/demo: {status}; {ctx}");
}

/// Seen failing with `--publish` not passed on to QEMU: nothing answered on the port.
#[test]
fn the_demo_serves_its_page_on_the_published_port_and_restarts_its_worker() {
    demo(Arch::X86_64);
}

#[test]
fn the_demo_serves_its_page_on_the_published_port_and_restarts_its_worker_aarch64() {
    demo(Arch::Aarch64);
}
