//! Log shipping: a guest with `[logs] forward` sends every event and container line of a run
//! to a syslog receiver on the test machine (reached as 10.0.2.2 through QEMU's user
//! network), in order, and loses none across a 10 s receiver outage; a UDP receiver beside it
//! gets the lines too, and the kernel's log goes along.
//!
//! x86_64 only: the shipper is berth-apid's, the same code on both arches, and the run lasts
//! about 40 s of guest time.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_tests::syslog::{Received, Receiver};
use berth_tests::{berth_ctl_ok, boot_with_control_port, events, wait_seen};

/// Lines the counter prints, one each 100 ms.
const LINES: usize = 300;
const OUTAGE: Duration = Duration::from_secs(10);

/// A UDP receiver on the loopback: the datagrams it got, as text.
fn udp_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = socket
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buffer) {
            if let (Some(bytes), Ok(mut all)) = (buffer.get(..n), keep.lock()) {
                all.push(String::from_utf8_lossy(bytes).into_owned());
            }
        }
    });
    (port, got)
}

/// The messages in the order they first came, each sequence number once: a reconnect
/// sends again what the broken connection may not have delivered.
fn first_of_each(received: &[Received]) -> Vec<Received> {
    let mut seen = HashSet::new();
    received
        .iter()
        .filter(|m| m.seq.is_none_or(|seq| seen.insert(seq)))
        .cloned()
        .collect()
}

fn wait_until(what: &str, ctx: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 120 s; {ctx}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Seen failing with the shipper's resend turned off (`queue.requeue` dropped): the lines
/// written while the receiver went down were missing.
#[test]
fn ships_every_line_and_event_in_order_across_a_receiver_outage() {
    let arch = Arch::X86_64;
    berth_tests::guest_binary("berth-apid", "berth-apid", arch).unwrap_or_else(|e| panic!("{e}"));
    let mut receiver = Receiver::start();
    let (udp_port, datagrams) = udp_receiver();
    let manifest = format!(
        r#"
[logs]
forward = ["tcp://10.0.2.2:{tcp}", "udp://10.0.2.2:{udp_port}"]

[containers.counter]
image = "busybox:1.35"
command = ["sh", "-c", "i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; sleep 0.1; done"]
restart = "no"
"#,
        tcp = receiver.port(),
    );
    let (machine, socket) = boot_with_control_port(arch, &manifest, "log-shipping");
    let ctx = format!("console: {}", machine.console_log().display());
    let has_line = |receiver: &Receiver, text: &str| {
        receiver
            .received()
            .iter()
            .any(|m| m.app == "counter" && m.text == text)
    };

    wait_until("line-30 at the receiver", &ctx, || {
        has_line(&receiver, "line-30")
    });
    receiver.down();
    std::thread::sleep(OUTAGE);
    receiver.up();
    wait_seen(&machine, "^berth event=exited container=counter ");
    wait_until("the counter's exit at the receiver", &ctx, || {
        receiver
            .received()
            .iter()
            .any(|m| m.msgid == "exited" && m.text.contains("container=counter"))
    });

    // Init's events as `berthctl events` lists them, once the receiver has the last of
    // them: the counter's exit is followed by `stopped` and more, and the receiver's copy
    // is looked at only after they too went across.
    let listed: Vec<String> = berth_ctl_ok(&socket, &["events"])
        .lines()
        .map(str::to_string)
        .collect();
    let last_listed = listed.last().cloned().unwrap_or_default();
    wait_until("the last listed event at the receiver", &ctx, || {
        receiver
            .received()
            .iter()
            .any(|m| m.app == "berth" && m.text == last_listed)
    });

    let all = receiver.received();
    let shown = || {
        let lines: Vec<String> = all
            .iter()
            .map(|m| format!("{:?} {} {} {}", m.seq, m.app, m.msgid, m.text))
            .collect();
        format!(
            "received:\n{}\nmalformed: {:?}\n{ctx}",
            lines.join("\n"),
            receiver.malformed()
        )
    };
    assert!(receiver.malformed().is_empty(), "{}", shown());
    let unique = first_of_each(&all);
    // Every line the shipper numbered came, in order, none missing.
    let seqs: Vec<u64> = unique.iter().filter_map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{}", shown());
    // The container's lines, all of them, in order.
    let counter: Vec<&str> = unique
        .iter()
        .filter(|m| m.app == "counter")
        .map(|m| m.text.as_str())
        .collect();
    let wanted: Vec<String> = (1..=LINES).map(|i| format!("line-{i}")).collect();
    assert_eq!(counter, wanted, "{}", shown());
    assert!(
        unique
            .iter()
            .any(|m| m.app == "counter" && m.priority == 14),
        "container lines are user.info; {}",
        shown()
    );
    // Init's events as `berthctl events` listed them, in the same order (and any that came
    // since, after them).
    let shipped: Vec<String> = unique
        .iter()
        .filter(|m| m.app == "berth" && m.seq.is_some())
        .map(|m| m.text.clone())
        .collect();
    assert_eq!(
        shipped.get(..listed.len()),
        Some(listed.as_slice()),
        "{}",
        shown()
    );
    // The kernel's log went along; init's own lines in it did not go twice.
    assert!(
        unique
            .iter()
            .any(|m| m.app == "kernel" && m.text.starts_with("Linux version")),
        "{}",
        shown()
    );
    assert!(
        !unique
            .iter()
            .any(|m| m.app == "kernel" && m.text.contains("berth event=")),
        "{}",
        shown()
    );
    // The outage was seen as one, and the shipper connected again.
    let receiver_name = format!("tcp://10.0.2.2:{}", receiver.port());
    let connected = events::starting_with(&machine, "berth event=logs-connected ")
        .into_iter()
        .filter(|e| e.get("receiver") == Some(receiver_name.as_str()))
        .count();
    assert!(connected >= 2, "{ctx}");
    wait_seen(&machine, "^berth event=logs-disconnected receiver=tcp://");

    // The UDP receiver got the lines too (datagrams may be lost in principle; on the
    // loopback none are).
    let got = datagrams.lock().map(|d| d.clone()).unwrap_or_default();
    for line in ["line-1", &format!("line-{LINES}")] {
        assert!(
            got.iter()
                .any(|d| d.contains(" counter - - ") && d.ends_with(&format!("] {line}"))),
            "UDP: no {line} in {got:?}; {ctx}"
        );
    }
}
