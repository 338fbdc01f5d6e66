//! Guest binaries are static executables of the right machine type.

use berth_arch::Arch;
use berth_image::elf;
use berth_tests::guest_init;

#[test]
fn init_is_static_and_built_for_each_arch() {
    for arch in Arch::ALL {
        let path = guest_init(arch).unwrap_or_else(|e| panic!("{e}"));
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let facts = elf::read_facts(&path, &data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(facts.machine, arch.elf_machine(), "{}", path.display());
        assert!(!facts.has_interpreter, "{} has PT_INTERP", path.display());
        elf::check_static_executable(&path, &data, arch).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_dynamic_host_binary_is_refused() {
    // The test binary itself is a dynamically linked glibc executable.
    let path = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let host = Arch::host().unwrap_or(Arch::X86_64);
    let err = elf::check_static_executable(&path, &data, host)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("dynamically linked"), "{err}");
}
