//! Keeping time unattended: the clock floor (and, in later commits, network time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_arch::Arch;
use berth_tests::events;
use berth_tests::{build_image, log_dir, machine_config, start_to_ready, wait_line};

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
