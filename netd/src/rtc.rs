//! The hardware clock: once the network has set the system clock, the RTC is set from it
//! (`RTC_SET_TIME` on `/dev/rtc0`), so the next boot starts near the true time even before the
//! network is up. netd writes it after each sync, init at shutdown.

use std::os::fd::AsRawFd;

/// The RTC the kernel reads the clock from at boot (`CONFIG_RTC_HCTOSYS_DEVICE`).
pub const RTC_DEVICE: &str = "/dev/rtc0";

/// `struct rtc_time` of `<linux/rtc.h>`: the first nine fields of `struct tm`, and no more.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RtcTime {
    tm_sec: std::ffi::c_int,
    tm_min: std::ffi::c_int,
    tm_hour: std::ffi::c_int,
    tm_mday: std::ffi::c_int,
    tm_mon: std::ffi::c_int,
    tm_year: std::ffi::c_int,
    tm_wday: std::ffi::c_int,
    tm_yday: std::ffi::c_int,
    tm_isdst: std::ffi::c_int,
}

// `RTC_SET_TIME _IOW('p', 0x0a, struct rtc_time)`.
nix::ioctl_write_ptr!(rtc_set_time, b'p', 0x0a, RtcTime);

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("cannot open {device}: {source}")]
    Open {
        device: &'static str,
        source: std::io::Error,
    },
    #[error("cannot convert the system time to UTC fields")]
    Convert,
    #[error("RTC_SET_TIME on {device}: {source}")]
    Set {
        device: &'static str,
        source: nix::Error,
    },
}

/// Sets the RTC to the system clock's time (UTC, whole seconds).
pub fn write_system_time() -> Result<(), RtcError> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_err(|_| RtcError::Convert)?;
    let seconds = now.tv_sec();
    // SAFETY: `tm` is plain data, valid all zero; gmtime_r writes it and reads `seconds`,
    // both live for the call.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { nix::libc::gmtime_r(&seconds, &mut tm) }.is_null() {
        return Err(RtcError::Convert);
    }
    let time = RtcTime {
        tm_sec: tm.tm_sec,
        tm_min: tm.tm_min,
        tm_hour: tm.tm_hour,
        tm_mday: tm.tm_mday,
        tm_mon: tm.tm_mon,
        tm_year: tm.tm_year,
        tm_wday: tm.tm_wday,
        tm_yday: tm.tm_yday,
        tm_isdst: 0,
    };
    let rtc = std::fs::OpenOptions::new()
        .read(true)
        .open(RTC_DEVICE)
        .map_err(|source| RtcError::Open {
            device: RTC_DEVICE,
            source,
        })?;
    // SAFETY: the fd is the open RTC for the call's duration; `time` is a live
    // `struct rtc_time` the kernel only reads.
    unsafe { rtc_set_time(rtc.as_raw_fd(), &time) }.map_err(|source| RtcError::Set {
        device: RTC_DEVICE,
        source,
    })?;
    Ok(())
}
