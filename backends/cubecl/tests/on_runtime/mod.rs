//! The shared conformance suite on one cubecl runtime, for the `conformance_*` test binaries.

/// Runs `simbal_conformance::conformance_suite!` as module `$name` on runtime `$runtime` (f32),
/// with one backend for the whole test binary: every router gets a cheap clone.
macro_rules! conformance_on {
    ($name:ident, $runtime:ty) => {
        fn make() -> Option<simbal_cubecl::CubeclBackend<$runtime>> {
            use simbal_cubecl::CubeclBackend;
            static BACKEND: std::sync::OnceLock<Option<CubeclBackend<$runtime>>> =
                std::sync::OnceLock::new();
            BACKEND
                .get_or_init(|| CubeclBackend::try_new(&Default::default()))
                .clone()
        }

        simbal_conformance::conformance_suite!($name, super::make);
    };
}
