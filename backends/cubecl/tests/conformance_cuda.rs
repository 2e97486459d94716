//! The shared conformance suite on CUDA (f32); compiled with `--features cuda` only.
//! Run by `gpu-check.sh` (with `CI` set, so a missing device fails instead of skipping).
#![cfg(feature = "cuda")]

use simbal_cubecl::CubeclBackend;
use std::sync::OnceLock;

type Cuda = cubecl::cuda::CudaRuntime;

/// One client for the whole test binary; every router gets a cheap clone.
fn make() -> Option<CubeclBackend<Cuda>> {
    static BACKEND: OnceLock<Option<CubeclBackend<Cuda>>> = OnceLock::new();
    BACKEND
        .get_or_init(|| CubeclBackend::try_new(&Default::default()))
        .clone()
}

simbal_conformance::conformance_suite!(cuda_f32, super::make);
