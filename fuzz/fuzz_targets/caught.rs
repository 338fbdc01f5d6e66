//! For targets whose code under test catches a dependency's panics, as berth's guest builds
//! (which unwind) do: libFuzzer's panic hook would abort on such a panic before the catch.

/// Panics raised in the source of `dependency` (a path part such as `/gpt-`) are left to the
/// code's own catch, quietly; any other aborts the run, as libfuzzer-sys's own hook does.
pub fn leave_caught_panics_to_the_code(dependency: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains(dependency))
            {
                return;
            }
            default(info);
            std::process::abort();
        }));
    });
}
