//! netd, started and supervised by init. Everything lives in the library. Images ship it as a
//! name of init's binary (see `init/src/main.rs`); this stand-alone build is the same program.

fn main() -> std::process::ExitCode {
    berth_netd::run()
}
