//! netd, started and supervised by init. Everything lives in the library.

fn main() -> std::process::ExitCode {
    berth_netd::run()
}
