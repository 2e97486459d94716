//! GPU backend for simbal: cubecl kernels (f32) for wgpu and CUDA.

pub mod kernels;
