fn main() -> std::process::ExitCode {
    berth_apid::run()
}
