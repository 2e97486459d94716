//! The shared conformance suite on CUDA (f32); compiled with `--features cuda` only.
//! Run by `gpu-check.sh` (with `CI` set, so a missing device fails instead of skipping).
#![cfg(feature = "cuda")]

#[macro_use]
mod on_runtime;

conformance_on!(cuda_f32, cubecl::cuda::CudaRuntime);
