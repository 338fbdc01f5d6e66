//! berth's PID 1. Everything lives in the library; see `berth_init::run`.

fn main() {
    berth_init::run()
}
