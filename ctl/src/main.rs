//! `berthctl`: the operator's view of a running berth host, over init's control socket
//! (root only). Shipped in every image at `/usr/bin/berthctl`. The verbs, flags and exit
//! codes are the library's (`berth_ctl`), which `berth ctl` shares on the host.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    berth_ctl::run(
        "berthctl",
        Path::new(berth_control::SOCKET),
        std::env::args().skip(1).collect(),
    )
}
