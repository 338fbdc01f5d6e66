//! Keeping time unattended: the clock floor, then network time from netd's SNTP client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_arch::Arch;
use berth_tests::events;
use berth_tests::images::{busybox_layout, BUSYBOX, BUSYBOX_TAG};
use berth_tests::ntp::{scripted_server, Answer, Chrony};
use berth_tests::registry::{push, Registry};
use berth_tests::{build_image, log_dir, machine_config, start_to_ready, wait_line, wait_seen};

/// A container that prints the guest's clock once it runs.
const CLOCK_PROBE: &str = r#"
[containers.clock]
image = "busybox:1.35"
command = ["sh", "-c", "echo now=$(date +%s)"]
"#;

/// 2001-01-01T00:00:00Z, where `-rtc base=2001-01-01` puts the guest's RTC.
const YEAR_2001: u64 = 978_307_200;

fn seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A guest whose RTC reads 2001 boots to a clock no earlier than its image's build time,
/// and says it moved the clock (`clock-floor`). Seen failing with the floor's call in
/// `boot.rs` removed: no `clock-floor` event, the container reads 2001.
fn a_clock_set_back_years_is_raised_to_the_build_time(arch: Arch) {
    let test = format!("time-clock-floor-{arch}");
    let dir = log_dir(&test);
    let before_build = seconds_now();
    let image = build_image(arch, CLOCK_PROBE, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    config
        .extra_args
        .extend(["-rtc".to_string(), "base=2001-01-01".to_string()]);
    let mut machine = start_to_ready(&config);
    wait_line(&mut machine, r"^clock \| now=");
    let ctx = format!("console: {}", machine.console_log().display());
    let floor = events::events(&machine, "clock-floor", None);
    let floor = floor
        .first()
        .unwrap_or_else(|| panic!("no clock-floor event; {ctx}"));
    let was = floor
        .number("was")
        .unwrap_or_else(|| panic!("no was=; {ctx}"));
    assert!(
        (YEAR_2001..YEAR_2001 + 86_400 * 30).contains(&was),
        "the clock read 2001 before the floor: was={was}; {ctx}"
    );
    let floor_at = floor
        .number("floor")
        .unwrap_or_else(|| panic!("no floor=; {ctx}"));
    assert!(
        floor_at >= before_build && floor_at <= seconds_now(),
        "the floor is the image's build time: floor={floor_at}, built after {before_build}; {ctx}"
    );
    let now = events::output(&machine, "clock")
        .iter()
        .find_map(|line| {
            line.strip_prefix("now=")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("the container printed no time; {ctx}"));
    assert!(
        now >= floor_at,
        "the container's clock ({now}) is below the floor ({floor_at}); {ctx}"
    );
}

#[test]
fn x86_64_a_clock_set_back_years_is_raised_to_the_build_time() {
    a_clock_set_back_years_is_raised_to_the_build_time(Arch::X86_64);
}

#[test]
fn aarch64_a_clock_set_back_years_is_raised_to_the_build_time() {
    a_clock_set_back_years_is_raised_to_the_build_time(Arch::Aarch64);
}

/// A container that starts only once netd has set the clock, and prints the clock's whole
/// seconds five times a second for three seconds, so the test sees when its second turns.
fn synced_clock_probe(servers: &[String]) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[time]
servers = [{}]

[containers.clock]
image = "busybox:1.35"
depends_on = ["time-synced"]
command = ["sh", "-c", "for i in $(seq 15); do echo now=$(date +%s); usleep 200000; done; echo rtc=$(cat /sys/class/rtc/rtc0/since_epoch) now=$(date +%s)"]
"#,
        servers.join(", ")
    )
}

/// Boots `manifest` with its RTC in 2001; returns the machine and the wall time QEMU started
/// at, against which console lines' `at` are placed.
fn boot_in_2001(arch: Arch, test: &str, manifest: &str) -> (berth_qemu::Machine, SystemTime) {
    let (machine, started, _) = boot_in_2001_with(arch, test, manifest, false);
    (machine, started)
}

/// As [`boot_in_2001`]; with `reboots`, the guest also has a control socket (returned) and a
/// reboot restarts it in the same QEMU, its RTC kept.
fn boot_in_2001_with(
    arch: Arch,
    test: &str,
    manifest: &str,
    reboots: bool,
) -> (berth_qemu::Machine, SystemTime, std::path::PathBuf) {
    let dir = log_dir(test);
    let image = build_image(arch, manifest, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    config
        .extra_args
        .extend(["-rtc".to_string(), "base=2001-01-01".to_string()]);
    let started = SystemTime::now();
    let socket = dir.join("control.sock");
    if reboots {
        config.control_socket = Some(socket.clone());
        config.reboot_in_place = true;
    }
    (start_to_ready(&config), started, socket)
}

/// How far the guest's clock is from the test machine's, in seconds, from the container's
/// once-a-fifth-second prints: the first line of a new second arrived at most a fifth of a
/// second (plus the console's delay) after the guest's clock turned that second.
fn guest_clock_error(machine: &berth_qemu::Machine, started: SystemTime) -> f64 {
    let lines: Vec<(u64, Duration)> = machine
        .console_lines()
        .iter()
        .filter_map(|line| {
            let now = line
                .text
                .strip_prefix("clock | now=")?
                .parse::<u64>()
                .ok()?;
            Some((now, line.at))
        })
        .collect();
    let turn = lines
        .windows(2)
        .find_map(|pair| match pair {
            [(before, _), (after, at)] if after > before => Some((*after, *at)),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "the clock container's second never turned: {lines:?}; console: {}",
                machine.console_log().display()
            )
        });
    let arrived = (started + turn.1)
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "seconds since 1970 fit an f64's mantissa"
    )]
    let guest = turn.0 as f64;
    arrived - guest
}

/// A guest whose RTC reads 2001 is raised to the floor; its NTP server is not up yet, so
/// netd says `time-sync-failed` and the container that depends on `time-synced` waits;
/// once chrony serves on the test machine, netd's retry sets the clock to the true time
/// within a second (`time-synced`), writes it back to the RTC, and the container starts.
/// Seen failing with netd's clock
/// correction removed (`correct` returning without setting the clock): the container read
/// the build time, seconds behind; and with the RTC write after a sync removed: the RTC
/// still read 2001.
///
/// With `extras` (one arch is enough for these, and each boot costs the suite):
/// - a container's image comes from a registry on the test machine: its pull, started while
///   the clock is only the floor, waits for network time first (berth-pull's
///   `--wait-for-time`). Seen failing with `time_args` in init's `pulls.rs` returning
///   nothing: the image was pulled before `time-synced`, and no waiting line.
/// - init writes the synced time back to the RTC at shutdown: once the clock container is
///   done, a container with `CAP_SYS_TIME` and `/dev/rtc0` sets the RTC back to 2001 (the
///   system clock stays right); after `berthctl reboot` in the same QEMU (the RTC survives
///   the reset) the kernel reads the RTC, and no second `clock-floor` is needed. Seen
///   failing with the RTC write in init's `shutdown.rs` removed: the second boot read 2001
///   and the floor raised the clock again.
fn chrony_sets_the_clock_and_time_synced_gates_a_container(arch: Arch, extras: bool) {
    let test = format!("time-chrony-{arch}");
    let chrony_dir = log_dir(&format!("{test}-chrony"));
    let port = berth_tests::ntp::free_udp_port().unwrap_or_else(|e| panic!("{e}"));
    let mut manifest = synced_clock_probe(&[format!("10.0.2.2:{port}")]);
    if extras {
        manifest.push_str(&format!(
            r#"
[containers.rtcback]
image = "busybox:1.35"
depends_on = {{ clock = {{ condition = "service_completed_successfully" }} }}
restart = "no"
cap_add = ["SYS_TIME"]
devices = ["/dev/rtc0"]
command = ["sh", "-c", "now=$(date +%s); date -s @{YEAR_2001} >/dev/null && hwclock -w -u -f /dev/rtc0 && date -s @$((now + 1)) >/dev/null && echo rtc=$(cat /sys/class/rtc/rtc0/since_epoch)"]
"#
        ));
    }
    let registry = extras.then(|| {
        let registry = Registry::start(&log_dir(&format!("{test}-registry")));
        let layout = busybox_layout(arch).unwrap_or_else(|e| panic!("{e}"));
        push(&layout, BUSYBOX_TAG, &registry.host_addr(), BUSYBOX);
        let guest = registry.guest_addr();
        manifest.push_str(&format!(
            "\n[registries.\"{guest}\"]\ninsecure = true\n\n[containers.pulled]\n\
             image = \"{guest}/{BUSYBOX}\"\ncommand = [\"echo\", \"pulled-runs\"]\n"
        ));
        registry
    });
    let (mut machine, started, socket) = boot_in_2001_with(arch, &test, &manifest, extras);
    let ctx = format!("console: {}", machine.console_log().display());
    wait_seen(
        &machine,
        r"^berth event=time-sync-failed reason=no-usable-reply ",
    );
    wait_seen(
        &machine,
        r"^berth event=waiting container=clock for=time-synced ",
    );
    let chrony = Chrony::start(&chrony_dir, port).unwrap_or_else(|e| panic!("{e}"));
    let synced = wait_line(&mut machine, r"^berth event=time-synced ");
    assert!(
        synced.contains(&format!("server=10.0.2.2:{} ", chrony.port))
            && synced.contains("stratum=3 ")
            && synced.contains("correction=step"),
        "{synced}; {ctx}"
    );
    wait_line(&mut machine, r"^berth event=started container=clock ");
    wait_line(&mut machine, r"^berth event=exited container=clock ");
    if let Some(registry) = &registry {
        wait_seen(&machine, r"^pulled \| pulled-runs$");
        let console = machine.console_text();
        let position = |needle: &str| console.find(needle).unwrap_or(usize::MAX);
        let waiting = position("berth-pull: the clock is only the image's build time: waiting");
        let came = position("berth-pull: network time came after");
        let synced = position("berth event=time-synced ");
        let pulled = position("berth event=image-pulled ");
        assert!(
            waiting < synced && synced < came && came < pulled && pulled < usize::MAX,
            "the pull waited for network time: waiting at {waiting}, time-synced at {synced}, \
             came at {came}, image-pulled at {pulled}; {ctx}; registry log: {}",
            registry.log().display()
        );
    }
    let console = machine.console_text();
    let position = |needle: &str| console.find(needle).unwrap_or(usize::MAX);
    assert!(
        position("berth event=waiting container=clock for=time-synced")
            < position("berth event=time-synced ")
            && position("berth event=time-synced ")
                < position("berth event=started container=clock "),
        "the container waited for time-synced and started after it; {ctx}"
    );
    assert!(
        console.contains("berth event=clock-floor "),
        "the floor came first; {ctx}"
    );
    let error = guest_clock_error(&machine, started);
    assert!(
        (-1.0..1.0).contains(&error),
        "the guest's clock is {error:.3} s from the true time; {ctx}"
    );
    // netd wrote the synced time back to the RTC, which read 2001.
    let rtc_line = events::output(&machine, "clock")
        .into_iter()
        .find(|line| line.starts_with("rtc="))
        .unwrap_or_else(|| panic!("no rtc= line; {ctx}"));
    let numbers: Vec<u64> = rtc_line
        .split(' ')
        .filter_map(|field| field.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect();
    assert!(
        matches!(numbers.as_slice(), [rtc, now] if rtc.abs_diff(*now) <= 2),
        "the RTC was set to the synced time: {rtc_line}; {ctx}"
    );
    if extras {
        let set_back = wait_seen(&machine, r"^rtcback \| rtc=");
        let rtc: u64 = set_back
            .trim_start_matches("rtcback | rtc=")
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{set_back}: {e}; {ctx}"));
        assert!(
            rtc.abs_diff(YEAR_2001) < 10,
            "the container set the RTC back: {set_back}; {ctx}"
        );
        berth_tests::berth_ctl_ok(&socket, &["reboot"]);
        events::wait_count(&machine, "berth event=ready ", 2, Duration::from_secs(180));
        assert!(
            machine
                .console_text()
                .contains("berth event=shutdown-complete action=reboot"),
            "{ctx}"
        );
        assert_eq!(
            events::starting_with(&machine, "berth event=clock-floor ").len(),
            1,
            "only the first boot needed the floor: init wrote the synced time to the RTC at \
             shutdown; {ctx}"
        );
    }
}

#[test]
fn x86_64_chrony_sets_the_clock_and_time_synced_gates_a_container() {
    chrony_sets_the_clock_and_time_synced_gates_a_container(Arch::X86_64, true);
}

#[test]
fn aarch64_chrony_sets_the_clock_and_time_synced_gates_a_container() {
    chrony_sets_the_clock_and_time_synced_gates_a_container(Arch::Aarch64, false);
}

/// Servers that answer nonsense are refused, each with its reason, and the clock is set
/// from the honest ones, which agree. Seen failing with the stratum-0 and floor checks of
/// netd's `check_reply` removed: no `kiss-of-death` refusal (that reply, honest in its time,
/// joined the majority) and the years-behind reply refused only as an `outlier`.
#[test]
fn nonsense_from_ntp_servers_is_refused() {
    let chrony_dir = log_dir("time-nonsense-chrony");
    let chrony_port = berth_tests::ntp::free_udp_port().unwrap_or_else(|e| panic!("{e}"));
    let chrony = Chrony::start(&chrony_dir, chrony_port).unwrap_or_else(|e| panic!("{e}"));
    let port = |answer| scripted_server(answer).unwrap_or_else(|e| panic!("{e}"));
    let honest = port(Answer::Honest);
    let kiss = port(Answer::KissOfDeath);
    let ahead = port(Answer::YearsAhead(5));
    let behind = port(Answer::YearsBehind(20));
    let server = |port: u16| format!("10.0.2.2:{port}");
    let manifest = synced_clock_probe(&[
        server(kiss),
        server(ahead),
        server(chrony.port),
        server(behind),
        server(honest),
    ]);
    let (mut machine, started) = boot_in_2001(Arch::X86_64, "time-nonsense", &manifest);
    let ctx = format!("console: {}", machine.console_log().display());
    // Possibly before `ready`: netd syncs as soon as the network is up.
    let synced = wait_seen(&machine, r"^berth event=time-synced ");
    assert!(
        synced.contains(&format!("server={} ", server(chrony.port)))
            || synced.contains(&format!("server={} ", server(honest))),
        "set from an honest server: {synced}; {ctx}"
    );
    for (port, reason) in [
        (kiss, "kiss-of-death"),
        (ahead, "outlier"),
        (behind, "before-floor"),
    ] {
        wait_seen(
            &machine,
            &format!(
                r"^berth event=time-reply-refused server={} reason={reason} ",
                regex_escape(&server(port))
            ),
        );
    }
    wait_line(&mut machine, r"^berth event=exited container=clock ");
    let error = guest_clock_error(&machine, started);
    assert!(
        (-1.0..1.0).contains(&error),
        "the guest's clock is {error:.3} s from the true time; {ctx}"
    );
}

fn regex_escape(text: &str) -> String {
    text.replace('.', r"\.")
}
