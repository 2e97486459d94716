//! Shared helpers of the kernel tests: a wgpu backend or client (or a loud failure under CI), a
//! small deterministic RNG, comparison helpers and naive CPU versions of the row kernels.
#![allow(dead_code, clippy::type_complexity, clippy::too_many_arguments)]

use cubecl::prelude::*;
use cubecl::wgpu::WgpuRuntime;
use simbal_cubecl::kernels::router_backward::BackOptions;
use simbal_cubecl::kernels::router_forward::{Gating, RouteOptions};
use simbal_cubecl::kernels::DevBuf;
use simbal_cubecl::CubeclBackend;

pub type R = WgpuRuntime;

/// The wgpu backend, or `None` (with a message) when no adapter exists. With `CI` set a missing
/// adapter fails the test instead of skipping it.
pub fn gpu() -> Option<CubeclBackend<R>> {
    match CubeclBackend::<R>::try_new(&Default::default()) {
        Some(b) => Some(b),
        None if std::env::var_os("CI").is_some() => {
            panic!("no wgpu adapter found and CI is set: install mesa-vulkan-drivers (lavapipe)")
        }
        None => {
            eprintln!("SKIPPED: no wgpu adapter on this machine");
            None
        }
    }
}

/// The wgpu client of [`gpu`].
pub fn client() -> Option<ComputeClient<R>> {
    gpu().map(|b| b.client().clone())
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
/// An element buffer of any backend on the host.
pub fn read_f<B: simbal_core::Memory<Elem = f32>>(b: &B, x: &B::View) -> Vec<f32> {
    let mut h = vec![0.0; b.len(x)];
    b.download(x, &mut h).unwrap();
    h
}

/// An index buffer of any backend on the host.
pub fn read_u<B: simbal_core::Memory<Elem = f32>>(b: &B, x: &B::IdxView) -> Vec<u32> {
    let mut h = vec![0; b.idx_len(x)];
    b.idx_download(x, &mut h).unwrap();
    h
}

/// `got` within `tol` of `want`, relative to `want`'s largest magnitude.
pub fn close_scaled(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * scale || (g.is_nan() && w.is_nan()) || g == w;
        assert!(ok, "{what}[{i}]: got {g}, want {w} (scale {scale})");
    }
}

/// Softmax of the row `z` into `p` (max-subtracted); returns the row's log-sum-exp.
pub fn softmax_row(z: &[f32], p: &mut [f32]) -> f32 {
    let m = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut s = 0.0;
    for (pi, &zi) in p.iter_mut().zip(z) {
        *pi = (zi - m).exp();
        s += *pi;
    }
    for pi in p.iter_mut() {
        *pi *= 1.0 / s;
    }
    m + s.ln()
}

/// Naive CPU router forward (independent of the kernels): returns `(p, idx, gates)`.
pub fn route_reference(
    n: usize,
    o: &RouteOptions,
    z: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let g = o.gating;
    let (e, k, softmax, renorm, scale) = (g.e, g.k, g.softmax, g.renorm, g.scale);
    let mut p = vec![0.0f32; n * e];
    let mut idx = vec![0u32; n * k];
    let mut gates = vec![0.0f32; n * k];
    for t in 0..n {
        let zr = &z[t * e..(t + 1) * e];
        let pr = &mut p[t * e..(t + 1) * e];
        if softmax {
            softmax_row(zr, pr);
        } else {
            for (pi, &zi) in pr.iter_mut().zip(zr) {
                *pi = if zi >= 0.0 {
                    1.0 / (1.0 + (-zi).exp())
                } else {
                    zi.exp() / (1.0 + zi.exp())
                };
            }
        }
        let key: Vec<f32> = (0..e)
            .map(|c| {
                let v = pr[c] + bias.map_or(0.0, |b| b[c]);
                if v.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    v
                }
            })
            .collect();
        let order = |cands: &mut Vec<usize>, sc: &dyn Fn(usize) -> f32| {
            cands.sort_by(|&a, &b| sc(b).partial_cmp(&sc(a)).unwrap().then(a.cmp(&b)));
        };
        let mut allowed = vec![true; e];
        if let Some((g, top)) = o.groups {
            if top < g {
                let len = e / g;
                let m = (k / top).clamp(1, len);
                let gscore: Vec<f32> = (0..g)
                    .map(|gi| {
                        let mut c: Vec<usize> = (gi * len..(gi + 1) * len).collect();
                        order(&mut c, &|x| key[x]);
                        c[..m].iter().fold(0.0, |s, &x| s + key[x])
                    })
                    .collect();
                let mut gs: Vec<usize> = (0..g).collect();
                order(&mut gs, &|x| gscore[x]);
                for c in 0..e {
                    allowed[c] = gs[..top].contains(&(c / len));
                }
            }
        }
        let mut cands: Vec<usize> = (0..e).filter(|&c| allowed[c]).collect();
        order(&mut cands, &|x| key[x]);
        let sum: f32 = cands[..k].iter().map(|&c| pr[c]).sum();
        for j in 0..k {
            let c = cands[j];
            idx[t * k + j] = c as u32;
            gates[t * k + j] = if renorm {
                scale * (pr[c] / (sum + f32::MIN_POSITIVE))
            } else {
                scale * pr[c]
            };
        }
    }
    (p, idx, gates)
}

/// Logits on a coarse grid (many exact ties, no near-ties between distinct values).
pub fn grid_logits(rng: &mut Rng, len: usize, levels: usize, step: f32) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.below(levels) as f32 - (levels / 2) as f32) * step)
        .collect()
}

/// The row kernels' gating of `E` experts, `k` a token.
pub fn gating(e: usize, k: usize, softmax: bool, renorm: bool, scale: f32) -> Gating {
    Gating {
        e,
        k,
        softmax,
        renorm,
        scale,
    }
}

/// Naive CPU router backward: `dz` (`n x E`).
#[allow(clippy::too_many_arguments)]
pub fn backward_reference(
    n: usize,
    o: &BackOptions,
    z: &[f32],
    p: &[f32],
    idx: &[u32],
    gates: &[f32],
    dropped: &[u32],
    dw: &[f32],
    lbl: Option<(&[f32], usize)>,
) -> Vec<f32> {
    let g = o.gating;
    let (e, k, softmax, renorm, scale) = (g.e, g.k, g.softmax, g.renorm, g.scale);
    let mut dz = vec![0.0f32; n * e];
    for t in 0..n {
        let d = &mut dz[t * e..(t + 1) * e];
        let pr = &p[t * e..(t + 1) * e];
        if let Some((c, len)) = lbl {
            d.copy_from_slice(&c[(t / len) * e..(t / len + 1) * e]);
        }
        let kdw = |j: usize| {
            if dropped[t * k + j] == 0 {
                dw[t * k + j]
            } else {
                0.0
            }
        };
        if renorm {
            let sum: f32 = (0..k).map(|j| pr[idx[t * k + j] as usize]).sum();
            let dot: f32 = (0..k).map(|j| kdw(j) * gates[t * k + j]).sum();
            for j in 0..k {
                d[idx[t * k + j] as usize] += (scale * kdw(j) - dot) / (sum + f32::MIN_POSITIVE);
            }
        } else {
            for j in 0..k {
                d[idx[t * k + j] as usize] += scale * kdw(j);
            }
        }
        if softmax {
            let dot: f32 = d.iter().zip(pr).map(|(a, b)| a * b).sum();
            for (di, &pi) in d.iter_mut().zip(pr) {
                *di = pi * (*di - dot);
            }
        } else {
            for (di, &pi) in d.iter_mut().zip(pr) {
                *di = *di * pi * (1.0 - pi);
            }
        }
        if o.z_coef != 0.0 {
            let mut q = vec![0.0f32; e];
            let lse = softmax_row(&z[t * e..(t + 1) * e], &mut q);
            for (di, &qi) in d.iter_mut().zip(&q) {
                *di += o.z_coef * lse * qi;
            }
        }
    }
    dz
}

/// Naive CPU dispatch: returns `(gates, dropped, counts, order, offsets)` after capacity.
pub fn dispatch_reference(
    e: usize,
    k: usize,
    n: usize,
    cap: Option<(usize, bool)>,
    idx: &[u32],
    gates: &[f32],
) -> (Vec<f32>, Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) {
    let nk = n * k;
    let mut gates = gates.to_vec();
    let mut dropped = vec![0u32; nk];
    let sort = |keep: &dyn Fn(usize) -> bool, order: &mut Vec<u32>| -> (Vec<u32>, Vec<u32>) {
        let mut counts = vec![0u32; e];
        let mut offsets = vec![0u32; e + 1];
        let mut list: Vec<u32> = (0..nk as u32).filter(|&a| keep(a as usize)).collect();
        list.sort_by_key(|&a| idx[a as usize]); // stable
        for &a in &list {
            counts[idx[a as usize] as usize] += 1;
        }
        for x in 0..e {
            offsets[x + 1] = offsets[x] + counts[x];
        }
        order[..list.len()].copy_from_slice(&list);
        (counts, offsets)
    };
    let mut order = vec![0u32; nk];
    let (mut counts, mut offsets) = sort(&|_| true, &mut order);
    if let Some((c, by_probs)) = cap {
        for x in 0..e {
            let mut seg: Vec<u32> = order[offsets[x] as usize..offsets[x + 1] as usize].to_vec();
            if seg.len() <= c {
                continue;
            }
            if by_probs {
                let key = |a: u32| {
                    let g = gates[a as usize];
                    if g.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        g
                    }
                };
                seg.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap().then(a.cmp(&b)));
            }
            for &a in &seg[c..] {
                dropped[a as usize] = 1;
            }
        }
        for a in 0..nk {
            if dropped[a] != 0 {
                gates[a] = 0.0;
            }
        }
        let d = dropped.clone();
        let (c2, o2) = sort(&|a| d[a] == 0, &mut order);
        counts = c2;
        offsets = o2;
    }
    (gates, dropped, counts, order, offsets)
}
