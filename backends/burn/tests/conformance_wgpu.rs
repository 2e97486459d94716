//! The shared conformance suite on burn's wgpu backend (f32): the engine burn's `Wgpu` hands
//! out (simbal-cubecl on burn's own compute client) and the generic path over `Wgpu` tensors
//! (its GEMM and router checks).
//! Without an adapter each check prints a note and passes, unless `CI` is set (then it fails):
//! CI installs lavapipe so the suite really runs.
#![cfg(feature = "wgpu")]

use burn::backend::Wgpu;
use simbal_burn::{BurnTensors, SimbalBackend};
use simbal_cubecl::CubeclBackend;

type Runtime = cubecl::wgpu::WgpuRuntime;

/// Whether this machine has a wgpu adapter (asked once).
fn adapter() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| CubeclBackend::<Runtime>::try_new(&Default::default()).is_some())
}

fn engine() -> Option<CubeclBackend<Runtime>> {
    adapter()
        .then(|| <Wgpu as SimbalBackend>::engine(&Default::default()).ok())
        .flatten()
}

fn generic() -> Option<BurnTensors<Wgpu>> {
    adapter().then(|| BurnTensors::new(&Default::default()))
}

simbal_conformance::conformance_suite!(burn_wgpu_engine, super::engine);

/// The generic path stages every kernel but the GEMM through the host, which on lavapipe makes
/// the whole suite take a quarter of an hour (all 88 checks passed, 2026-12-01); CI runs its
/// GEMM and router checks, which cover burn's matmul and the transfers on a device backend. The
/// same path is checked in full over `NdArray` in `conformance.rs`.
mod burn_wgpu_generic {
    use super::*;
    simbal_conformance::conformance_gemm!(generic);
    simbal_conformance::conformance_router!(generic);
}
