//! Every manifest in `examples/` builds: `berth build` (the library the CLI calls) accepts
//! it, with the busybox image baked in, for x86_64. No boot: `demo` boots the default one.

use berth_arch::Arch;
use berth_tests::{log_dir, workspace_root};

#[test]
fn every_example_manifest_builds() {
    let dir = workspace_root().join("examples");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    for example in examples {
        let name = example
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{e}"));
        let out = log_dir(&format!("example-{name}"));
        berth_tests::build_image(Arch::X86_64, &text, &out)
            .unwrap_or_else(|e| panic!("examples/{name}.toml: {e}"));
    }
}
