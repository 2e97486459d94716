//! The shared conformance suite on wgpu (f32). Without an adapter each check prints a note and
//! passes, unless `CI` is set (then it fails): CI installs lavapipe so the suite really runs.
use simbal_cubecl::CubeclBackend;
use std::sync::OnceLock;

type Wgpu = cubecl::wgpu::WgpuRuntime;

/// One client for the whole test binary; every router gets a cheap clone.
fn make() -> Option<CubeclBackend<Wgpu>> {
    static BACKEND: OnceLock<Option<CubeclBackend<Wgpu>>> = OnceLock::new();
    BACKEND
        .get_or_init(|| CubeclBackend::try_new(&Default::default()))
        .clone()
}

simbal_conformance::conformance_suite!(wgpu_f32, super::make);
