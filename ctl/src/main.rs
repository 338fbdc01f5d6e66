//! `berthctl`: the operator's view of a running berth host, over init's control socket
//! (root only). Images ship it at `/usr/bin/berthctl` as a name of init's binary (see
//! `init/src/main.rs`); this stand-alone build is the same program. The verbs, flags and exit
//! codes are the library's (`berth_ctl`), which `berth ctl` shares on the host.

fn main() -> std::process::ExitCode {
    berth_ctl::run_berthctl()
}
