//! Shared helpers of the kernel tests: a wgpu client (or a loud failure under CI), a small
//! deterministic RNG and comparison helpers.
#![allow(dead_code)]

use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use simbal_cubecl::kernels::DevBuf;

pub type R = WgpuRuntime;

/// The wgpu client, or `None` (with a message) when no adapter exists. Under `CI=true` a missing
/// adapter fails the test instead of skipping it.
pub fn client() -> Option<ComputeClient<R>> {
    let made = std::panic::catch_unwind(|| WgpuRuntime::client(&WgpuDevice::DefaultDevice));
    match made {
        Ok(c) => Some(c),
        Err(_) => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("no wgpu adapter found and CI=true: install mesa-vulkan-drivers (lavapipe)");
            }
            eprintln!("SKIPPED: no wgpu adapter on this machine");
            None
        }
    }
}

/// xorshift64* generator, deterministic across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unif(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unif()).sum::<f32>() * 1.732 - 3.464
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal()).collect()
    }
}

pub fn up(c: &ComputeClient<R>, x: &[f32]) -> DevBuf<f32> {
    DevBuf::upload(c, x)
}

pub fn up_u32(c: &ComputeClient<R>, x: &[u32]) -> DevBuf<u32> {
    DevBuf::upload(c, x)
}

pub fn down(c: &ComputeClient<R>, x: &DevBuf<f32>) -> Vec<f32> {
    x.read(c).expect("device read")
}

pub fn down_u32(c: &ComputeClient<R>, x: &DevBuf<u32>) -> Vec<u32> {
    x.read(c).expect("device read")
}

/// Asserts `max |a - b| <= tol * max(1, max |b|)`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * scale || (g.is_nan() && w.is_nan()) || g == w;
        assert!(ok, "{what}[{i}]: got {g}, want {w} (scale {scale})");
    }
}
