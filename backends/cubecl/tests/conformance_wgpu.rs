//! The shared conformance suite on wgpu (f32). Without an adapter each check prints a note and
//! passes, unless `CI` is set (then it fails): CI installs lavapipe so the suite really runs.

#[macro_use]
mod on_runtime;

conformance_on!(wgpu_f32, cubecl::wgpu::WgpuRuntime);
